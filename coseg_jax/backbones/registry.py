"""The backbone registry: name -> constructor (``get_backbone``)."""

from typing import Callable, Dict, Tuple

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


# Each backbone's own input mapping of images in [0, 1]: (the colour it sends
# to 0, the mapping itself). Code that blanks pixels "to the mean" (MaCoSNet's
# eq. 7 on normalised images) needs both.
_INPUT = {
    "tiny": (tiny.INPUT_MEAN, tiny.tiny_normalize),
    "resnet": (resnet.IMAGENET_MEAN, resnet.imagenet_normalize),
    "vgg": (resnet.IMAGENET_MEAN, resnet.imagenet_normalize),
    "efficientnet_lite": (efficientnet_lite.INPUT_MEAN,
                          efficientnet_lite.lite_normalize),
}


def register_backbone(name: str, constructor: Callable[..., nn.Module]):
  """Adds a backbone constructor under ``name`` (used by the family modules)."""
  _REGISTRY[name] = constructor


def _input_entry(name: str):
  _check_name(name)
  for prefix, entry in _INPUT.items():
    if name.startswith(prefix):
      return entry
  raise ValueError(f"backbone {name!r} has no registered input mapping")


def input_mean(name: str) -> Tuple[float, float, float]:
  """The colour (RGB in [0, 1]) that backbone ``name``'s input normalisation
  maps to 0: the "mean colour" of its training images."""
  return tuple(float(v) for v in _input_entry(name)[0])


def input_normalizer(name: str) -> Callable:
  """Backbone ``name``'s input mapping ``(images in [0, 1], dtype) -> x``."""
  return _input_entry(name)[1]


def _check_name(name: str):
  if name not in _REGISTRY:
    raise ValueError(
        f"unknown backbone {name!r}; available: {', '.join(available_backbones())}")


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
  _check_name(name)
  return _REGISTRY[name](**kwargs)
