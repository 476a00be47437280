"""MaCoSNet: joint semantic matching and object co-segmentation.

Chen, Lin, Yang, Huang, "Show, Match and Segment: Joint Weakly Supervised
Learning of Semantic Matching and Object Co-segmentation" (TPAMI). Training
needs only groups of images that show the same object class.

**Network** (:class:`MaCoSNet`; sizes for the paper's 240 x 240 input and
ResNet-101):

* Encoder E: any registered backbone truncated at ``feature_level``
  (ResNet-101 to layer3 = 'stride16', 1024 ch at 15 x 15). Frozen by default
  (``freeze_encoder``): applied in inference mode (BN running statistics) and
  its parameters wrapped in ``jax.lax.stop_gradient`` through
  ``nn.map_variables``, so its gradient is exactly zero and Adam leaves it
  unchanged (no optax mask needed; configs use no weight decay).
* Correlation: ``coseg_jax.nn.correlation.feature_correlation`` (features
  L2-normalised, all pairs, ReLU, channel L2 norm): for the ordered pair
  (i, j) the map has j's spatial layout and i's h*w positions as channels
  (225 at 15 x 15).
* Transformation predictor G: an affine regressor then a TPS regressor
  (:class:`FeatureRegressor`: conv7x7(225->128, VALID)+BN+ReLU,
  conv5x5(128->64, VALID)+BN+ReLU, linear 1600 -> 6 or 18). Stage 2 sees the
  correlation between A warped by the affine estimate and B
  (``stage2_input='image'``: A's image is warped and re-encoded, as weakalign's
  two-stage model; ``'features'``: A's feature map is warped instead, cheaper).
  theta_ij = concat(affine 6, TPS 18) (geometry kind 'affine_tps') warps
  image i onto image j; its point map sends j's frame to i's frame
  (``coseg_jax.nn.geometry`` conventions). G runs for every ordered pair of a
  group, so both T_AB and T_BA exist.
* Decoder D (:class:`MaskDecoder`): on [features_k ; correlation(partner ->
  k)] (1024 + 225 = 1249 ch), four blocks (Sec. 3.4), each a transposed
  conv (k3, s2, p1, output_padding 1 = lax padding (1, 2)) + BN + ReLU, the
  additive skip from the encoder's 'stride8' (layer2), 'stride4' (layer1) or
  'stride2' (stem) level (blocks 1-3), then ``decoder_convs`` (paper: 2)
  3x3 convs + BN + ReLU; a 1x1 conv to one logit (float32) at input
  resolution. The partner of image k is image (k + 1) mod K.
* Perceptual network F (``perceptual``, Lite0 with its real ImageNet weights
  here, ResNet-50 in the paper): frozen like E; applied to the object and
  background images of eq. 7, which blank removed pixels to the colour F's
  input normalisation maps to 0 (``perceptual_masking='normalized'``: the
  paper multiplies the normalised image; 'raw' multiplies the [0, 1] image,
  black); its ``pooled`` vector (1280-d) enters the contrastive loss.

**Losses** (``loss_fn``; weights from ``config.loss``; the pure functions of
``coseg_jax.losses.matching`` / ``contrastive``):

* ``matching`` (eq. 2-4): foreground-guided inlier score for every ordered
  pair and both stages (affine, affine+TPS on the stage-1 correlation, as
  weakalign's composed inlier score), averaged over pairs and stages. The
  masks are sigmoid(logits) resized to the feature grid. Paper forms
  (defaults): one mask per direction, the mask of the image whose grid the
  point map is evaluated on (``matching_masks='source'``; 'product' weights
  by M_A M_B, our earlier form); eq. 4's plain sums over grid positions with
  the two directions of a pair added (``matching_normalize='none'``; 'grid'
  averages over positions and directions, our earlier form; 'inliers'
  divides by the inlier count, the authors' code); and the mask gradient
  reaches D, which eq. 4 lists among the networks the loss trains
  (``matching_mask_grad=True``; False stops it, the masks then being
  trained by the co-segmentation losses only).
* ``cycle`` (eq. 5): ||T_ji(T_ij(p)) - p||^2 over every ordered pair, on 100
  random points (``num_points``) drawn per step from the 'dropout' rng.
* ``transitivity`` (eq. 6): on the triplet (0, 1, 2) of each group. With
  pairs (K = 2) and ``triplets='batch_roll'`` the third image of group b is
  image 0 of group (b + 1) mod B (its features are reused, no extra encoder
  pass): "triplets drawn within the mini-batch". Both orientations of the
  triangle are averaged. The three maps are chained so that each is applied
  in the frame it accepts (1 -> 0 -> 2 -> 1 and 2 -> 0 -> 1 -> 2 with pull
  maps), which is the paper's A -> B -> C -> A cycle written with CNNGeo's
  backward maps.
* ``contrastive`` (eq. 8-10): every unordered pair of the group, d- with
  eq. 10's 1/(2c) (``contrastive_reduction='mean'``; 'sum' is the authors'
  code's 1/c). Margin m: the paper's m = 2 is set for its F (ResNet-50,
  c = 2048); with Lite0 F the figure-ground distances are an order of
  magnitude smaller (below), so m = 2 never lets the hinge switch off, which
  eq. 10's cut-off exists for. ``margin`` is a number, or 'auto': the
  stated calibration rule m = ``margin_ratio`` x the mean per-dimension
  squared distance between F's features of two different training images
  (``contrastive.image_distance_reference``), averaged over the first
  ``margin_batches`` training batches and then fixed
  (:meth:`MaCoSNet.calibrated_margin`). The rule reads eq. 10's cut-off as
  "stop pushing figure and ground apart once F finds them as different as
  two different photographs"; it uses only the images (weak supervision)
  and F. Measured with Lite0 on 80 PASCAL-VOC co-segmentation images (4
  per class) at 240 px, mean-colour masking, per image and dimension:
  different images 0.177, the ground-truth figure vs ground 0.154 (10-90%:
  0.10-0.20), a centred box 0.123, the whole image vs blank 0.120, and 0 for
  the uniform masks an untrained D gives (M = 0.5 makes I^o = I^b), which is
  why the rule does not read d- itself at initialisation. Lite2's distances
  are 26% larger (0.223 between images, 0.186 ground truth) while the
  ground-truth-to-reference ratio stays put (0.87 Lite0, 0.83 Lite2): the
  rule follows F's scale. With ratio 1 the hinge is off for 23% of
  same-class pairs under ground-truth masks (Lite2: 14%) and on for the
  rest, as the paper's Fig. 9 implies it was for its F at m = 2 (m = 2
  beats 5 and 10, which would train identically if the hinge never
  switched off).
* ``cross_consistency`` (eq. 11-12): every unordered pair, with theta_ij and
  theta_ji ('affine_tps').
* ``grid`` (synthetic pre-training only, ``mode='pretrain'``): CNNGeo's
  transformed-grid loss, mean over a 20 x 20 grid in [-1, 1]^2 of
  ||T_pred(p) - T_gt(p)||^2, for the affine stage and the composed warp
  (sum of the two).

**Synthetic pre-training** (``mode='pretrain'``, method ``macosnet_pretrain``):
each image I of the batch is warped by a random transformation drawn as in
CNNGeo's synthetic set (affine: rotation +-pi/12, shear +-pi/6, anisotropic
scale 1 +- 0.25, translation +-0.25; TPS: the 9 control points moved by
U(-0.4, 0.4); the composite 'affine_tps' warp applies both), with 'border'
padding (CNNGeo pads by reflection; choice). The model predicts theta for
(I -> warp(I)) and the grid loss compares it with the ground truth. Decoder
and F are not built in this mode; their parameters are created by the joint
model, which starts from the pre-trained checkpoint via
``config.init.from_checkpoint`` (shared keys copied).

Loss options (``phi``, ``distance``, ``margin``, ...) travel as static fields
of the output (the calibrated margin as an array field) so that the
registry's ``loss_fn(outputs, batch, loss_config)`` contract is kept.
"""

