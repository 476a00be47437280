"""Dense category pre-training of an encoder on the training masks.

The papers' encoders start from ImageNet: their features already say *what*
a region is, so a co-segmentation head only has to learn which of those
things two images share. A backbone trained from scratch (the tiny CPU
encoder of the offline demo, or any backbone without released weights) has
no such start, and co-segmentation training alone does not give it one: on
the demo's synthetic pairs the encoder learns single-image cues (size,
stacking order) instead of appearance that can be matched
(the demo's record in docs/notes/lab_notebook.md).

This method is the stand-in: the encoder plus one 1x1 convolution per level,
trained to name the category of every pixel *inside the common-object mask*
with the group's class label. Pixels outside the mask are ignored: they hold
background and, in co-segmentation data, objects of other categories that
are not labelled, so calling them "background" would teach the encoder that
the same appearance is an object in one image and not in another. It uses
only what the co-segmentation training set already has (masks and the class
of each group) and never the test split.

Method ``dense_category`` (registered here):

* model :class:`DenseCategoryNet`: images [B, K, H, W, 3] in [0, 1] ->
  ``category_logits`` [B, K, H, W, C], the sum over ``levels`` of a 1x1 conv
  of each level's features, bilinearly upsampled to the input size (the
  FCN-style sum, so every level the co-segmentation model refines gets a
  direct signal). Its parameters are ``backbone`` (named as in every
  co-segmentation model, so ``config.init.from_checkpoint`` copies exactly the
  encoder) and ``category_<level>``.
* loss term ``category``: :func:`masked_category_loss`.

It predicts categories, not masks: evaluation and prediction refuse it.
``coseg_jax.encoder_pretrain`` runs it as the first stage of a
co-segmentation run (``config.pretrain_encoder``).
"""

from typing import Any, Mapping, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from coseg_jax import backbones
from coseg_jax import losses
from coseg_jax.models import registry
from coseg_jax.nn import resize

DEFAULT_LEVELS = ("stride8", "stride16", "stride32")


@flax.struct.dataclass
class DenseCategoryOutput:
  """Output of :class:`DenseCategoryNet`.

  Attributes:
    category_logits: [B, K, H, W, C] float32 per-pixel class logits.
    mask_logits: None (the model contract's field; this method has no masks).
  """
  category_logits: jax.Array
  mask_logits: Optional[jax.Array] = None


class DenseCategoryNet(nn.Module):
  """Backbone + per-level 1x1 class heads, summed at input resolution.

  Attributes:
    num_classes: C, the data set's number of classes.
    backbone: name for ``coseg_jax.backbones.get_backbone``.
    backbone_kwargs: its keyword arguments (as the co-segmentation model's).
    backbone_eval_mode: run the backbone in evaluation mode during training
      too (``backbones.group_features``); for a frozen encoder.
    levels: backbone feature levels with a head.
    dtype: computation dtype (logits are float32).
  """
  num_classes: int
  backbone: str = "tiny"
  backbone_kwargs: Optional[Mapping[str, Any]] = None
  backbone_eval_mode: bool = False
  levels: Sequence[str] = DEFAULT_LEVELS
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False
               ) -> DenseCategoryOutput:
    if images.ndim != 5 or images.shape[-1] != 3:
      raise ValueError(f"DenseCategoryNet expects images [B, K, H, W, 3], "
                       f"got {images.shape}")
    if self.num_classes < 2:
      raise ValueError(f"DenseCategoryNet.num_classes must be >= 2, got "
                       f"{self.num_classes}")
    b, k, h, w, _ = images.shape
    feats = backbones.group_features(self, self.backbone, images, train=train,
                                     dtype=self.dtype,
                                     kwargs=self.backbone_kwargs,
                                     eval_mode=self.backbone_eval_mode)
    total = 0.0
    for level in self.levels:
      if level not in feats:
        raise ValueError(f"backbone {self.backbone!r} returned no {level!r} "
                         f"features (got {sorted(feats)})")
      z = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype,
                  name=f"category_{level}")(feats[level])
      total = total + resize.bilinear_resize(z.astype(jnp.float32), (h, w))
    return DenseCategoryOutput(
        category_logits=total.reshape(b, k, h, w, self.num_classes))


def masked_category_loss(logits: jax.Array, class_ids: jax.Array,
                         masks: jax.Array,
                         valid: Optional[jax.Array] = None) -> jax.Array:
  """Mean softmax cross-entropy over the pixels inside the masks.

  Args:
    logits: [B, K, H, W, C] class logits.
    class_ids: [B, K] int class of each image's common object; images with
      a negative id (no label) are ignored.
    masks: [B, K, H, W] or [B, K, H, W, 1], 1 inside the common object.
    valid: optional, same shape as ``masks``; 0 marks padding.

  Returns:
    float32 scalar: the mean over weighted pixels (0 when there are none).
  """
  lead = logits.shape[:4]
  weight = masks.reshape(lead).astype(jnp.float32)
  if valid is not None:
    weight = weight * valid.reshape(lead).astype(jnp.float32)
  weight = weight * (class_ids >= 0)[:, :, None, None]
  labels = jnp.broadcast_to(jnp.maximum(class_ids, 0)[:, :, None, None], lead)
  ce = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels)
  return jnp.sum(ce * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def loss_fn(*, outputs: DenseCategoryOutput, batch, loss_config):
  """Term ``category``: :func:`masked_category_loss` on the batch."""
  terms = {"category": masked_category_loss(
      outputs.category_logits, batch["class_ids"], batch["masks"],
      batch.get("valid"))}
  return losses.compute_total_loss(terms, dict(loss_config))


def build_model(model_config: ml_collections.ConfigDict) -> DenseCategoryNet:
  """``config.model`` -> :class:`DenseCategoryNet` (needs ``num_classes``)."""
  get = model_config.get
  if not get("num_classes"):
    raise ValueError("config.model.num_classes must be set for method "
                     "'dense_category' (the data set's number of classes)")
  return DenseCategoryNet(
      num_classes=int(model_config.num_classes),
      backbone=get("backbone", "tiny"),
      backbone_kwargs=dict(get("backbone_kwargs") or {}),
      backbone_eval_mode=bool(get("backbone_eval_mode", False)),
      levels=tuple(get("levels") or DEFAULT_LEVELS),
      dtype=jnp.dtype(get("dtype", "float32")))


def _no_masks(**unused_kwargs):
  raise ValueError(
      "method 'dense_category' predicts categories, not masks: it is an "
      "encoder pre-training stage (config.pretrain_encoder) and cannot be "
      "evaluated or used for prediction")


registry.register_method("dense_category", registry.MethodSpec(
    build_model=build_model,
    loss_fn=loss_fn,
    predict_fn=_no_masks,
    default_loss={"category": 1.0},
    description="encoder pre-training: per-pixel class of the common-object "
                "mask (stand-in for ImageNet weights)"))
