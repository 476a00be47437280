"""DCC: image-pair co-segmentation by depth-wise cross-correlation.

Registered method ``dcc``. A Siamese encoder (VGG16-BN, shared weights over
the K images of a group) maps each image to a feature map F_k [h, w, C]. For
each direction (A <- B and B <- A), the *other* image's map, subsampled to
k x k for every scale k in ``kernel_sizes``, is used channel by channel as a
depth-wise convolution kernel over this image's map
(``coseg_jax.nn.correlation.depthwise_xcorr``):

  R_k[y, x, c] = 1/(k*k) sum_{u,v} F_A[y+u-r, x+v-r, c] * K_B^k[u, v, c]

There are no learned parameters in this matching and the C channels are kept:
a channel responds where A has a pattern that B has too (at scale k = 1 the
kernel is B's global average, so R_1 re-weights A's channels by B's channel
means; larger k add B's spatial layout). The scales' responses are combined
(``combine``), normalised (``match_norm``), optionally concatenated with F_A
itself (``include_features``), and decoded by bilinear-upsampling + conv
blocks into one logit per pixel. The loss is CE_A + CE_B (appendix eq. B1):
the pixel BCE of each image's mask (void pixels ignored), summed over the
images of the pair (term ``ce``).

What the appendix (paper 003) fixes, and our reading of it:

* Appendix B: a Siamese encoder (shared weights) extracts high-level
  features; the depth-wise cross-correlation "mines the common
  information" and "only enhances the features with common objects"; then
  the decoder up-samples and convolves to the masks. We read the decoder's
  input as the matched map alone: ``include_features=False`` (default).
  ``True`` (our earlier form) also gives the decoder F_A itself.
* Appendix C.2: BatchNorm normalises the input of each convolution layer.
  The matched map, from L2-normalised features divided by k*k, is about
  10^-3 in root mean square (per-channel variances ~10^-7) where F_A and
  the decoder's BN'd activations are about 1: beside F_A the decoder can
  ignore it, and alone its first-conv output has a variance below that
  conv's BatchNorm epsilon (10^-5), which then shrinks instead of
  normalising. ``match_norm='batchnorm'`` (default) puts a per-channel
  BatchNorm on it (learned scale and shift: 2 C' parameters; epsilon
  1e-10 for those variances; two-pass variance); 'rms' divides each
  position's C' responses by their root mean square (parameter-free);
  'none' is our earlier form.
* Appendix C.2: VGG16 (with BatchNorm) from ImageNet, its 13 convolutions as
  the encoder; 513 x 513 inputs, random scaling, cropping and rotation;
  Adam at a fixed 1e-5; batch 5 pairs; 10 epochs (about 335k updates).

Choices the appendix leaves open, each a config field (``config.model``):

* ``feature_level``: the encoder level matched, default 'stride16' (VGG's
  relu5_3, 512 ch, the last of the 13 convolutions; pool5 is not computed).
  At 513x513 that is 32x32, so the kernels cover a meaningful share of the
  other image.
* ``kernel_sizes``: (1, 3, 5): the other map adaptively average-pooled to
  1x1, 3x3 and 5x5 (torch bin edges, so any feature size works); the
  appendix describes a pyramid of subsampled maps without its scales.
* ``normalize_features``: L2-normalise every feature vector over channels
  before matching (default True), so the responses measure agreement of
  feature *patterns*, not feature magnitudes; each response is divided by
  k*k so the scales are on one footing.
* ``combine``: how the scales' responses are merged: 'concat' (default;
  [h, w, C * S], the decoder's first conv learns the mix), 'sum', 'mean' or
  'max' (all [h, w, C]).
* ``decoder_widths``, ``convs_per_block``, ``use_skips``: the
  ``coseg_jax.nn.decoders.UpsampleDecoder`` (BN + ReLU convs, five bilinear
  upsamplings to the input size) followed by a 1x1 conv to the logit. Skips
  ('stride8', 'stride4', 'stride2' encoder maps; the appendix mentions
  none) are resized to the decoder's ceil(H / S) grid when VGG's
  floor(H / S) differs (odd sizes such as 513).
* K > 2 images: image k's kernels are the mean of the other images' kernels
  (equivalently, by linearity, the mean of the K - 1 responses).

Works at any input size: nothing depends on H, W beyond the feature grid.
"""

from typing import Any, Mapping, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from coseg_jax import losses
from coseg_jax.models import baselines
from coseg_jax.models import common
from coseg_jax.models import registry
from coseg_jax.models.baselines import other_mean
from coseg_jax.nn import correlation
from coseg_jax.nn import decoders
from coseg_jax.nn import resize

COMBINES = ("concat", "sum", "mean", "max")
MATCH_NORMS = ("none", "rms", "batchnorm")
LOSS_TERMS = ("ce", "lovasz")
# The matched map's per-channel variances are ~1e-7 (L2-normalised features,
# responses divided by k*k): a BatchNorm epsilon of 1e-5 would swallow them.
MATCH_BN_EPSILON = 1e-10
MATCH_RMS_EPSILON = 1e-12