import functools
from typing import Any, Mapping, Optional, Sequence, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from coseg_jax import backbones
from coseg_jax import losses
from coseg_jax.losses import contrastive
from coseg_jax.losses import matching
from coseg_jax.models import common
from coseg_jax.models import registry
from coseg_jax.nn import correlation as corr_lib
from coseg_jax.nn import geometry
from coseg_jax.nn import resize
from coseg_jax.nn import subpixel

LOSS_TERMS = ("matching", "cycle", "transitivity", "contrastive",
              "cross_consistency")
PRETRAIN_TERMS = ("grid",)
MODES = ("joint", "pretrain")
TRIPLETS = ("group", "batch_roll", "none")
KIND = "affine_tps"

# CNNGeo's synthetic ranges (SynthDataset): rotation, shear, scale, translation
# and TPS control-point jitter.
SYNTHETIC_DEFAULTS = dict(rotation=np.pi / 12, shear=np.pi / 6, scale=0.25,
                          translation=0.25, tps=0.4, kind="affine_tps")


MATCHING_MASKS = ("source", "product")
MATCHING_NORMALIZE = matching.NORMALIZE
PERCEPTUAL_MASKING = ("normalized", "raw")


@flax.struct.dataclass
class LossOptions:
  """Static loss hyperparameters (from ``config.model``).

  ``margin`` None: the margin is calibrated by the model (``margin='auto'``)
  and travels in :attr:`MaCoSNetOutput.margin`.
  """
  phi: float = 1.0
  distance: str = "chebyshev"
  margin: Optional[float] = 2.0
  contrastive_reduction: str = "mean"
  matching_masks: str = "source"
  matching_normalize: str = "none"
  matching_mask_grad: bool = True
  cross_ignore_outside: bool = False
  cross_stop_gradient: bool = False
  affine_grid_weight: float = 1.0


