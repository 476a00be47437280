"""Bilinear-upsampling convolutional decoders.

:class:`UpsampleDecoder` takes a stride-32 feature map back to full input
resolution in five blocks (stride 32 -> 16 -> 8 -> 4 -> 2 -> 1). Each block
resizes bilinearly to the next level's size, optionally concatenates the
backbone's skip feature of that level, and applies ``convs_per_block`` 3x3
conv + BatchNorm + ReLU layers.

Choices the papers leave open (CycleSegNet only says its decoder "upsamples
the refined features to the input size"; the Table 1 baselines share it):

* Bilinear resizing, half-pixel centres (``jax.image.resize``'s 'bilinear',
  the ``align_corners=False`` convention; ``coseg_jax.nn.resize``), not
  transposed convolutions: no checkerboard artefacts and no parameters spent
  on upsampling.
* Level sizes are ``ceil(H / S)`` for stride S (the backbones' convention for
  SAME-padded stride-2 convs), so any input size works and the last block
  lands exactly on (H, W).
* Skips are optional (``use_skips``) and taken from the backbone's feature
  dict by level name; a missing level is an error, never silently skipped.
* The decoder returns features; the 1x1 logit head belongs to the model.
"""

import functools
import math
from typing import Any, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from coseg_jax.nn import resize

# Output level of each of the five blocks, and its stride.
DECODER_LEVELS = (("stride16", 16), ("stride8", 8), ("stride4", 4),
                  ("stride2", 2), ("full", 1))


class ConvBNReLU(nn.Module):
  """3x3 conv (no bias) + BatchNorm + ReLU.

  Attributes:
    features: output channels.
    use_bn: BatchNorm after the conv (else the conv gets a bias).
    dtype: computation dtype (parameters stay float32).
  """
  features: int
  use_bn: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    """[N, h, w, C_in] -> [N, h, w, features]."""
    x = nn.Conv(self.features, (3, 3), use_bias=not self.use_bn,
                dtype=self.dtype)(x)
    if self.use_bn:
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                       epsilon=1e-5, dtype=self.dtype)(x)
    return nn.relu(x)


class UpsampleDecoder(nn.Module):
  """Five bilinear-upsampling + conv blocks from stride 32 to full resolution.

  Attributes:
    widths: output channels of the five blocks (strides 16, 8, 4, 2, 1).
    convs_per_block: 3x3 conv layers after each upsampling.
    use_skips: concatenate ``skips[level]`` after upsampling to that level
      (levels 'stride16', 'stride8', 'stride4', 'stride2'; the full-resolution
      block has no skip).
    use_bn: BatchNorm in the conv layers.
    dtype: computation dtype (parameters stay float32).
  """
  widths: Sequence[int] = (256, 128, 64, 32, 16)
  convs_per_block: int = 1
  use_skips: bool = False
  use_bn: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, output_size: Tuple[int, int],
               skips: Optional[Mapping[str, jax.Array]] = None,
               train: bool = False) -> jax.Array:
    """Decodes a stride-32 map.

    Args:
      x: [N, ceil(H/32), ceil(W/32), C] deepest features.
      output_size: (H, W), the input image size.
      skips: level name -> [N, ceil(H/S), ceil(W/S), C_S] when ``use_skips``.
      train: BatchNorm mode.

    Returns:
      [N, H, W, widths[-1]] features.
    """
    if len(self.widths) != len(DECODER_LEVELS):
      raise ValueError(f"UpsampleDecoder.widths needs {len(DECODER_LEVELS)} "
                       f"entries (strides 16..1), got {tuple(self.widths)}")
    if self.use_skips and skips is None:
      raise ValueError("UpsampleDecoder(use_skips=True) needs skips")
    h, w = output_size
    block = functools.partial(ConvBNReLU, use_bn=self.use_bn, dtype=self.dtype)
    x = jnp.asarray(x, self.dtype)
    for i, ((level, stride), width) in enumerate(zip(DECODER_LEVELS,
                                                    self.widths)):
      size = (math.ceil(h / stride), math.ceil(w / stride))
      x = resize.bilinear_resize(x, size)
      if self.use_skips and stride > 1:
        if level not in skips:
          raise ValueError(f"UpsampleDecoder: skip level {level!r} missing; "
                           f"got {sorted(skips)}")
        skip = jnp.asarray(skips[level], self.dtype)
        if skip.shape[1:3] != size:
          raise ValueError(f"UpsampleDecoder: skip {level!r} has spatial size "
                           f"{skip.shape[1:3]}, expected {size}")
        x = jnp.concatenate([x, skip], axis=-1)
      for j in range(self.convs_per_block):
        x = block(width, name=f"block{i}_conv{j}")(x, train=train)
    return x
