"""CycleSegNet's Table 1 baselines: Siamese encoder-decoders without and with
global feature exchange.

Registered methods (Zhang et al., IEEE TIP 2021, Sec. 4.2 / Table 1):

* ``baseline``: a Siamese foreground network. One encoder (shared weights over
  the K images of a group: K is folded into the batch axis) and one decoder;
  nothing passes between the images, so it can only learn "salient object".
* ``mcat``: the other images' information enters as the globally
  average-pooled deepest feature map ``g_other`` [C], broadcast over the
  stride-32 grid and concatenated with the image's own features:
  ``x' = concat(x, broadcast(g_other))`` ([h, w, 2C]).
* ``mmul``: the same vector multiplies the features channel-wise:
  ``x' = x * g_other`` (a plain product, no sigmoid gate: the paper only says
  "multiplied"; with ReLU features both factors are non-negative, so the
  product keeps channels active in both images).

For K > 2, ``g_other`` of image k is the mean of the other K-1 images' pooled
vectors (for K = 2 this is exactly "the other image"). The decoder is
:class:`coseg_jax.nn.decoders.UpsampleDecoder` followed by a 1x1 conv to one
foreground logit per pixel, computed and returned in float32.

Loss: the paper trains with the Lovász-Softmax loss over the two classes
{background, foreground} built from the single logit (term ``lovasz``: one
loss over all pixels of the batch, a surrogate of the pooled Jaccard index);
``lovasz_image`` is the mean over images of each image's own Lovász loss, a
surrogate of the per-image J that the co-segmentation benchmarks average (a
small object weighs as much as a large one); a pixel BCE term (``bce``) is
available too. ``config.loss`` gives a weight per term; only terms named
there are computed, and an unknown name is an error. Pixels with
``valid == 0`` (void / padding) are ignored by every term.
"""

from typing import Any, Mapping, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from coseg_jax import losses
from coseg_jax.models import common
from coseg_jax.models import registry
from coseg_jax.nn import decoders

EXCHANGES = ("none", "cat", "mul")
LOSS_TERMS = ("lovasz", "lovasz_image", "bce")
IGNORE_LABEL = 255


@flax.struct.dataclass
class BaselineOutput:
  """Output of :class:`SiameseCoseg`.

  Attributes:
    mask_logits: [B, K, H, W, 1] float32 foreground logits.
  """
  mask_logits: jax.Array


def other_mean(pooled: jax.Array) -> jax.Array:
  """Mean of the other images' vectors in each group.

  Args:
    pooled: [B, K, C], K >= 2.

  Returns:
    [B, K, C]; entry k is the mean over j != k of ``pooled[:, j]``.
  """
  k = pooled.shape[1]
  if k < 2:
    raise ValueError(f"feature exchange needs groups of K >= 2 images, got "
                     f"K={k}")
  return (jnp.sum(pooled, axis=1, keepdims=True) - pooled) / (k - 1)


class SiameseCoseg(nn.Module):
  """Siamese encoder-decoder with an optional global feature exchange.

  Attributes:
    backbone: name for ``coseg_jax.backbones.get_backbone``.
    backbone_kwargs: extra backbone attributes.
    backbone_eval_mode: run the backbone in evaluation mode during training
      too (``backbones.group_features``); for a frozen encoder.
    exchange: 'none' (baseline), 'cat' (Mcat) or 'mul' (Mmul).
    decoder_widths: channels of the five decoder blocks.
    convs_per_block: 3x3 convs per decoder block.
    use_skips: feed backbone skips into the decoder.
    dtype: computation dtype (parameters stay float32).
  """
  backbone: str = "tiny"
  backbone_kwargs: Optional[Mapping[str, Any]] = None
  backbone_eval_mode: bool = False
  exchange: str = "none"
  decoder_widths: Sequence[int] = (64, 32, 32, 16, 16)
  convs_per_block: int = 1
  use_skips: bool = False
  dtype: Any = jnp.float32

  @property
  def encoder_kwargs(self):
    """The backbone attributes the model builds its encoder with."""
    return dict(self.backbone_kwargs or {})

  @property
  def feature_levels(self):
    """The backbone levels the model reads (what a feature cache stores)."""
    skips = tuple(l for l, s in decoders.DECODER_LEVELS if s > 1)
    return ("stride32",) + (skips if self.use_skips else ())

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False,
               features=None) -> BaselineOutput:
    """Args: images [B, K, H, W, 3] in [0, 1]; optional ``features``
    {level: [B, K, h, w, C]} of the frozen backbone (then only the shape of
    ``images`` is used). Returns BaselineOutput."""
    common.check_images(images)
    common.check_choice("exchange", self.exchange, EXCHANGES)
    b, k, h, w, _ = images.shape
    feats = common.encode_group(self, images, train=train,
                                features=features)
    x = feats["stride32"]
    if self.exchange != "none":
      c = x.shape[-1]
      # Pool in float32: a bf16 mean over many pixels loses precision.
      pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).reshape(b, k, c)
      g = other_mean(pooled).reshape(b * k, 1, 1, c).astype(self.dtype)
      if self.exchange == "cat":
        x = jnp.concatenate([x, jnp.broadcast_to(g, x.shape)], axis=-1)
      else:
        x = x * g
    y = common.decode(self, x, output_size=(h, w), skips=feats, train=train)
    logits = common.mask_head(y)
    return BaselineOutput(mask_logits=logits.reshape(b, k, h, w, 1))


