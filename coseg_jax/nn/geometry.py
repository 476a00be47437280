"""Affine and thin-plate-spline geometry with CNNGeo's conventions.

Coordinates are normalised to [-1, 1] and always ordered (x, y): x runs along
the width (columns), y along the height (rows); (-1, -1) is the centre of the
top-left pixel and (1, 1) the centre of the bottom-right one (``align_corners``
= True, the convention CNNGeo, weakalign and MaCoSNet sample with).

**Direction.** Every ``theta`` here describes a *backward* (pull) mapping, as
in CNNGeo: the sampling grid for an output of size (h, w) holds, for each output
pixel q, the input location T(q) the output pixel is read from, and
``warp(image, theta)[q] = image(T(q))``. :func:`transform_points` applies the
same T, so it maps points of the *output* (warped, target) frame to the *input*
(source) frame. In MaCoSNet / CNNGeo terms, ``theta_AB`` "warps image A to
align with image B": T_AB maps a point of B to its match in A, which is how
CNNGeo's PCK evaluation transforms the *target* keypoints. To push source points
forward through an affine map use :func:`invert_affine`.

**Affine.** ``theta`` [B, 6] is the row-major 2x3 matrix
[[a, b, tx], [c, d, ty]] applied to (x, y, 1): x' = a x + b y + tx, y' = c x +
d y + ty, identical to ``torch.nn.functional.affine_grid(theta.view(-1, 2, 3),
align_corners=True)`` used by CNNGeo's ``AffineGridGen``. Identity:
[1, 0, 0, 0, 1, 0].

**TPS.** As CNNGeo's ``TpsGridGen`` with a 3x3 regular grid of control points
P_i on linspace(-1, 1, 3). Their order comes from ``P_Y, P_X =
meshgrid(axis, axis)`` flattened row-major, so the *x* coordinate is the slow
index: P = (-1,-1), (-1,0), (-1,1), (0,-1), ..., (1,1) as (x, y). ``theta``
[B, 18] holds the target control points Q_i: 9 X coordinates then 9 Y
coordinates; the identity is theta = [P_X ; P_Y] =
[-1,-1,-1,0,0,0,1,1,1, -1,0,1,-1,0,1,-1,0,1]. The spline interpolates
P_i -> Q_i: with K_ij = U(|P_i - P_j|), U(r) = r^2 log r^2 (U(0) = 0), P~ =
[1, x_i, y_i] and L = [[K, P~], [P~^T, 0]], the weights [W; A] = L^-1 [Q; 0]
(CNNGeo multiplies by the first N columns of L^-1 only, which is the same
thing), and T(p) = A_0 + A_1 x + A_2 y + sum_i W_i U(|p - P_i|) per
coordinate. CNNGeo's ``reg_factor`` is 0; none is offered here.

**Affine + TPS** (``kind='affine_tps'``, theta [B, 24] = concat(affine 6,
TPS 18)). MaCoSNet/weakalign's two-stage model: the affine stage warps A to
A' ~ B, the TPS stage is then estimated between A' and B. The composed
sampling grid is weakalign's ``ComposedGeometricTnf``: the affine sampling grid
(2 channels) is itself bilinearly sampled at the TPS grid locations
(align_corners=True, 'border' padding), i.e. T(q) = T_aff(T_tps(q)). For a TPS
point inside [-1, 1]^2 that equals the analytic composition exactly (bilinear
interpolation reproduces an affine function), which is what
:func:`transform_points` returns; outside, the grid version clamps to the
border of the affine grid while the point version extrapolates.

:func:`grid_sample` reproduces ``torch.nn.functional.grid_sample`` (bilinear,
'zeros' or 'border' padding, both ``align_corners`` conventions), channels-last.
All functions are pure jnp: jit, vmap and grad safe.
"""

import functools
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("affine", "tps", "affine_tps")
THETA_DIMS = {"affine": 6, "tps": 18, "affine_tps": 24}
AFFINE_IDENTITY = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], np.float32)
TPS_GRID_SIZE = 3


def _tps_control_points(grid_size: int = TPS_GRID_SIZE) -> np.ndarray:
  """CNNGeo's control points P [N, 2] (x, y), x the slow index."""
  axis = np.linspace(-1.0, 1.0, grid_size)
  p_y, p_x = np.meshgrid(axis, axis)
  return np.stack([p_x.reshape(-1), p_y.reshape(-1)], axis=-1)


