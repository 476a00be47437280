"""The unsupervised co-attention CNN of Hsu, Lin and Chuang (IJCAI 2018).

Given only a collection of images of one class, two CNNs co-operate:

* the generator g (an FCN) maps every image I_n to a co-attention map
  S_n = sigmoid(g(I_n)) in [0, 1] at input resolution;
* the extractor f, a fixed ImageNet classifier, embeds the object image
  S_n * I_n and the background image (1 - S_n) * I_n into the features before
  its last fully connected layer, f_n^o and f_n^b (ResNet-50, 2048-d, in the
  paper; EfficientNet-Lite0, 1280-d, with its real ImageNet weights here).

g is trained by the co-attention loss (eq. 3-6: objects of different images
close, object and background of the same image far apart, over all pairs)
and, in a second stage, by the mask loss (eq. 7) against object masks chosen
from unsupervised proposals (``coseg_jax.proposals``): M~, picked once from
the stage-1 maps, and M, re-selected from the current maps every epoch. The
loss functions are ``coseg_jax.losses.coattention``; the per-collection,
two-stage training with both selections is
``coseg_jax.runtime.trainers.collection``.

Model contract: ``images`` [B, K, H, W, 3] in [0, 1]; the K images of a group
are the images of one collection (or a mini-batch of it); the co-attention
loss takes every ordered pair inside each group.

What we observed (docs/notes/lab_notebook.md, "Co-attention CNN: constructed
synthetic collection", with the earlier ``self_bootstrap`` mask target, and
the slow tests of tests/test_coattention.py): with a frozen extractor,
eq. 3-6 has a trivial minimum at S = 0 (every object image is the same blank
image, d+ = 0), and on real PASCAL images it is below the ground truth's loss
at 64, 128 and 224 px (``benchmarks/coattention_diagnose.py``), where stage 1 moves S
away from the object from the first update. From the near-uniform initial maps
(S ~ 0.5, d- ~ 0) the first updates do find the common object, and then S
drifts to 0. What keeps the method away from it is stage 2, as long as S
follows one selection for several updates before the next and the mask term is
heavy enough: with 20 updates per selection (lr 1e-3) the learned maps reached
J 0.79 with the co-attention and mask terms summed over pairs, images and
pixels (MatConvNet's loss layers, ``mask_pixel_reduction='sum'``), 0.77 with
eq. 7's target (M~ fixed) and the same sums, and 0.78 with per-pair and
per-pixel means; with the sums over pairs and images but eq. 7's per-pixel
mean (the paper config's literal balance) S fell back towards 0 (J 0.38 with
eq. 7's target, 0.19 with the earlier one); with a selection after every
update S collapsed. The masked-out pixels' value matters too: black (fill 0)
is a strong input of its own for f; mid-grey (fill 0.5, zero after f's
normalisation, like the paper's mean-subtracted inputs) makes the ground truth
clearly the lower loss on the synthetic collection.

Choices the paper leaves open (all ``CoattentionNet`` attributes, set from
``config.model``):

* Generator: ``backbone`` (any registered backbone; VGG16 in the paper, Lite0
  with its real weights here) followed by ``coseg_jax.nn.decoders.
  UpsampleDecoder`` (bilinear upsampling + 3x3 conv blocks, FCN-style skips
  from the backbone when ``use_skips``) and a 1x1 conv to one logit per pixel.
  The paper only says "FCN"; this is an FCN with a learned upsampling path.
* Generator BatchNorm: ``generator_bn_train=False`` (default) keeps a
  pretrained encoder's and the decoder's BN in inference mode (running
  statistics): a collection mini-batch is a handful of images of one class,
  too few for good batch statistics. The decoder's running statistics are then
  their initial values (mean 0, variance 1), i.e. BN is an affine layer.
* Extractor f: ``extractor`` (registered backbone name) is applied in
  inference mode (BN running statistics, no dropout / drop-connect) and its
  parameters are wrapped in ``jax.lax.stop_gradient`` (``nn.map_variables``),
  so no gradient reaches them: the gradient of the losses flows into S only,
  through the masked images. Features: the backbone's ``pooled`` vector (the
  input of its last FC layer).
* Masking: the object image is S * I + (1 - S) * ``fill_value`` and the
  background image (1 - S) * I + S * ``fill_value`` in [0, 1] RGB. The
  paper multiplies mean-subtracted inputs, i.e. masked pixels become the
  mean colour; the configs use 0.5 (Lite0's zero input). The attribute's
  default 0 (black, as the paper's Fig. 2 displays it) is kept for API
  compatibility.
* ``train_extractor``: the paper's abstract says f is "derived based on the
  co-attention loss" (learned with g, from ImageNet weights); Sec. 3.5 keeps
  it fixed in the experiments, as our default does. True lets the gradient
  reach f (with a non-zero ``config.optimizer.lr_multipliers
  ['extractor_net']``; the paper config's 0 freezes it); it was tried once
  on the synthetic collection (stage 1 only, f at 0.03 x lr) without a clear
  gain.
* ``extractor_size``: the masked images are resized (bilinear) to this side
  before f, or fed at input size when None.
"""

