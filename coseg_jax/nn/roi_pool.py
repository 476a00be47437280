"""Adaptive ROI pooling of a feature map to a fixed grid (average and max).

CycleSegNet's Region Correspondence Module summarises the other image by
pooling its feature map to a small grid of regions (2x2 in the paper). The
feature map rarely divides evenly (e.g. 15x15 to 2x2), so we follow the bin
edges of torch's ``AdaptiveAvgPool2d`` / ``AdaptiveMaxPool2d``: output cell
``i`` of ``n`` over an input axis of length ``L`` covers
``[floor(i * L / n), ceil((i + 1) * L / n))``. Bins may overlap by one pixel
when ``n`` does not divide ``L``; every pixel is in at least one bin.

Implementation: a static boolean membership matrix per axis ([n, L], built
with NumPy from the static shapes) turns average pooling into two small
matrix products and max pooling into two masked reductions. Because the bins
are a Cartesian product of row and column bins, both reductions are
separable. There are no Python loops over pixels and everything is
jit/vmap/grad safe (the max gradient flows to the arg-max like
``jnp.max``).
"""

from typing import Sequence, Tuple

import jax.numpy as jnp
import numpy as np


def adaptive_bin_edges(in_size: int, out_size: int) -> Tuple[np.ndarray,
                                                              np.ndarray]:
  """Torch adaptive-pooling bin edges along one axis.

  Args:
    in_size: input length L (> 0).
    out_size: number of bins n (> 0).

  Returns:
    (starts, ends), int arrays of shape [n]; bin i is [starts[i], ends[i]).
  """
  if in_size <= 0 or out_size <= 0:
    raise ValueError(
        f"adaptive pooling needs positive sizes, got in_size={in_size}, "
        f"out_size={out_size}")
  i = np.arange(out_size)
  starts = (i * in_size) // out_size
  ends = -((-(i + 1) * in_size) // out_size)  # ceil division on integers
  return starts, ends


def bin_membership(in_size: int, out_size: int) -> np.ndarray:
  """Boolean [out_size, in_size] matrix: entry (i, p) says pixel p is in bin i."""
  starts, ends = adaptive_bin_edges(in_size, out_size)
  p = np.arange(in_size)
  return (p[None, :] >= starts[:, None]) & (p[None, :] < ends[:, None])


def _check(x, output_size) -> Tuple[int, int]:
  if x.ndim != 4:
    raise ValueError(
        f"roi pooling expects features [B, H, W, C], got shape {x.shape}")
  if isinstance(output_size, int):
    output_size = (output_size, output_size)
  if len(output_size) != 2:
    raise ValueError(f"output_size must be an int or (h, w), got {output_size}")
  return int(output_size[0]), int(output_size[1])


def adaptive_avg_pool(x: jnp.ndarray,
                      output_size: Sequence[int] | int) -> jnp.ndarray:
  """Adaptive average pooling (torch ``AdaptiveAvgPool2d`` bins).

  Args:
    x: features [B, H, W, C].
    output_size: (h, w) or an int for a square grid.

  Returns:
    [B, h, w, C], same dtype as ``x``; each cell is the mean of its bin.
  """
  oh, ow = _check(x, output_size)
  _, h, w, _ = x.shape
  mh = bin_membership(h, oh).astype(np.float32)
  mw = bin_membership(w, ow).astype(np.float32)
  # Normalise the rows so that the product is a mean, not a sum.
  mh = jnp.asarray(mh / mh.sum(1, keepdims=True), x.dtype)
  mw = jnp.asarray(mw / mw.sum(1, keepdims=True), x.dtype)
  return jnp.einsum("ih,bhwc,jw->bijc", mh, x, mw)


def adaptive_max_pool(x: jnp.ndarray,
                      output_size: Sequence[int] | int) -> jnp.ndarray:
  """Adaptive max pooling (torch ``AdaptiveMaxPool2d`` bins).

  Args:
    x: features [B, H, W, C].
    output_size: (h, w) or an int for a square grid.

  Returns:
    [B, h, w, C]; each cell is the maximum over its bin.
  """
  oh, ow = _check(x, output_size)
  _, h, w, _ = x.shape
  mh = jnp.asarray(bin_membership(h, oh))
  mw = jnp.asarray(bin_membership(w, ow))
  neg = jnp.array(-jnp.inf, x.dtype)
  # Rows first: [B, h_out, H, W, C] masked, reduce over H.
  rows = jnp.max(jnp.where(mh[None, :, :, None, None], x[:, None], neg), axis=2)
  # Then columns: [B, h_out, w_out, W, C] masked, reduce over W.
  return jnp.max(jnp.where(mw[None, None, :, :, None], rows[:, :, None], neg),
                 axis=3)


def roi_pool(x: jnp.ndarray, output_size: Sequence[int] | int, *,
             mode: str = "avg") -> jnp.ndarray:
  """Dispatches to adaptive average ('avg') or max ('max') pooling."""
  if mode == "avg":
    return adaptive_avg_pool(x, output_size)
  if mode == "max":
    return adaptive_max_pool(x, output_size)
  raise ValueError(f"roi_pool mode must be 'avg' or 'max', got {mode!r}")
