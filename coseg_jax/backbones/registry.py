"""The backbone registry: name -> constructor (``get_backbone``)."""

from typing import Callable, Dict

import flax.linen as nn

from coseg_jax.backbones import efficientnet_lite
from coseg_jax.backbones import resnet
from coseg_jax.backbones import tiny
from coseg_jax.backbones import vgg

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