@flax.struct.dataclass
class MaCoSNetOutput:
  """Output of :class:`MaCoSNet` (K images per group, P ordered pairs).

  Attributes:
    mask_logits: [B, K, H, W, 1] float32 (zeros in pretrain mode).
    theta: [B, P, 24] float32, theta for pair ``pairs[p] = (i, j)`` warps
      image i onto image j (kind 'affine_tps').
    theta_affine: [B, P, 6] float32, the stage-1 affine estimate.
    correlation: [B, P, h, w, h*w] float32 stage-1 correlation of each pair
      (j's layout, i's positions as channels); None in pretrain mode.
    feature_masks: [B, K', h, w, 1] float32 sigmoid masks at feature
      resolution (K' = K + 1 with a rolled third image); None in pretrain.
    object_features: [B, K, c] float32 F(M * I), or None.
    background_features: [B, K, c] float32 F((1 - M) * I), or None.
    points: [B, N, 2] normalised points for the cycle/transitivity losses.
    synthetic_theta: [B, K, 24] ground-truth warp in pretrain mode, else None.
    margin: float32 scalar, the calibrated eq. 10 margin (``margin='auto'``),
      else None (``options.margin`` applies).
    pairs: static tuple of the P ordered pairs (i, j).
    triplet: static (0, 1, 2) when a transitivity triplet exists, else None.
    num_images: static K (images with masks).
    options: static :class:`LossOptions`.
  """
  mask_logits: jax.Array
  theta: jax.Array
  theta_affine: jax.Array
  points: jax.Array
  correlation: Optional[jax.Array] = None
  feature_masks: Optional[jax.Array] = None
  object_features: Optional[jax.Array] = None
  background_features: Optional[jax.Array] = None
  synthetic_theta: Optional[jax.Array] = None
  margin: Optional[jax.Array] = None
  pairs: Tuple[Tuple[int, int], ...] = flax.struct.field(pytree_node=False,
                                                         default=())
  triplet: Optional[Tuple[int, int, int]] = flax.struct.field(
      pytree_node=False, default=None)
  num_images: int = flax.struct.field(pytree_node=False, default=2)
  options: LossOptions = flax.struct.field(pytree_node=False,
                                           default=LossOptions())


class FeatureRegressor(nn.Module):
  """CNNGeo's ``FeatureRegression``: correlation -> theta.

  conv7x7(C->128, VALID) + BN + ReLU, conv5x5(128->64, VALID) + BN + ReLU,
  flatten (h, w, c order: channels-last), linear -> ``out_dim``. With
  ``residual`` the linear layer starts at zero and its output is added to
  ``identity`` (an untrained G returns the identity transformation; choice).

  Attributes:
    out_dim: 6 (affine) or 18 (TPS).
    identity: the identity theta added when ``residual``.
    residual: predict theta - identity.
    dtype: computation dtype of the convs (the linear layer is float32).
  """
  out_dim: int
  identity: Sequence[float] = ()
  residual: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, corr: jax.Array, train: bool = False) -> jax.Array:
    """Args: corr [N, h, w, C]. Returns float32 [N, out_dim]."""
    bn = functools.partial(nn.BatchNorm, use_running_average=not train,
                           momentum=0.9, epsilon=1e-5, dtype=self.dtype)
    x = corr.astype(self.dtype)
    x = nn.Conv(128, (7, 7), padding="VALID", dtype=self.dtype,
                name="conv1")(x)
    x = nn.relu(bn(name="bn1")(x))
    x = nn.Conv(64, (5, 5), padding="VALID", dtype=self.dtype,
                name="conv2")(x)
    x = nn.relu(bn(name="bn2")(x))
    x = x.reshape(x.shape[0], -1).astype(jnp.float32)
    init = nn.initializers.zeros if self.residual else (
        nn.linear.default_kernel_init)
    out = nn.Dense(self.out_dim, kernel_init=init, name="linear")(x)
    if self.residual:
      out = out + jnp.asarray(self.identity, jnp.float32)
    return out


class MaskDecoder(nn.Module):
  """MaCoSNet's decoder D: four x2 blocks with additive encoder skips.

  Block i: a transposed conv (k3, s2, p1, output_padding 1: exactly x2) +
  BN + ReLU; the encoder skip of that resolution added (blocks 1-3); then
  ``convs_per_block`` 3x3 convs + BN + ReLU at the block's width. Sec. 3.4:
  "four blocks, each of which contains one deconvolutional layer and two
  convolutional layers", with skip connections between the blocks of E and
  D (the paper's default, ``convs_per_block=2``; 0 is our earlier, lighter
  decoder). A 1x1 conv gives the logit.

  Attributes:
    widths: channels of the four blocks; the first three must equal the
      channels of the skip levels they are added to.
    skip_levels: encoder levels added in blocks 1-3.
    convs_per_block: 3x3 conv layers after each deconvolution.
    dtype: computation dtype.
  """
  widths: Sequence[int]
  skip_levels: Sequence[str] = ("stride8", "stride4", "stride2")
  convs_per_block: int = 2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, skips: Mapping[str, jax.Array],
               output_size: Tuple[int, int], train: bool = False
               ) -> jax.Array:
    """Args: x [N, h, w, C]; skips level -> [N, h_l, w_l, C_l].

    Returns:
      float32 logits [N, H, W, 1] at ``output_size``.
    """
    bn = functools.partial(nn.BatchNorm, use_running_average=not train,
                           momentum=0.9, epsilon=1e-5, dtype=self.dtype)
    x = x.astype(self.dtype)
    for i, width in enumerate(self.widths):
      # torch ConvTranspose2d(k=3, s=2, p=1, output_padding=1): exactly
      # x2. nn.ConvTranspose's parameters, computed in sub-pixel form.
      x = subpixel.ConvTranspose2x(width, (3, 3), ((1, 2), (1, 2)),
                                   use_bias=False, dtype=self.dtype,
                                   name=f"deconv{i + 1}")(x)
      x = nn.relu(bn(name=f"bn{i + 1}")(x))
      if i < len(self.skip_levels):
        s = skips[self.skip_levels[i]].astype(self.dtype)
        if x.shape[1:3] != s.shape[1:3]:  # input sizes not multiples of 16
          x = resize.bilinear_resize(x, s.shape[1:3])
        x = x + s
      for j in range(self.convs_per_block):
        x = nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                    dtype=self.dtype, name=f"conv{i + 1}_{j + 1}")(x)
        x = nn.relu(bn(name=f"bn{i + 1}_{j + 1}")(x))
    if tuple(x.shape[1:3]) != tuple(output_size):
      x = resize.bilinear_resize(x, tuple(output_size))
    return nn.Conv(1, (1, 1), dtype=jnp.float32, name="logit")(
        x.astype(jnp.float32))