import functools
from typing import Any, Mapping, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from coseg_jax import backbones
from coseg_jax import losses
from coseg_jax.models import common
from coseg_jax.models import registry
from coseg_jax.nn import decoders

LOSS_TERMS = ("coattention", "coattention_mask")


@flax.struct.dataclass
class CoattentionOutput:
  """Output of :class:`CoattentionNet`.

  Attributes:
    mask_logits: [B, K, H, W, 1] float32 logits of the co-attention maps
      (S = sigmoid(mask_logits)).
    object_features: [B, K, C] float32 f(S * I) (C = 1280 for Lite0).
    background_features: [B, K, C] float32 f((1 - S) * I).
  """
  mask_logits: jax.Array
  object_features: Optional[jax.Array] = None
  background_features: Optional[jax.Array] = None


def _frozen_apply(module, images):
  """Applies ``module`` in inference mode (wrapped by nn.map_variables)."""
  return module(images, train=False)


class CoattentionGenerator(nn.Module):
  """FCN generator g: images -> co-attention logits at input resolution.

  Attributes:
    backbone: registered backbone name.
    backbone_kwargs: extra backbone attributes.
    decoder_widths: channels of the five decoder blocks (strides 16..1).
    convs_per_block: 3x3 convs per decoder block.
    use_skips: FCN skips from the backbone into the decoder.
    bn_train: BatchNorm in training mode when the model is called with
      ``train=True`` (see module docstring).
    dtype: computation dtype (parameters float32).
  """
  backbone: str = "tiny"
  backbone_kwargs: Optional[Mapping[str, Any]] = None
  decoder_widths: Sequence[int] = (64, 32, 32, 16, 16)
  convs_per_block: int = 1
  use_skips: bool = True
  bn_train: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    """Args: images [N, H, W, 3] in [0, 1]. Returns float32 [N, H, W, 1]."""
    _, h, w, _ = images.shape
    bn_train = train and self.bn_train
    kwargs = dict(self.backbone_kwargs or {})
    encoder = backbones.get_backbone(self.backbone, dtype=self.dtype,
                                     **kwargs).clone(parent=self,
                                                     name="backbone")
    # Drop-connect / dropout of the encoder only with BN in training mode too.
    feats = encoder(images, train=bn_train).features
    y = common.decode(self, feats["stride32"], output_size=(h, w),
                      skips=feats, train=bn_train)
    return common.mask_head(y)


