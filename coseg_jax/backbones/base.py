"""Common types for backbones.

Every backbone is a Flax Linen module called as
``module.apply(variables, images, train=False)`` on images float in [0, 1] of
shape [N, H, W, 3] (channels-last). It applies its own input normalisation and
returns a :class:`BackboneOutput`.

Feature naming (one scheme for every family): ``features['strideS']`` is the
deepest feature map whose spatial size is ceil(H / S) x ceil(W / S), for S in
``FEATURE_LEVELS`` = (2, 4, 8, 16, 32). With an output stride below 32
(dilation), the levels past it keep their names but stay at the output stride.

Per family (details in each module's docstring; EfficientNet-Lite1/2: blocks
0, 3, 6, 14, with 48 / 120 channels at stride 8 / 16 for Lite2):

  level     ResNet (torchvision)   VGG16(-BN)            EfficientNet-Lite0
  stride2   stem conv+BN+ReLU      relu2_2 (128)         block 0 (16)
  stride4   layer1                 relu3_3 (256)         block 2 (24)
  stride8   layer2                 relu4_3 (512)         block 4 (40)
  stride16  layer3                 relu5_3 (512)         block 10 (112)
  stride32  layer4                 pool5 (512)           head conv 1280

VGG's max-pools floor like torch's, so its sizes are floor(H/S): equal to
ceil(H/S) for sizes that are multiples of 32. Each backbone returns the
levels up to ``truncate_at``; with ``with_head`` it also returns ImageNet
logits (torchvision / efficientnet_pytorch heads), and ``pooled`` is the
vector its classifier reads.
"""

from typing import Dict, Optional

import flax
import jax

FEATURE_LEVELS = ("stride2", "stride4", "stride8", "stride16", "stride32")


@flax.struct.dataclass
class BackboneOutput:
  """What every backbone returns.

  Attributes:
    features: dict level name -> feature map [N, h, w, C_level] (see module
      docstring for the naming scheme). Only levels up to ``truncate_at``.
    pooled: [N, C] global average of the deepest returned feature map (for a
      classifier backbone: the vector its last fully connected layer reads;
      2048-d for ResNet-50, 1280-d for EfficientNet-Lite0, 4096-d fc7 for VGG
      when ``with_head``).
    logits: [N, 1000] ImageNet logits when the backbone was built with
      ``with_head=True``, else None.
  """
  features: Dict[str, jax.Array]
  pooled: Optional[jax.Array] = None
  logits: Optional[jax.Array] = None


def check_level(name: str) -> str:
  if name not in FEATURE_LEVELS:
    raise ValueError(
        f"unknown feature level {name!r}; expected one of {FEATURE_LEVELS}")
  return name


def check_call(backbone, images, *, head_needs_stride32: bool = False) -> str:
  """Checks a backbone's settings and input; returns its last level.

  Args:
    backbone: the module (``truncate_at``, ``output_stride``, ``with_head``).
    images: its input, [N, H, W, 3].
    head_needs_stride32: the classifier also needs output stride 32 (VGG).
  """
  last = check_level(backbone.truncate_at or FEATURE_LEVELS[-1])
  if backbone.output_stride not in (8, 16, 32):
    raise ValueError(f"output_stride must be 8, 16 or 32, got "
                     f"{backbone.output_stride}")
  if head_needs_stride32:
    if backbone.with_head and (last != "stride32"
                               or backbone.output_stride != 32):
      raise ValueError("with_head=True needs the full network at output "
                       "stride 32")
  elif backbone.with_head and last != "stride32":
    raise ValueError("with_head=True needs the full network (truncate_at "
                     f"is {backbone.truncate_at!r})")
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must be [N, H, W, 3], got {images.shape}")
  return last
