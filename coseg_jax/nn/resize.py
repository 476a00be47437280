"""Bilinear resizing of feature maps, with a fast path for upsampling.

Every decoder upsamples by whole factors (2x per level at the recipes'
sizes, 4x and 8x for CycleSegNet's priors), and ``jax.image.resize`` does
that as a dense matrix product per spatial axis: for a 2x step every output
pixel multiplies a whole row of the input axis, of which two weights are
non-zero. On XLA:CPU that dot (plus the transposes around it) was the
largest single cost of the co-attention generator's inference (about 130
ms of its 16 x 224 x 224 decoder; ``benchmarks.profile_step``).

Half-pixel bilinear upsampling by an integer factor s is a fixed stencil:
output pixel ``s * i + r`` samples input position ``i + d_r`` with
``d_r = (r + 0.5) / s - 0.5`` in (-0.5, 0.5), so it blends ``x[i]`` with
one neighbour, ``x[i - 1]`` (d_r < 0) or ``x[i + 1]`` (d_r > 0), weights
``1 - |d_r|`` and ``|d_r|``. At the borders the neighbour is the edge pixel
itself, which is what ``jax.image.resize`` (it drops out-of-range samples
and renormalises) and torch's ``align_corners=False`` do. The stencil is
element-wise, so XLA fuses it into one memory-bound loop per axis. Any
other size change (downsampling, non-integer factors) goes through
``jax.image.resize``, antialiased as its 'bilinear' method is by default.
"""

from typing import Tuple

import jax
from jax import lax
import jax.numpy as jnp


def _upsample_axis(x: jax.Array, axis: int, factor: int) -> jax.Array:
  """Half-pixel bilinear upsampling of one axis by an integer factor.

  Args:
    x: any array; ``x.shape[axis]`` = n >= 1.
    axis: the axis to upsample (non-negative).
    factor: s >= 1.

  Returns:
    x with ``shape[axis]`` = n * s, same dtype.
  """
  if factor == 1:
    return x
  n = x.shape[axis]
  edge_lo = lax.slice_in_dim(x, 0, 1, axis=axis)
  edge_hi = lax.slice_in_dim(x, n - 1, n, axis=axis)
  prev = jnp.concatenate([edge_lo, lax.slice_in_dim(x, 0, n - 1, axis=axis)],
                         axis)
  nxt = jnp.concatenate([lax.slice_in_dim(x, 1, n, axis=axis), edge_hi], axis)
  phases = []
  for r in range(factor):
    d = (r + 0.5) / factor - 0.5
    if d < 0:
      phases.append((1 + d) * x + (-d) * prev)
    elif d > 0:
      phases.append((1 - d) * x + d * nxt)
    else:  # odd factors: the centre phase samples x itself
      phases.append(x)
  # [..., n, s, ...] -> [..., n * s, ...]: phase r of pixel i lands at s*i+r.
  y = jnp.stack(phases, axis=axis + 1)
  return y.reshape(x.shape[:axis] + (n * factor,) + x.shape[axis + 1:])


def bilinear_resize(x: jax.Array, size: Tuple[int, int]) -> jax.Array:
  """Resizes [N, h, w, C] to [N, size[0], size[1], C] (half-pixel bilinear).

  Equal to ``jax.image.resize(x, (N, *size, C), 'bilinear')`` (to float
  rounding); integer upsampling factors on both axes take the stencil path
  described in the module docstring.

  Args:
    x: [N, h, w, C] features, any float dtype.
    size: (H, W) output spatial size.

  Returns:
    [N, H, W, C], x's dtype.
  """
  n, h, w, c = x.shape
  out_h, out_w = int(size[0]), int(size[1])
  if (out_h, out_w) == (h, w):
    return x
  if out_h % h == 0 and out_w % w == 0:
    x = _upsample_axis(x, 1, out_h // h)
    return _upsample_axis(x, 2, out_w // w)
  return jax.image.resize(x, (n, out_h, out_w, c), method="bilinear")
