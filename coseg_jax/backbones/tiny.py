"""A small randomly initialised CNN backbone for tests, demos and CPU runs.

Five stages of (3x3 conv stride 2, BatchNorm, ReLU, 3x3 conv, BatchNorm, ReLU)
with ``widths`` channels, one per stride 2..32. It has no pretrained weights;
it exists so that every model and the training runtime can be exercised in
seconds on a CPU with the same interface as the ImageNet backbones.
"""

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from coseg_jax.backbones import base

# The colour that ``tiny_normalize`` sends to 0 (per channel).
INPUT_MEAN = (0.5, 0.5, 0.5)


def tiny_normalize(images, dtype):
  """[N, H, W, 3] in [0, 1] -> (x - 0.5) / 0.25, as ``dtype``."""
  return (jnp.asarray(images, dtype) - 0.5) / 0.25


class TinyCNN(nn.Module):
  """Five-stage plain CNN with the standard backbone interface.

  Attributes:
    widths: channels at strides 2, 4, 8, 16, 32.
    truncate_at: last feature level to compute (e.g. 'stride16').
    dtype: computation dtype (parameters stay float32).
  """
  widths: Sequence[int] = (8, 16, 32, 64, 64)
  truncate_at: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False) -> base.BackboneOutput:
    """Args: images [N, H, W, 3] in [0, 1]. Returns a BackboneOutput."""
    last = base.check_level(self.truncate_at or base.FEATURE_LEVELS[-1])
    conv = functools.partial(nn.Conv, kernel_size=(3, 3), use_bias=False,
                             dtype=self.dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=0.9, epsilon=1e-5, dtype=self.dtype)
    x = tiny_normalize(images, self.dtype)
    features = {}
    for level, width in zip(base.FEATURE_LEVELS, self.widths):
      x = nn.relu(norm(name=f"{level}_bn1")(
          conv(width, strides=(2, 2), name=f"{level}_conv1")(x)))
      x = nn.relu(norm(name=f"{level}_bn2")(
          conv(width, name=f"{level}_conv2")(x)))
      features[level] = x
      if level == last:
        break
    return base.BackboneOutput(features=features,
                               pooled=jnp.mean(x, axis=(1, 2)))