class CoattentionNet(nn.Module):
  """Generator g + frozen extractor f (see module docstring).

  Attributes:
    backbone: generator backbone name.
    backbone_kwargs: extra generator backbone attributes.
    decoder_widths: generator decoder widths.
    convs_per_block: generator decoder depth per block.
    use_skips: generator FCN skips.
    generator_bn_train: generator BatchNorm in training mode when training.
    extractor: registered backbone name of f (needs a ``pooled`` output).
    extractor_kwargs: extra attributes of f.
    extractor_size: side the masked images are resized to before f (None:
      input size).
    fill_value: RGB value in [0, 1] of masked-out pixels.
    train_extractor: let the losses' gradient reach f's parameters (the
      paper learns f with g); False wraps them in ``stop_gradient``. f's
      BatchNorm stays in inference mode either way.
    dtype: computation dtype (parameters float32).
  """
  backbone: str = "tiny"
  backbone_kwargs: Optional[Mapping[str, Any]] = None
  decoder_widths: Sequence[int] = (64, 32, 32, 16, 16)
  convs_per_block: int = 1
  use_skips: bool = True
  generator_bn_train: bool = False
  extractor: str = "efficientnet_lite0"
  extractor_kwargs: Optional[Mapping[str, Any]] = None
  extractor_size: Optional[int] = None
  fill_value: float = 0.0
  train_extractor: bool = False
  dtype: Any = jnp.float32

  def setup(self):
    self.generator = CoattentionGenerator(
        backbone=self.backbone, backbone_kwargs=self.backbone_kwargs,
        decoder_widths=tuple(self.decoder_widths),
        convs_per_block=self.convs_per_block, use_skips=self.use_skips,
        bn_train=self.generator_bn_train, dtype=self.dtype)
    self.extractor_net = backbones.get_backbone(
        self.extractor, dtype=self.dtype, **dict(self.extractor_kwargs or {}))

  def attention_logits(self, images: jax.Array,
                       train: bool = False) -> jax.Array:
    """g alone: images [B, K, H, W, 3] -> logits [B, K, H, W, 1] (float32)."""
    b, k, h, w, _ = images.shape
    return self.generator(images.reshape(b * k, h, w, 3),
                          train=train).reshape(b, k, h, w, 1)

  def features(self, images: jax.Array, attention: jax.Array):
    """f on the object and background images.

    Args:
      images: [N, H, W, 3] in [0, 1].
      attention: [N, H, W, 1] co-attention maps S in [0, 1].

    Returns:
      (object features [N, C], background features [N, C]), float32.
    """
    n = images.shape[0]
    fill = jnp.asarray(self.fill_value, jnp.float32)
    obj = attention * images + (1.0 - attention) * fill
    bg = (1.0 - attention) * images + attention * fill
    x = jnp.concatenate([obj, bg], axis=0)
    if self.extractor_size is not None:
      size = int(self.extractor_size)
      x = jax.image.resize(x, (x.shape[0], size, size, 3), method="bilinear")
    frozen = nn.map_variables(
        _frozen_apply, "params",
        trans_in_fn=(lambda p: p) if self.train_extractor
        else jax.lax.stop_gradient,
        init=self.is_initializing())
    out = frozen(self.extractor_net, x.astype(jnp.float32))
    if out.pooled is None:
      raise ValueError(f"extractor {self.extractor!r} returns no pooled "
                       "features")
    pooled = out.pooled.astype(jnp.float32)
    return pooled[:n], pooled[n:]

  def __call__(self, images: jax.Array, train: bool = False
               ) -> CoattentionOutput:
    """Args: images [B, K, H, W, 3] in [0, 1]. Returns CoattentionOutput."""
    common.check_images(images)
    b, k, h, w, _ = images.shape
    logits = self.attention_logits(images, train=train)
    s = jax.nn.sigmoid(logits).reshape(b * k, h, w, 1)
    fo, fb = self.features(images.reshape(b * k, h, w, 3).astype(jnp.float32),
                           s)
    return CoattentionOutput(mask_logits=logits,
                             object_features=fo.reshape(b, k, -1),
                             background_features=fb.reshape(b, k, -1))


def build_model(model_config: ml_collections.ConfigDict) -> CoattentionNet:
  """Builds the model from ``config.model`` (fields as CoattentionNet's)."""
  get = model_config.get
  size = get("extractor_size", None)
  return CoattentionNet(
      backbone=get("backbone", "tiny"),
      backbone_kwargs=dict(get("backbone_kwargs", None) or {}),
      decoder_widths=tuple(get("decoder_widths", (64, 32, 32, 16, 16))),
      convs_per_block=int(get("convs_per_block", 1)),
      use_skips=bool(get("use_skips", True)),
      generator_bn_train=bool(get("generator_bn_train", False)),
      extractor=get("extractor", "efficientnet_lite0"),
      extractor_kwargs=dict(get("extractor_kwargs", None) or {}),
      extractor_size=None if size is None else int(size),
      fill_value=float(get("fill_value", 0.0)),
      train_extractor=bool(get("train_extractor", False)),
      dtype=registry.config_dtype(get("dtype", "float32")))