def _frozen_apply(module, images):
  return module(images, train=False)


def random_synthetic_theta(key: jax.Array, batch: int, *, rotation: float,
                           shear: float, scale: float, translation: float,
                           tps: float, kind: str = "affine_tps") -> jax.Array:
  """CNNGeo-style random warps [batch, THETA_DIMS[kind]].

  Affine: A = R(alpha) R(-sh) D R(sh), t ~ U(-translation, translation)^2,
  alpha ~ U(+-rotation), sh ~ U(+-shear), D = diag(1 + U(+-scale)) (two
  draws); TPS: identity control points + U(+-tps).
  """
  ks = jax.random.split(key, 6)
  u = lambda k, shape, r: jax.random.uniform(k, shape, minval=-r, maxval=r)
  alpha = u(ks[0], (batch,), rotation)
  sh = u(ks[1], (batch,), shear)
  lam = 1.0 + u(ks[2], (batch, 2), scale)
  t = u(ks[3], (batch, 2), translation)

  def rot(a):
    c, s = jnp.cos(a), jnp.sin(a)
    return jnp.stack([jnp.stack([c, -s], -1), jnp.stack([s, c], -1)], -2)

  d = jax.vmap(jnp.diag)(lam)
  lin = rot(alpha) @ jnp.swapaxes(rot(sh), -1, -2) @ d @ rot(sh)
  aff = jnp.concatenate([lin, t[:, :, None]], axis=-1).reshape(batch, 6)
  tps_theta = geometry.identity_theta("tps", batch) + u(ks[4], (batch, 18),
                                                         tps)
  if kind == "affine":
    return aff
  if kind == "tps":
    return tps_theta
  return jnp.concatenate([aff, tps_theta], axis=-1)


def _check_grid(h: int, w: int):
  # G's two VALID convs (7x7 then 5x5) need at least an 11 x 11 grid.
  if h < 11 or w < 11:
    raise ValueError(f"MaCoSNet's regressor needs a feature grid of at least "
                     f"11 x 11, got {h} x {w}: use larger images (>= 176 px "
                     f"at stride 16) or a shallower feature_level")


def ordered_pairs(k: int) -> Tuple[Tuple[int, int], ...]:
  """Every ordered pair (i, j), i != j, of k images, i-major."""
  return tuple((i, j) for i in range(k) for j in range(k) if i != j)