TPS_IDENTITY = np.concatenate(
    [_tps_control_points()[:, 0], _tps_control_points()[:, 1]]).astype(
        np.float32)
AFFINE_TPS_IDENTITY = np.concatenate([AFFINE_IDENTITY, TPS_IDENTITY])


@functools.lru_cache(maxsize=None)
def _tps_l_inverse(grid_size: int = TPS_GRID_SIZE) -> np.ndarray:
  """Inverse of the TPS system matrix L [(N+3), (N+3)], float64 constant."""
  p = _tps_control_points(grid_size)
  n = p.shape[0]
  d2 = np.sum((p[:, None, :] - p[None, :, :]) ** 2, axis=-1)
  d2_safe = np.where(d2 == 0, 1.0, d2)
  k = d2_safe * np.log(d2_safe)
  p_tilde = np.concatenate([np.ones((n, 1)), p], axis=1)
  l = np.zeros((n + 3, n + 3))
  l[:n, :n] = k
  l[:n, n:] = p_tilde
  l[n:, :n] = p_tilde.T
  return np.linalg.inv(l)


def identity_theta(kind: str, batch: int = 1) -> jax.Array:
  """The identity parameters of ``kind``, shape [batch, THETA_DIMS[kind]]."""
  _check_kind(kind)
  ident = {"affine": AFFINE_IDENTITY, "tps": TPS_IDENTITY,
           "affine_tps": AFFINE_TPS_IDENTITY}[kind]
  return jnp.tile(jnp.asarray(ident)[None], (batch, 1))


def _check_kind(kind: str):
  if kind not in KINDS:
    raise ValueError(f"geometry kind must be one of {KINDS}, got {kind!r}")


def _check_theta(theta, kind: str):
  _check_kind(kind)
  if theta.ndim != 2 or theta.shape[-1] != THETA_DIMS[kind]:
    raise ValueError(
        f"theta for kind={kind!r} must have shape [B, {THETA_DIMS[kind]}], "
        f"got {theta.shape}")


def _check_points(points):
  if points.ndim != 3 or points.shape[-1] != 2:
    raise ValueError(f"points must have shape [B, N, 2] (x, y), got "
                     f"{points.shape}")


def base_grid(out_size: Sequence[int], dtype=jnp.float32) -> jax.Array:
  """Regular output grid, align_corners=True convention.

  Args:
    out_size: (h, w).
    dtype: array dtype.

  Returns:
    [h, w, 2] with grid[i, j] = (x_j, y_i), x = linspace(-1, 1, w),
    y = linspace(-1, 1, h).
  """
  h, w = out_size
  xs = jnp.linspace(-1.0, 1.0, w, dtype=dtype)
  ys = jnp.linspace(-1.0, 1.0, h, dtype=dtype)
  gx, gy = jnp.meshgrid(xs, ys)
  return jnp.stack([gx, gy], axis=-1)


def affine_points(*, points: jax.Array, theta: jax.Array) -> jax.Array:
  """Applies affine theta [B, 6] to points [B, ..., 2] (x, y)."""
  m = theta.reshape(theta.shape[0], 2, 3)
  bshape = (theta.shape[0],) + (1,) * (points.ndim - 2)
  a, b, tx = [m[:, 0, i].reshape(bshape) for i in range(3)]
  c, d, ty = [m[:, 1, i].reshape(bshape) for i in range(3)]
  x, y = points[..., 0], points[..., 1]
  return jnp.stack([a * x + b * y + tx, c * x + d * y + ty], axis=-1)


def tps_points(*, points: jax.Array, theta: jax.Array) -> jax.Array:
  """Applies TPS theta [B, 18] (target control points) to points [B, ..., 2]."""
  ctrl = jnp.asarray(_tps_control_points(), theta.dtype)  # [N, 2]
  n = ctrl.shape[0]
  li = jnp.asarray(_tps_l_inverse()[:, :n], theta.dtype)  # [N+3, N]
  q = jnp.stack([theta[:, :n], theta[:, n:]], axis=-1)  # [B, N, 2]
  coeffs = jnp.einsum("kn,bnc->bkc", li, q)  # [B, N+3, 2]
  w, a = coeffs[:, :n], coeffs[:, n:]
  batch = theta.shape[0]
  flat = points.reshape(batch, -1, 2)
  d2 = jnp.sum((flat[:, :, None, :] - ctrl) ** 2, axis=-1)  # [B, M, N]
  # Double where: U(0) = 0 with a finite (zero) gradient at the control points.
  safe = jnp.where(d2 == 0, 1.0, d2)
  u = jnp.where(d2 == 0, 0.0, safe * jnp.log(safe))
  affine = (a[:, None, 0, :] + flat[..., 0:1] * a[:, None, 1, :] +
            flat[..., 1:2] * a[:, None, 2, :])
  out = affine + jnp.einsum("bmn,bnc->bmc", u, w)
  return out.reshape(points.shape)


