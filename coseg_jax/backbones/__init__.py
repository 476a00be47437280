"""Backbones: ResNet, VGG, EfficientNet-Lite0/1/2 and a tiny test CNN.

``get_backbone(name, **kwargs)`` is the one entry point; see ``base`` for the
output type and the feature naming scheme shared by every family, and
``weights`` for importing torchvision / efficientnet_pytorch checkpoints
(``load_pretrained(name, path, **kwargs)``).
"""

from typing import Any, Callable, Dict, Mapping, Optional

import flax.linen as nn
import jax

from coseg_jax.backbones import base
from coseg_jax.backbones import efficientnet_lite
from coseg_jax.backbones import resnet
from coseg_jax.backbones import tiny
from coseg_jax.backbones import vgg
from coseg_jax.backbones import weights
from coseg_jax.backbones.weights import find_lite_weights
from coseg_jax.backbones.weights import load_pretrained
from coseg_jax.backbones.weights import WeightsError
from coseg_jax.backbones.base import BackboneOutput, FEATURE_LEVELS

_REGISTRY: Dict[str, Callable[..., nn.Module]] = {
    "tiny": tiny.TinyCNN,
    "resnet18": resnet.resnet18,
    "resnet34": resnet.resnet34,
    "resnet50": resnet.resnet50,
    "resnet101": resnet.resnet101,
    "vgg16": vgg.vgg16,
    "vgg16_bn": vgg.vgg16_bn,
    "efficientnet_lite0": efficientnet_lite.efficientnet_lite0,
    "efficientnet_lite1": efficientnet_lite.efficientnet_lite1,
    "efficientnet_lite2": efficientnet_lite.efficientnet_lite2,
}


def register_backbone(name: str, constructor: Callable[..., nn.Module]):
  """Adds a backbone constructor under ``name`` (used by the family modules)."""
  _REGISTRY[name] = constructor


def available_backbones():
  return sorted(_REGISTRY)


def get_backbone(name: str, **kwargs) -> nn.Module:
  """Returns the backbone module registered under ``name``.

  Args:
    name: one of ``available_backbones()``.
    **kwargs: module attributes (``dtype``, ``truncate_at``, ...).

  Raises:
    ValueError: for an unknown name, listing the known ones.
  """
  if name not in _REGISTRY:
    raise ValueError(
        f"unknown backbone {name!r}; available: {', '.join(available_backbones())}")
  return _REGISTRY[name](**kwargs)


def group_features(parent: nn.Module, name: str, images: jax.Array, *,
                   train: bool, dtype: Any,
                   kwargs: Optional[Mapping[str, Any]] = None,
                   eval_mode: bool = False) -> Dict[str, jax.Array]:
  """Siamese encoding: one backbone, shared by every image of every group.

  Call it from ``parent``'s compact method. The backbone becomes ``parent``'s
  submodule ``'backbone'``, the name that weight loading
  (``init.backbone_weights``) and ``init.from_checkpoint`` rely on; the K
  images of a group are folded into the batch axis.

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

  Returns:
    The backbone's features {level: [B * K, h, w, C]}.
  """
  b, k, h, w, c = images.shape
  # get_backbone's first argument is called `name`, so the submodule name is
  # set by cloning.
  encoder = get_backbone(name, dtype=dtype, **dict(kwargs or {})).clone(
      parent=parent, name="backbone")
  return encoder(images.reshape(b * k, h, w, c),
                 train=train and not eval_mode).features