class MaCoSNet(nn.Module):
  """Encoder E, correlation, predictor G (affine -> TPS), decoder D, F.

  Attributes: see ``build_model`` / the module docstring for each field.
  """
  backbone: str = "resnet101"
  backbone_kwargs: Optional[Mapping[str, Any]] = None
  feature_level: str = "stride16"
  freeze_encoder: bool = True
  perceptual: Optional[str] = "efficientnet_lite0"
  perceptual_size: Optional[int] = None
  mode: str = "joint"
  stage2_input: str = "image"
  triplets: str = "batch_roll"
  residual_theta: bool = True
  decoder_final_width: int = 32
  decoder_convs: int = 2
  perceptual_masking: str = "normalized"
  margin_auto: bool = False
  margin_ratio: float = 1.0
  margin_batches: int = 10
  num_points: int = 100
  synthetic: Optional[Mapping[str, Any]] = None
  options: LossOptions = LossOptions()
  dtype: Any = jnp.float32

  def setup(self):
    common.check_choice("mode", self.mode, MODES)
    common.check_choice("triplets", self.triplets, TRIPLETS)
    if self.stage2_input not in ("image", "features"):
      raise ValueError(f"stage2_input must be 'image' or 'features', got "
                       f"{self.stage2_input!r}")
    common.check_choice("perceptual_masking", self.perceptual_masking,
                        PERCEPTUAL_MASKING)
    kwargs = dict(self.backbone_kwargs or {})
    kwargs.setdefault("truncate_at", self.feature_level)
    self.encoder = backbones.get_backbone(self.backbone, dtype=self.dtype,
                                          **kwargs)
    self.affine_regressor = FeatureRegressor(
        6, identity=tuple(geometry.AFFINE_IDENTITY.tolist()),
        residual=self.residual_theta, dtype=self.dtype)
    self.tps_regressor = FeatureRegressor(
        18, identity=tuple(geometry.TPS_IDENTITY.tolist()),
        residual=self.residual_theta, dtype=self.dtype)
    # The decoder is built inline in __call__ (its widths follow the
    # encoder's skip channels); F only in joint mode.
    if self.mode == "joint" and self.perceptual:
      self.perceptual_net = backbones.get_backbone(self.perceptual,
                                                   dtype=self.dtype)

  # -- pieces --------------------------------------------------------------

  def encode(self, images: jax.Array, train: bool):
    """images [N, H, W, 3] -> the encoder's feature dict."""
    if self.freeze_encoder:
      frozen = nn.map_variables(_frozen_apply, "params",
                                trans_in_fn=jax.lax.stop_gradient,
                                init=self.is_initializing())
      return frozen(self.encoder, images).features
    return self.encoder(images, train=train).features

  def regress(self, f_a, f_b, img_a, train: bool):
    """Both stages for the pairs (a -> b). Returns (theta [N,24], aff, corr)."""
    corr = corr_lib.feature_correlation(features_a=f_a, features_b=f_b)
    theta_aff = self.affine_regressor(corr, train)
    if self.stage2_input == "image":
      warped = geometry.warp(image=img_a, theta=theta_aff, kind="affine")
      f_w = self.encode(warped, train)[self.feature_level]
    else:
      f_w = geometry.warp(image=f_a.astype(jnp.float32), theta=theta_aff,
                          kind="affine")
    corr2 = corr_lib.feature_correlation(features_a=f_w.astype(f_b.dtype),
                                         features_b=f_b)
    theta_tps = self.tps_regressor(corr2, train)
    return jnp.concatenate([theta_aff, theta_tps], axis=-1), theta_aff, corr

  def perceptual_fill(self) -> Tuple[float, float, float]:
    """Colour of removed pixels in eq. 7's object / background images: the
    colour F's normalisation maps to 0 ('normalized', the paper's product on
    normalised images), or black ('raw')."""
    if self.perceptual_masking == "raw":
      return (0.0, 0.0, 0.0)
    return backbones.input_mean(self.perceptual)

  def _perceptual_net(self, x):
    """Frozen F (float32 pooled vectors [N, c]) on images [N, H, W, 3]."""
    if self.perceptual_size:
      s = int(self.perceptual_size)
      x = jax.image.resize(x, (x.shape[0], s, s, 3), "bilinear")
    frozen = nn.map_variables(_frozen_apply, "params",
                              trans_in_fn=jax.lax.stop_gradient,
                              init=self.is_initializing())
    return frozen(self.perceptual_net, x).pooled.astype(jnp.float32)

  def perceptual_features(self, images, probs, whole: bool = False):
    """F on the object and background images of eq. 7.

    Args:
      images: [N, H, W, 3] in [0, 1].
      probs: [N, H, W, 1] masks in [0, 1].
      whole: also return F of the images themselves.

    Returns:
      (F(I^o), F(I^b)), each [N, c] float32, and F(I) with ``whole``.
    """
    obj, bg = contrastive.object_background_images(
        images=images, masks=probs, fill=self.perceptual_fill())
    parts = [obj, bg] + ([images] if whole else [])
    pooled = self._perceptual_net(jnp.concatenate(parts, axis=0))
    n = images.shape[0]
    out = tuple(pooled[i * n:(i + 1) * n] for i in range(len(parts)))
    return out

  def calibrated_margin(self, whole_features: Optional[jax.Array],
                        train: bool) -> jax.Array:
    """Eq. 10's margin from F's scale on the training data (``margin_auto``).

    m = margin_ratio x (mean over the first ``margin_batches`` training
    batches of ``contrastive.image_distance_reference(F(I))``), doubled for
    ``contrastive_reduction='sum'``. The running sum and count live in
    'batch_stats' (``margin_ref_sum``, ``margin_ref_count``), so they are
    checkpointed and frozen once the count is reached.

    Args:
      whole_features: [N, c] F of the batch's images (train mode), or None.
      train: update the running mean (only while it has fewer than
        ``margin_batches`` batches, never at init).

    Returns:
      float32 scalar margin (0 before any training batch).

    With 'auto' the model runs F on the whole images at every training step
    (one more pass of the frozen F, small next to E; the value is only
    read while the count is below ``margin_batches``).
    """
    total = self.variable("batch_stats", "margin_ref_sum",
                          lambda: jnp.zeros((), jnp.float32))
    count = self.variable("batch_stats", "margin_ref_count",
                          lambda: jnp.zeros((), jnp.float32))
    if (train and whole_features is not None and
        not self.is_initializing()):
      d = jax.lax.stop_gradient(
          contrastive.image_distance_reference(whole_features))
      take = count.value < self.margin_batches
      total.value = total.value + jnp.where(take, d, 0.0)
      count.value = count.value + jnp.where(take, 1.0, 0.0)
    scale = 2.0 if self.options.contrastive_reduction == "sum" else 1.0
    return (self.margin_ratio * scale * total.value /
            jnp.maximum(count.value, 1.0))

  def _points(self, batch):
    key = (self.make_rng("dropout") if self.has_rng("dropout") else
           jax.random.PRNGKey(0))
    return matching.sample_points(key, batch=batch, num=self.num_points)

  # -- forward -------------------------------------------------------------

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False
               ) -> MaCoSNetOutput:
    """Args: images [B, K, H, W, 3] in [0, 1]. Returns MaCoSNetOutput."""
    common.check_images(images)
    if self.mode == "pretrain":
      return self._pretrain(images, train)
    b, k, h, w, _ = images.shape
    if k < 2:
      raise ValueError(f"MaCoSNet needs groups of K >= 2 images, got K={k}")
    images = images.astype(jnp.float32)
    feats = self.encode(images.reshape(b * k, h, w, 3), train)
    feats = {n: v.reshape((b, k) + v.shape[1:]) for n, v in feats.items()}
    f = feats[self.feature_level]
    imgs = images
    triplet = None
    if k >= 3 and self.triplets != "none":
      triplet = (0, 1, 2)
    elif k == 2 and self.triplets == "batch_roll":
      # Third image of group b: image 0 of group b + 1 (features reused).
      f = jnp.concatenate([f, jnp.roll(f[:, :1], -1, axis=0)], axis=1)
      imgs = jnp.concatenate([images, jnp.roll(images[:, :1], -1, axis=0)],
                             axis=1)
      triplet = (0, 1, 2)
    kk = f.shape[1]
    pairs = ordered_pairs(kk)
    ia = np.array([p[0] for p in pairs])
    ib = np.array([p[1] for p in pairs])
    npairs = len(pairs)
    fh, fw, fc = f.shape[2:]
    _check_grid(fh, fw)
    flat = lambda x: x.reshape((b * npairs,) + x.shape[2:])
    theta, theta_aff, corr = self.regress(
        flat(f[:, ia]), flat(f[:, ib]), flat(imgs[:, ia]), train)
    theta = theta.reshape(b, npairs, -1)
    theta_aff = theta_aff.reshape(b, npairs, -1)
    corr = corr.reshape((b, npairs) + corr.shape[1:])

    # Decoder input of image m: its features and corr(partner -> m).
    index = {p: n for n, p in enumerate(pairs)}
    sel = [index[((m + 1) % k, m)] for m in range(k)]
    x = jnp.concatenate([f[:, :k].astype(self.dtype),
                         corr[:, np.array(sel)].astype(self.dtype)], axis=-1)
    skip_levels = ("stride8", "stride4", "stride2")
    skips = {n: feats[n].reshape((b * k,) + feats[n].shape[2:])
             for n in skip_levels}
    widths = tuple(skips[n].shape[-1] for n in skip_levels) + (
        self.decoder_final_width,)
    logits = MaskDecoder(widths=widths, skip_levels=skip_levels,
                         convs_per_block=self.decoder_convs,
                         dtype=self.dtype, name="decoder")(
                             x.reshape((b * k,) + x.shape[2:]), skips, (h, w),
                             train)
    logits = logits.reshape(b, k, h, w, 1)
    probs = jax.nn.sigmoid(logits)
    fm = jax.image.resize(probs.reshape(b * k, h, w, 1),
                          (b * k, fh, fw, 1), "bilinear").reshape(
                              b, k, fh, fw, 1)
    if kk > k:
      fm = jnp.concatenate([fm, jnp.roll(fm[:, :1], -1, axis=0)], axis=1)
    obj = bg = margin = None
    if self.perceptual:
      auto = self.margin_auto and train
      feats_f = self.perceptual_features(images.reshape(b * k, h, w, 3),
                                         probs.reshape(b * k, h, w, 1),
                                         whole=auto)
      obj = feats_f[0].reshape(b, k, -1)
      bg = feats_f[1].reshape(b, k, -1)
      if self.margin_auto:
        margin = self.calibrated_margin(feats_f[2] if auto else None, train)
    return MaCoSNetOutput(
        mask_logits=logits, theta=theta, theta_affine=theta_aff,
        points=self._points(b), correlation=corr.astype(jnp.float32),
        feature_masks=fm, object_features=obj, background_features=bg,
        margin=margin, pairs=pairs, triplet=triplet, num_images=k,
        options=self.options)

  def _pretrain(self, images, train):
    """Synthetic pairs (I, warp(I, theta_gt)) from every image of the batch."""
    b, k, h, w, _ = images.shape
    src = images.reshape(b * k, h, w, 3).astype(jnp.float32)
    syn = dict(SYNTHETIC_DEFAULTS, **dict(self.synthetic or {}))
    kind = syn.pop("kind")
    key = (self.make_rng("dropout") if self.has_rng("dropout") else
           jax.random.PRNGKey(0))
    theta_gt = random_synthetic_theta(key, b * k, kind=kind, **syn)
    if kind == "affine":
      theta_gt = jnp.concatenate(
          [theta_gt, geometry.identity_theta("tps", b * k)], axis=-1)
    elif kind == "tps":
      theta_gt = jnp.concatenate(
          [geometry.identity_theta("affine", b * k), theta_gt], axis=-1)
    tgt = geometry.warp(image=src, theta=theta_gt, kind=KIND,
                        padding="border")
    f_src = self.encode(src, train)[self.feature_level]
    _check_grid(*f_src.shape[1:3])
    f_tgt = self.encode(tgt, train)[self.feature_level]
    theta, theta_aff, _ = self.regress(f_src, f_tgt, src, train)
    return MaCoSNetOutput(
        mask_logits=jnp.zeros((b, k, h, w, 1), jnp.float32),
        theta=theta.reshape(b, k, -1), theta_affine=theta_aff.reshape(b, k, -1),
        points=self._points(b), synthetic_theta=theta_gt.reshape(b, k, -1),
        pairs=(), num_images=k, options=self.options)