def transform_points(*, points: jax.Array, theta: jax.Array,
                     kind: str) -> jax.Array:
  """Maps normalised points exactly as the sampling grid of ``theta`` does.

  Direction: output (warped / target) frame -> input (source) frame; see the
  module docstring. For 'affine_tps' this is T_aff(T_tps(p)).

  Args:
    points: [B, N, 2] (x, y) in normalised coordinates.
    theta: [B, THETA_DIMS[kind]].
    kind: 'affine', 'tps' or 'affine_tps'.

  Returns:
    [B, N, 2] transformed points.
  """
  _check_theta(theta, kind)
  _check_points(points)
  if kind == "affine":
    return affine_points(points=points, theta=theta)
  if kind == "tps":
    return tps_points(points=points, theta=theta)
  mid = tps_points(points=points, theta=theta[:, 6:])
  return affine_points(points=mid, theta=theta[:, :6])


def affine_grid(*, theta: jax.Array, out_size: Sequence[int]) -> jax.Array:
  """CNNGeo ``AffineGridGen``: theta [B, 6] -> grid [B, h, w, 2] (x, y)."""
  _check_theta(theta, "affine")
  grid = base_grid(out_size, theta.dtype)
  return affine_points(points=jnp.broadcast_to(
      grid, (theta.shape[0],) + grid.shape), theta=theta)


def tps_grid(*, theta: jax.Array, out_size: Sequence[int]) -> jax.Array:
  """CNNGeo ``TpsGridGen``: theta [B, 18] -> grid [B, h, w, 2] (x, y)."""
  _check_theta(theta, "tps")
  grid = base_grid(out_size, theta.dtype)
  return tps_points(points=jnp.broadcast_to(
      grid, (theta.shape[0],) + grid.shape), theta=theta)


def sampling_grid(*, theta: jax.Array, kind: str,
                  out_size: Sequence[int]) -> jax.Array:
  """Sampling grid [B, h, w, 2] (x, y) for ``theta`` of ``kind``.

  For 'affine_tps' the affine grid is sampled at the TPS grid locations with
  'border' padding and align_corners=True (weakalign's composition).
  """
  _check_theta(theta, kind)
  if kind == "affine":
    return affine_grid(theta=theta, out_size=out_size)
  if kind == "tps":
    return tps_grid(theta=theta, out_size=out_size)
  aff = affine_grid(theta=theta[:, :6], out_size=out_size)
  tps = tps_grid(theta=theta[:, 6:], out_size=out_size)
  return grid_sample(image=aff, grid=tps, align_corners=True,
                     padding="border")


def _unnormalize(coord, size: int, align_corners: bool):
  if align_corners:
    return (coord + 1.0) * 0.5 * (size - 1)
  return ((coord + 1.0) * size - 1.0) * 0.5


def _sample_one(image, ix, iy, padding: str):
  """Bilinear sampling of one image [H, W, C] at pixel coords ix, iy [h, w]."""
  height, width = image.shape[0], image.shape[1]
  if padding == "border":
    ix = jnp.clip(ix, 0.0, width - 1.0)
    iy = jnp.clip(iy, 0.0, height - 1.0)
  x0 = jnp.floor(ix)
  y0 = jnp.floor(iy)
  wx1 = ix - x0
  wy1 = iy - y0
  out = 0.0
  for dy, wy in ((0, 1.0 - wy1), (1, wy1)):
    for dx, wx in ((0, 1.0 - wx1), (1, wx1)):
      xi = (x0 + dx).astype(jnp.int32)
      yi = (y0 + dy).astype(jnp.int32)
      valid = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
      vals = image[jnp.clip(yi, 0, height - 1), jnp.clip(xi, 0, width - 1)]
      weight = jnp.where(valid, wx * wy, 0.0)
      out = out + vals.astype(weight.dtype) * weight[..., None]
  return out