@flax.struct.dataclass
class DCCOutput:
  """Output of :class:`DCCNet`.

  Attributes:
    mask_logits: [B, K, H, W, 1] float32 foreground logits.
  """
  mask_logits: jax.Array


def combine_responses(responses: Sequence[jax.Array], how: str) -> jax.Array:
  """Merges per-scale [N, h, w, C] responses ('concat'|'sum'|'mean'|'max')."""
  if how == "concat":
    return jnp.concatenate(responses, axis=-1)
  stacked = jnp.stack(responses, axis=0)
  if how == "sum":
    return jnp.sum(stacked, axis=0)
  if how == "mean":
    return jnp.mean(stacked, axis=0)
  if how == "max":
    return jnp.max(stacked, axis=0)
  raise ValueError(f"combine must be one of {COMBINES}, got {how!r}")


def match(*, features: jax.Array, kernel_sizes: Sequence[int] = (1, 3, 5),
          combine: str = "concat", normalize_features: bool = True,
          method: str = "shift") -> jax.Array:
  """Parameter-free DCC matching of every image with its group's others.

  Args:
    features: [B, K, h, w, C] encoder maps of the K images of each group.
    kernel_sizes: the scales k (kernels k x k).
    combine: see :func:`combine_responses`.
    normalize_features: L2-normalise feature vectors before matching.
    method: ``depthwise_xcorr`` implementation ('shift' | 'conv').

  Returns:
    [B * K, h, w, C'] responses (C' = C * len(kernel_sizes) for 'concat',
    else C), image k's map correlated with the kernels of the others.
  """
  b, k, h, w, c = features.shape
  if k < 2:
    raise ValueError(f"DCC needs groups of K >= 2 images, got K={k}")
  f = features.astype(jnp.float32)
  if normalize_features:
    f = correlation.feature_l2_norm(f)
  flat = f.reshape(b * k, h, w, c)
  responses = []
  for kern in correlation.multiscale_kernels(features=flat,
                                             sizes=tuple(kernel_sizes)):
    ks = kern.shape[1]
    others = other_mean(kern.reshape(b, k, ks * ks * c)).reshape(kern.shape)
    responses.append(correlation.depthwise_xcorr(
        features=flat, kernels=others, normalize=True, method=method))
  return combine_responses(responses, combine)