# --------------------------------------------------------------------------
# Losses.


def grid_points(n: int = 20) -> np.ndarray:
  """CNNGeo's transformed-grid loss points: n x n on [-1, 1]^2, [n*n, 2]."""
  axis = np.linspace(-1.0, 1.0, n)
  xs, ys = np.meshgrid(axis, axis)
  return np.stack([xs.ravel(), ys.ravel()], -1).astype(np.float32)


def grid_loss(*, theta: jax.Array, theta_gt: jax.Array, kind: str,
              kind_gt: str = KIND, num: int = 20) -> jax.Array:
  """mean_{n, p} ||T_theta(p) - T_gt(p)||^2 on an num x num grid (CNNGeo)."""
  pts = jnp.broadcast_to(jnp.asarray(grid_points(num)),
                         (theta.shape[0], num * num, 2))
  a = geometry.transform_points(points=pts, theta=theta, kind=kind)
  g = geometry.transform_points(points=pts, theta=theta_gt, kind=kind_gt)
  return jnp.mean(jnp.sum((a - g) ** 2, axis=-1))


def compute_terms(outputs: MaCoSNetOutput, names: Sequence[str]):
  """The unweighted loss terms ``names`` from the model output."""
  o = outputs.options
  terms = {}
  if "grid" in names:
    b, k = outputs.theta.shape[:2]
    gt = outputs.synthetic_theta.reshape(b * k, -1)
    terms["grid"] = grid_loss(
        theta=outputs.theta.reshape(b * k, -1), theta_gt=gt, kind=KIND) + (
            o.affine_grid_weight * grid_loss(
                theta=outputs.theta_affine.reshape(b * k, -1), theta_gt=gt,
                kind="affine"))
  pairs = outputs.pairs
  index = {p: n for n, p in enumerate(pairs)}
  th = lambda i, j: outputs.theta[:, index[(i, j)]].astype(jnp.float32)
  k = outputs.num_images
  if "matching" in names:
    fm = outputs.feature_masks
    if not o.matching_mask_grad:
      fm = jax.lax.stop_gradient(fm)
    vals = []
    for n, (i, j) in enumerate(pairs):
      # Pair (i, j): theta warps i onto j, so its point map is evaluated on
      # j's grid (the correlation's spatial axes): eq. 4 weights this
      # direction by M_j; 'product' also weights i's positions by M_i.
      mask_a = fm[:, i] if o.matching_masks == "product" else None
      for theta, kind in ((outputs.theta_affine[:, n], "affine"),
                          (outputs.theta[:, n], KIND)):
        vals.append(matching.matching_loss(
            correlation=outputs.correlation[:, n], theta=theta, kind=kind,
            mask_a=mask_a, mask_b=fm[:, j], phi=o.phi, distance=o.distance,
            source_size=fm.shape[2:4], normalize=o.matching_normalize))
    # Mean over ordered pairs and the two stages; eq. 4 adds the two
    # directions of a pair ('none'), the averaged forms average them.
    directions = 2.0 if o.matching_normalize == "none" else 1.0
    terms["matching"] = directions * jnp.mean(jnp.stack(vals))
  if "cycle" in names:
    terms["cycle"] = jnp.mean(jnp.stack([
        matching.cycle_consistency_loss(points=outputs.points,
                                        theta_ab=th(i, j), theta_ba=th(j, i),
                                        kind=KIND) for i, j in pairs]))
  if "transitivity" in names:
    if outputs.triplet is None:
      raise ValueError("the transitivity loss needs triplets: groups of K >= "
                       "3 images or config.model.triplets='batch_roll'")
    a, b_, c = outputs.triplet
    # Pull maps: th(i, j) sends j's frame to i's frame.
    terms["transitivity"] = 0.5 * (
        matching.transitivity_loss(points=outputs.points, theta_ab=th(a, b_),
                                   theta_bc=th(c, a), theta_ca=th(b_, c),
                                   kind=KIND) +
        matching.transitivity_loss(points=outputs.points, theta_ab=th(a, c),
                                   theta_bc=th(b_, a), theta_ca=th(c, b_),
                                   kind=KIND))
  upairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
  if "contrastive" in names:
    if outputs.object_features is None:
      raise ValueError("the contrastive loss needs config.model.perceptual")
    ob, bg = outputs.object_features, outputs.background_features
    margin = o.margin if outputs.margin is None else outputs.margin
    if margin is None:
      raise ValueError("margin='auto' needs the calibrated margin of the "
                       "model output (MaCoSNet with margin_auto)")
    terms["contrastive"] = jnp.mean(jnp.stack([
        contrastive.perceptual_contrastive_loss(
            object_a=ob[:, i], object_b=ob[:, j], background_a=bg[:, i],
            background_b=bg[:, j], margin=margin,
            reduction=o.contrastive_reduction) for i, j in upairs]))
  if "cross_consistency" in names:
    lg = outputs.mask_logits
    terms["cross_consistency"] = jnp.mean(jnp.stack([
        contrastive.cross_consistency_loss(
            mask_logits_a=lg[:, i], mask_logits_b=lg[:, j], theta_ab=th(i, j),
            theta_ba=th(j, i), kind=KIND,
            ignore_outside=o.cross_ignore_outside,
            stop_gradient_targets=o.cross_stop_gradient)
        for i, j in upairs]))
  return terms