def build_model(model_config: ml_collections.ConfigDict,
                exchange: str) -> SiameseCoseg:
  """Builds the model from ``config.model`` (fields as SiameseCoseg's)."""
  get = model_config.get
  return SiameseCoseg(
      backbone=get("backbone", "tiny"),
      backbone_kwargs=dict(get("backbone_kwargs", None) or {}),
      backbone_eval_mode=bool(get("backbone_eval_mode", False)),
      exchange=exchange,
      decoder_widths=tuple(get("decoder_widths", (64, 32, 32, 16, 16))),
      convs_per_block=get("convs_per_block", 1),
      use_skips=get("use_skips", False),
      dtype=registry.config_dtype(get("dtype", "float32")))


def loss_fn(*, outputs: BaselineOutput, batch: Mapping[str, jax.Array],
            loss_config: Mapping[str, float]):
  """Lovász-Softmax (fg/bg) and/or pixel BCE, weighted by ``loss_config``.

  Args:
    outputs: the model output (``mask_logits`` [B, K, H, W, 1]).
    batch: needs ``masks`` [B, K, H, W, 1] {0, 1} and ``valid`` (same shape,
      0 = ignore); ``valid`` defaults to all ones.
    loss_config: term name ('lovasz', 'lovasz_image', 'bce') -> weight.

  Returns:
    (total float32 scalar, weighted terms dict).
  """
  common.check_loss_terms(loss_config, LOSS_TERMS, "the baseline methods")
  logits = outputs.mask_logits.astype(jnp.float32)
  masks = batch["masks"].astype(jnp.float32)
  valid = batch.get("valid")
  valid = jnp.ones_like(masks) if valid is None else valid.astype(jnp.float32)
  n = logits.shape[0] * logits.shape[1]
  flat_logits = logits.reshape(n, *logits.shape[2:4])
  flat_masks = masks.reshape(flat_logits.shape)
  flat_valid = valid.reshape(flat_logits.shape)
  terms = {}
  labels = jnp.where(flat_valid > 0, flat_masks, IGNORE_LABEL).astype(
      jnp.int32)
  for term, per_image in (("lovasz", False), ("lovasz_image", True)):
    if term in loss_config:
      terms[term] = losses.get_loss("lovasz_softmax_binary")(
          logits=flat_logits, labels=labels, per_image=per_image,
          ignore=IGNORE_LABEL)
  if "bce" in loss_config:
    terms["bce"] = losses.get_loss("sigmoid_bce")(
        logits=flat_logits, labels=flat_masks, valid=flat_valid)
  return losses.compute_total_loss(terms, dict(loss_config))


def _register():
  descriptions = {
      "baseline": "Siamese encoder-decoder, no exchange (CycleSegNet Table 1)",
      "mcat": "baseline + the other image's pooled feature concatenated",
      "mmul": "baseline + the other image's pooled feature multiplied",
  }
  for name, exchange in (("baseline", "none"), ("mcat", "cat"),
                         ("mmul", "mul")):
    registry.register_method(name, registry.MethodSpec(
        build_model=lambda cfg, _e=exchange: build_model(cfg, _e),
        loss_fn=loss_fn,
        default_loss={"lovasz": 1.0},
        description=descriptions[name]))


_register()