def grid_sample(*, image: jax.Array, grid: jax.Array, align_corners: bool,
                padding: str = "zeros") -> jax.Array:
  """Bilinear sampling with ``torch.nn.functional.grid_sample`` semantics.

  Args:
    image: [B, H, W, C].
    grid: [B, h, w, 2] normalised (x, y); x = -1 is the left edge.
    align_corners: True: -1 / 1 are the centres of the corner pixels
      (ix = (x + 1) / 2 * (W - 1)); False: they are the outer edges of the
      corner pixels (ix = ((x + 1) W - 1) / 2).
    padding: 'zeros' (taps outside the image read 0) or 'border'
      (coordinates are clamped to the image, torch's rule).

  Returns:
    [B, h, w, C] sampled values, in ``image.dtype`` for floating images (the
    interpolation itself runs in at least float32), float32 otherwise.
  """
  if image.ndim != 4:
    raise ValueError(f"image must be [B, H, W, C], got {image.shape}")
  if grid.ndim != 4 or grid.shape[-1] != 2 or grid.shape[0] != image.shape[0]:
    raise ValueError(f"grid must be [B, h, w, 2] with the image's batch "
                     f"{image.shape[0]}, got {grid.shape}")
  if padding not in ("zeros", "border"):
    raise ValueError(f"padding must be 'zeros' or 'border', got {padding!r}")
  # Coordinates and weights in >= float32 even for bf16 images: a bf16
  # coordinate is off by up to ~W/256 pixels.
  compute = jnp.promote_types(grid.dtype, jnp.float32)
  ix = _unnormalize(grid[..., 0].astype(compute), image.shape[2], align_corners)
  iy = _unnormalize(grid[..., 1].astype(compute), image.shape[1], align_corners)
  out = jax.vmap(functools.partial(_sample_one, padding=padding))(
      image, ix, iy)
  out_dtype = (image.dtype if jnp.issubdtype(image.dtype, jnp.floating)
               else compute)
  return out.astype(out_dtype)


def warp(*, image: jax.Array, theta: jax.Array, kind: str,
         out_size: Sequence[int] = None, align_corners: bool = True,
         padding: str = "zeros") -> jax.Array:
  """Warps an image, mask or feature map by ``theta`` (CNNGeo ``GeometricTnf``).

  output[q] = image(T(q)): with ``theta_AB`` this brings A into B's frame.

  Args:
    image: [B, H, W, C].
    theta: [B, THETA_DIMS[kind]].
    kind: 'affine', 'tps' or 'affine_tps'.
    out_size: (h, w) of the output; defaults to (H, W).
    align_corners: sampling convention (CNNGeo: True).
    padding: 'zeros' or 'border'.

  Returns:
    [B, h, w, C].
  """
  if out_size is None:
    out_size = image.shape[1:3]
  grid = sampling_grid(theta=theta, kind=kind, out_size=tuple(out_size))
  return grid_sample(image=image, grid=grid, align_corners=align_corners,
                     padding=padding)


def invert_affine(theta: jax.Array) -> jax.Array:
  """Inverse of affine theta [B, 6] (maps source points to the target frame)."""
  m = theta.reshape(-1, 2, 3)
  lin = m[:, :, :2]
  inv = jnp.linalg.inv(lin)
  t = -jnp.einsum("bij,bj->bi", inv, m[:, :, 2])
  return jnp.concatenate([inv, t[:, :, None]], axis=-1).reshape(-1, 6)


def pixels_to_normalized(points: jax.Array, size: Tuple[int, int],
                         align_corners: bool = True) -> jax.Array:
  """(x, y) pixel coordinates (0 = first pixel centre) -> [-1, 1].

  Args:
    points: [..., 2] (x, y) in pixels.
    size: (H, W) of the image.
    align_corners: convention, as in :func:`grid_sample`.
  """
  h, w = size
  scale = jnp.array([w, h], points.dtype)
  if align_corners:
    return points / (scale - 1.0) * 2.0 - 1.0
  return (points * 2.0 + 1.0) / scale - 1.0


def normalized_to_pixels(points: jax.Array, size: Tuple[int, int],
                         align_corners: bool = True) -> jax.Array:
  """Inverse of :func:`pixels_to_normalized`."""
  h, w = size
  scale = jnp.array([w, h], points.dtype)
  if align_corners:
    return (points + 1.0) * 0.5 * (scale - 1.0)
  return ((points + 1.0) * scale - 1.0) * 0.5