def rms_normalize(x: jax.Array, eps: float = MATCH_RMS_EPSILON) -> jax.Array:
  """x [..., C] / sqrt(mean_c x^2 + eps): unit root mean square per position."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True)
                           + eps)


class DCCNet(nn.Module):
  """Siamese encoder, depth-wise cross-correlation matching, decoder.

  Attributes:
    backbone: encoder name ('vgg16_bn').
    backbone_kwargs: extra backbone attributes.
    backbone_eval_mode: run the backbone in evaluation mode during training
      too (``backbones.group_features``); for a frozen encoder.
    feature_level: encoder level matched ('stride16').
    kernel_sizes: matching scales.
    combine: 'concat' | 'sum' | 'mean' | 'max'.
    normalize_features: L2-normalise features before matching.
    match_norm: 'batchnorm' (per-channel BatchNorm of the matched map),
      'rms' (unit root mean square per position) or 'none'.
    include_features: decoder input also has the image's own features.
    decoder_widths: five UpsampleDecoder block widths.
    convs_per_block: convs per decoder block.
    use_skips: encoder skips into the decoder.
    xcorr_method: 'shift' or 'conv' (equal results).
    dtype: computation dtype (parameters float32; matching in float32).
  """
  backbone: str = "vgg16_bn"
  backbone_kwargs: Optional[Mapping[str, Any]] = None
  backbone_eval_mode: bool = False
  feature_level: str = "stride16"
  kernel_sizes: Sequence[int] = (1, 3, 5)
  combine: str = "concat"
  normalize_features: bool = True
  match_norm: str = "batchnorm"
  include_features: bool = False
  decoder_widths: Sequence[int] = (256, 128, 64, 32, 16)
  convs_per_block: int = 1
  use_skips: bool = True
  xcorr_method: str = "shift"
  dtype: Any = jnp.float32

  @property
  def encoder_kwargs(self):
    """The backbone attributes the model builds its encoder with: truncated
    after the matched level."""
    kwargs = dict(self.backbone_kwargs or {})
    kwargs.setdefault("truncate_at", self.feature_level)
    return kwargs

  @property
  def feature_levels(self):
    """The backbone levels the model reads (what a feature cache stores)."""
    skips = tuple(l for l, _ in decoders.DECODER_LEVELS[1:4])
    return (self.feature_level,) + (skips if self.use_skips else ())

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False,
               features=None) -> DCCOutput:
    """Args: images [B, K, H, W, 3] in [0, 1], K >= 2; optional ``features``
    {level: [B, K, h, w, C]} of the frozen backbone (then only the shape of
    ``images`` is used). Returns DCCOutput."""
    common.check_images(images)
    common.check_choice("combine", self.combine, COMBINES)
    common.check_choice("match_norm", self.match_norm, MATCH_NORMS)
    b, k, h, w, _ = images.shape
    feats = common.encode_group(self, images, train=train,
                                features=features)
    if self.feature_level not in feats:
      raise ValueError(f"feature_level {self.feature_level!r} not produced by "
                       f"the backbone; got {sorted(feats)}")
    f = feats[self.feature_level]
    fh, fw, fc = f.shape[1:]
    x = match(features=f.reshape(b, k, fh, fw, fc),
              kernel_sizes=self.kernel_sizes, combine=self.combine,
              normalize_features=self.normalize_features,
              method=self.xcorr_method)
    # In float32, as the matching: the responses are ~1e-3.
    if self.match_norm == "batchnorm":
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                       epsilon=MATCH_BN_EPSILON, use_fast_variance=False,
                       dtype=jnp.float32, name="match_norm")(x)
    elif self.match_norm == "rms":
      x = rms_normalize(x)
    x = x.astype(self.dtype)
    self.sow("intermediates", "matched", x)
    if self.include_features:
      x = jnp.concatenate([f.astype(self.dtype), x], axis=-1)
    skips = None
    if self.use_skips:
      skips = {}
      for level, stride in decoders.DECODER_LEVELS[1:4]:
        size = (-(-h // stride), -(-w // stride))
        s = feats[level]
        if s.shape[1:3] != size:  # VGG floors, the decoder ceils.
          s = resize.bilinear_resize(s, size)
        skips[level] = s
      # No stride-16 skip: the decoder's first block (stride 16) already
      # reads the matched map; an empty (0-channel) skip keeps its interface.
      skips["stride16"] = jnp.zeros(
          (b * k, -(-h // 16), -(-w // 16), 0), self.dtype)
    y = common.decode(self, x, output_size=(h, w), skips=skips, train=train)
    logits = common.mask_head(y)
    return DCCOutput(mask_logits=logits.reshape(b, k, h, w, 1))


def build_model(model_config: ml_collections.ConfigDict) -> DCCNet:
  """Builds the model from ``config.model`` (fields as DCCNet's)."""
  get = model_config.get
  return DCCNet(
      backbone=get("backbone", "vgg16_bn"),
      backbone_kwargs=dict(get("backbone_kwargs", None) or {}),
      backbone_eval_mode=bool(get("backbone_eval_mode", False)),
      feature_level=get("feature_level", "stride16"),
      kernel_sizes=tuple(get("kernel_sizes", (1, 3, 5))),
      combine=get("combine", "concat"),
      normalize_features=bool(get("normalize_features", True)),
      match_norm=str(get("match_norm", "batchnorm")),
      include_features=bool(get("include_features", False)),
      decoder_widths=tuple(get("decoder_widths", (256, 128, 64, 32, 16))),
      convs_per_block=int(get("convs_per_block", 1)),
      use_skips=bool(get("use_skips", True)),
      xcorr_method=get("xcorr_method", "shift"),
      dtype=registry.config_dtype(get("dtype", "float32")))


def loss_fn(*, outputs: DCCOutput, batch: Mapping[str, jax.Array],
            loss_config: Mapping[str, float]):
  """CE_A + CE_B (eq. B1), optionally with a Lovász term beside it.

  ``ce`` is the paper's loss: the per-image mean pixel BCE, summed over the
  K images. ``lovasz`` (not in the paper) is the Lovász-Softmax surrogate
  of the batch's foreground Jaccard index, as CycleSegNet trains with
  (``baselines.loss_fn``): pixel BCE leaves the objects a frozen encoder
  is unsure of below probability 0.5, where a J surrogate pushes them over.

  Args:
    outputs: ``mask_logits`` [B, K, H, W, 1].
    batch: ``masks`` [B, K, H, W, 1] {0, 1}; optional ``valid`` (0 = void).
    loss_config: {'ce': weight, 'lovasz': weight}, either or both.

  Returns:
    (total float32 scalar, weighted terms).
  """
  common.check_loss_terms(loss_config, LOSS_TERMS, "dcc")
  if not loss_config:
    raise ValueError(f"config.loss for dcc names no term; known: "
                     f"{list(LOSS_TERMS)}")
  terms = {}
  if "ce" in loss_config:
    logits = outputs.mask_logits.astype(jnp.float32)
    masks = batch["masks"].astype(jnp.float32)
    valid = batch.get("valid")
    valid = (jnp.ones_like(masks) if valid is None
             else valid.astype(jnp.float32))
    bce = losses.get_loss("sigmoid_bce")
    terms["ce"] = sum(
        bce(logits=logits[:, i], labels=masks[:, i], valid=valid[:, i])
        for i in range(logits.shape[1]))
  if "lovasz" in loss_config:
    # Unit weight gives the raw term; the config's weight applies below.
    terms["lovasz"] = baselines.loss_fn(
        outputs=baselines.BaselineOutput(mask_logits=outputs.mask_logits),
        batch=batch, loss_config={"lovasz": 1.0})[1]["lovasz"]
  return losses.compute_total_loss(terms, dict(loss_config))


registry.register_method("dcc", registry.MethodSpec(
    build_model=build_model, loss_fn=loss_fn, default_loss={"ce": 1.0},
    description="Depth-wise cross-correlation pair network (VGG16-BN, "
                "multi-scale kernels from the other image)"))