def loss_fn(*, outputs: MaCoSNetOutput, batch: Mapping[str, jax.Array],
            loss_config: Mapping[str, float]):
  """Weighted MaCoSNet terms (weak supervision: ``batch`` masks unused).

  Args:
    outputs: the model output.
    batch: the data contract's dict (only images are used, by the model).
    loss_config: term -> weight; terms from ``LOSS_TERMS`` (joint mode) or
      'grid' (pretrain mode). Only named terms are computed.

  Returns:
    (total float32 scalar, weighted terms dict).
  """
  del batch
  known = PRETRAIN_TERMS if outputs.correlation is None else LOSS_TERMS
  mode = "pretrain" if known == PRETRAIN_TERMS else "joint"
  common.check_loss_terms(loss_config, known, f"MaCoSNet ({mode} mode)")
  # Zero-weight terms are not computed (exactly no gradient, no cost).
  names = [n for n, wgt in loss_config.items()
           if not (isinstance(wgt, (int, float)) and wgt == 0)]
  terms = compute_terms(outputs, names)
  for n in loss_config:
    terms.setdefault(n, jnp.zeros((), jnp.float32))
  return losses.compute_total_loss(terms, dict(loss_config))


# --------------------------------------------------------------------------
# Registry.


def _margin(value) -> Optional[float]:
  """config.model.margin: a number, or 'auto' (None: calibrated)."""
  if isinstance(value, str):
    if value != "auto":
      raise ValueError(f"config.model.margin must be a number or 'auto', got "
                       f"{value!r}")
    return None
  return float(value)


