"""Backbones: ResNet, VGG, EfficientNet-Lite0/1/2 and a tiny test CNN.

``get_backbone(name, **kwargs)`` is the one entry point; see ``base`` for the
output type and the feature naming scheme shared by every family, and
``weights`` for importing torchvision / efficientnet_pytorch checkpoints
(``load_pretrained(name, path, **kwargs)``).
"""

from typing import Any, Dict, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from coseg_jax.backbones import base
from coseg_jax.backbones import registry
from coseg_jax.backbones import weights
from coseg_jax.backbones.base import BackboneOutput
from coseg_jax.backbones.base import FEATURE_LEVELS
from coseg_jax.backbones.registry import available_backbones
from coseg_jax.backbones.registry import get_backbone
from coseg_jax.backbones.registry import input_mean
from coseg_jax.backbones.registry import input_normalizer
from coseg_jax.backbones.registry import register_backbone
from coseg_jax.backbones.weights import find_lite_weights
from coseg_jax.backbones.weights import load_pretrained
from coseg_jax.backbones.weights import WeightsError


def group_features(parent: nn.Module, name: str, images: jax.Array, *,
                   train: bool, dtype: Any,
                   kwargs: Optional[Mapping[str, Any]] = None,
                   eval_mode: bool = False,
                   features: Optional[Mapping[str, jax.Array]] = None
                   ) -> Dict[str, jax.Array]:
  """Siamese encoding: one backbone, shared by every image of every group.

  Call it from ``parent``'s compact method. The backbone becomes ``parent``'s
  submodule ``'backbone'``, the name that weight loading
  (``init.backbone_weights``) and ``init.from_checkpoint`` rely on; the K
  images of a group are folded into the batch axis.

  With ``features`` (precomputed outputs of this frozen backbone, e.g. from
  the frozen-encoder feature cache), the backbone is not run: the given
  levels are returned, folded like the backbone's own output.

  Args:
    parent: the model module calling it.
    name: backbone name for :func:`get_backbone`.
    images: [B, K, H, W, 3] in [0, 1].
    train: BatchNorm in training mode.
    dtype: computation dtype.
    kwargs: further backbone attributes (``widths``, ``truncate_at``...).
    eval_mode: run the backbone as at evaluation even when ``train``:
      BatchNorm on its running statistics (which then stay as loaded) and no
      dropout. The usual setting for a frozen pretrained encoder, whose
      features would otherwise depend on the other images of the batch and
      on drop-connect noise.
    features: optional {level: [B, K, h, w, C]} to use instead of running
      the backbone (``images`` then only gives B and K).

  Returns:
    The backbone's features {level: [B * K, h, w, C]}.
  """
  b, k, h, w, c = images.shape
  if features is not None:
    out = {}
    for level, x in features.items():
      if tuple(x.shape[:2]) != (b, k):
        raise ValueError(f"features[{level!r}] has shape {x.shape}; expected "
                         f"[{b}, {k}, h, w, C] for images {images.shape}")
      out[level] = jnp.asarray(x, dtype).reshape(b * k, *x.shape[2:])
    return out
  # get_backbone's first argument is called `name`, so the submodule name is
  # set by cloning.
  encoder = get_backbone(name, dtype=dtype, **dict(kwargs or {})).clone(
      parent=parent, name="backbone")
  return encoder(images.reshape(b * k, h, w, c),
                 train=train and not eval_mode).features