def loss_fn(*, outputs: CoattentionOutput, batch: Mapping[str, jax.Array],
            loss_config: Mapping[str, float], beta: float = 0.95,
            squared: bool = True, reduction: str = "mean",
            mask_pixel_reduction: str = "mean", target: str = "paper"):
  """Co-attention loss (eq. 3-6) and mask loss (eq. 7), weighted.

  The co-attention loss is computed over the ordered pairs of each group's K
  images and averaged (or summed) over the B groups; the mask loss over all
  B * K maps.

  Args:
    outputs: the model output.
    batch: ``images``; when the mask term has a non-zero weight,
      ``object_masks`` [B, K, H, W, 1] in {0, 1} (M, the masks selected from
      the current maps) and, for ``target='paper'``, ``fixed_masks`` (same
      shape; M~, the proposals picked once from the stage-1 maps); optional
      ``valid`` [B, K, H, W, 1] (0 = padding, not counted by the mask loss).
    loss_config: term name ('coattention', 'coattention_mask') -> weight
      (the paper: 1 and lambda = 9; the mask weight 0 in stage 1).
    beta: weight of M~ in eq. 7's target (paper 0.95).
    squared: squared Euclidean distances in eq. 5-6 (paper).
    reduction: 'mean' (over pairs / images) or 'sum' (eq. 3's sum over
      pairs and eq. 1's sum over images, the paper), for both terms.
    mask_pixel_reduction: the mask loss of one image is the 'mean' (eq. 7's
      1/|K|, the paper) or the 'sum' (MatConvNet's loss layers) over its
      pixels.
    target: 'paper' (eq. 7: stop_gradient(beta M~ + (1 - beta) M)) or
      'self_bootstrap' (beta M + (1 - beta) S, gradient through S; no
      ``fixed_masks`` needed); see ``coseg_jax.losses.coattention``.

  Returns:
    (total float32 scalar, weighted terms dict).
  """
  common.check_loss_terms(loss_config, LOSS_TERMS, "coattention")
  terms = {}
  if "coattention" in loss_config:
    fo = outputs.object_features
    fb = outputs.background_features
    per_group = jax.vmap(functools.partial(
        losses.get_loss("coattention"), squared=squared,
        reduction=reduction))(object_features=fo, background_features=fb)
    terms["coattention"] = (jnp.sum(per_group) if reduction == "sum"
                            else jnp.mean(per_group))
  if "coattention_mask" in loss_config:
    weight = loss_config["coattention_mask"]
    needed = ["object_masks"] + (["fixed_masks"] if target == "paper" else [])
    missing = [k for k in needed if k not in batch]
    if missing:
      if isinstance(weight, (int, float)) and float(weight) == 0.0:
        terms["coattention_mask"] = jnp.zeros((), jnp.float32)
      else:
        raise ValueError(
            f"the coattention mask loss (target={target!r}) needs batch"
            f"{missing} (object_masks: M selected from the current maps; "
            "fixed_masks: M~ picked from the stage-1 maps)")
    else:
      logits = outputs.mask_logits.astype(jnp.float32)
      n = logits.shape[0] * logits.shape[1]
      flat = logits.reshape(n, *logits.shape[2:])
      masks = jnp.asarray(batch["object_masks"], jnp.float32).reshape(
          flat.shape)
      fixed = None
      if target == "paper":
        fixed = jnp.asarray(batch["fixed_masks"], jnp.float32).reshape(
            flat.shape)
      valid = batch.get("valid")
      if valid is not None:
        valid = jnp.asarray(valid).reshape(flat.shape) > 0
      terms["coattention_mask"] = losses.get_loss("coattention_mask")(
          object_mask=masks, fixed_mask=fixed, attention_logits=flat,
          beta=beta, target=target, valid=valid, reduction=reduction,
          pixel_reduction=mask_pixel_reduction)
  return losses.compute_total_loss(terms, dict(loss_config))


registry.register_method("coattention", registry.MethodSpec(
    build_model=build_model,
    loss_fn=loss_fn,
    default_loss={"coattention": 1.0, "coattention_mask": 0.0},
    description="unsupervised co-attention CNN (Hsu et al. IJCAI 2018), "
                "trained per collection"))