def _choice(get, name, default, choices):
  value = get(name, default)
  if value not in choices:
    raise ValueError(f"config.model.{name} must be one of {tuple(choices)}, "
                     f"got {value!r}")
  return value


def build_model(model_config: ml_collections.ConfigDict,
                mode: Optional[str] = None) -> MaCoSNet:
  """Builds :class:`MaCoSNet` from ``config.model`` (fields as its attributes,
  plus the loss options of :class:`LossOptions`; ``margin`` is a number or
  'auto', which sets ``margin_auto``). Defaults are the paper's forms."""
  get = model_config.get
  margin = _margin(get("margin", 2.0))
  options = LossOptions(
      phi=float(get("phi", 1.0)), distance=get("distance", "chebyshev"),
      margin=margin,
      contrastive_reduction=_choice(get, "contrastive_reduction", "mean",
                                    contrastive.REDUCTIONS),
      matching_masks=_choice(get, "matching_masks", "source", MATCHING_MASKS),
      matching_normalize=_choice(get, "matching_normalize", "none",
                                 MATCHING_NORMALIZE),
      matching_mask_grad=bool(get("matching_mask_grad", True)),
      cross_ignore_outside=bool(get("cross_ignore_outside", False)),
      cross_stop_gradient=bool(get("cross_stop_gradient", False)),
      affine_grid_weight=float(get("affine_grid_weight", 1.0)))
  synthetic = get("synthetic", None)
  perceptual = get("perceptual", "efficientnet_lite0")
  return MaCoSNet(
      backbone=get("backbone", "resnet101"),
      backbone_kwargs=dict(get("backbone_kwargs", None) or {}),
      feature_level=get("feature_level", "stride16"),
      freeze_encoder=bool(get("freeze_encoder", True)),
      perceptual=perceptual or None,
      perceptual_size=get("perceptual_size", None),
      mode=mode or get("mode", "joint"),
      stage2_input=get("stage2_input", "image"),
      triplets=get("triplets", "batch_roll"),
      residual_theta=bool(get("residual_theta", True)),
      decoder_final_width=int(get("decoder_final_width", 32)),
      decoder_convs=int(get("decoder_convs", 2)),
      perceptual_masking=_choice(get, "perceptual_masking", "normalized",
                                 PERCEPTUAL_MASKING),
      margin_auto=margin is None,
      margin_ratio=float(get("margin_ratio", 1.0)),
      margin_batches=int(get("margin_batches", 10)),
      num_points=int(get("num_points", 100)),
      synthetic=dict(synthetic) if synthetic else None,
      options=options, dtype=registry.config_dtype(get("dtype", "float32")))


def _register():
  registry.register_method("macosnet", registry.MethodSpec(
      build_model=lambda cfg: build_model(cfg, "joint"), loss_fn=loss_fn,
      default_loss={"matching": 1.0, "cycle": 5.0, "transitivity": 5.0,
                    "contrastive": 10.0, "cross_consistency": 10.0},
      description="MaCoSNet: joint semantic matching and co-segmentation "
                  "(weakly supervised)"))
  registry.register_method("macosnet_pretrain", registry.MethodSpec(
      build_model=lambda cfg: build_model(cfg, "pretrain"), loss_fn=loss_fn,
      default_loss={"grid": 1.0},
      description="MaCoSNet's transformation predictor pre-trained on "
                  "synthetic affine/TPS warps (CNNGeo grid loss)"))


_register()
