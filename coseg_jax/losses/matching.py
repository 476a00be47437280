"""MaCoSNet semantic-matching losses (Chen et al., "Show, Match and Segment").

Equation numbers follow the TPAMI paper (Sec. 3.2). Geometry
conventions are CNNGeo's (see ``coseg_jax.nn.geometry``): ``theta_ab`` warps
image A onto image B, so its point map T_AB takes a point of B's frame to its
match in A's frame (pull direction, exactly what the sampling grid does).
Points are normalised (x, y) in [-1, 1].

**Foreground-guided matching (eq. 2-4), :func:`matching_loss`.**
The correlation S = ``feature_correlation(features_a=f_A, features_b=f_B)``
[B, h_b, w_b, h_a*w_a] scores every pair (q in B's grid, k in A's grid, A's
positions column-major). Eq. 2, the correspondence mask: a pair is an inlier
when the transformation sends q within phi grid cells of k,
m(q, k) = [ dist(T_AB(q), p_k) <= phi ], with distances in A's feature-grid
units. As in the authors' code (weakalign's ``AffMatchScore``), the hard mask
is made differentiable in theta by sampling it bilinearly: the indicator
image I_k(z) = [dist(z, p_k) <= phi] over A's integer grid positions z is read
at T_AB(q) with bilinear interpolation (zeros outside A), so
m(q, k) = sum_z w_bilinear(T_AB(q), z) I_k(z), which equals the hard rule at
grid points and moves smoothly in between. ``distance='chebyshev'`` with phi=1
reproduces weakalign's 3x3 dilation; 'euclidean' is also offered.

Eq. 3-4 in this layout. The paper sums, for each point p of the grid that
T_AB is evaluated at, the inlier scores s(p) = sum_k m(p, k) S(p, k) over
the other image's positions, and weights each point by ONE mask, that of the
image p belongs to:

  L_matching = -( sum_{p in P_A} s_A(p) M_A(p) + sum_{q in P_B} s_B(q) M_B(q) ).

With CNNGeo's pull maps the grid T_AB is evaluated at is B's (the spatial
axes of S), so one direction of the paper is, per batch element,

  score = sum_{q in B's grid} M_B(q) sum_k m(q, k) S(q, k)     (``mask_b``)

and the pair (theta_ba, S_BA) gives the other, weighted by M_A. ``mask_a``
additionally weights each k by A's mask (the product M_B(q) M_A(k), our
earlier form; not in eq. 4). ``normalize`` divides the score: 'none' (eq. 4's
plain sum), 'grid' (by h_b w_b: the per-position mean, our earlier form) or
'inliers' (by sum_{q,k} m(q, k), the authors' code's
``normalize_inlier_count``). The loss of one direction is -mean_batch(score);
MaCoSNet sums the two directions (eq. 4) and averages the affine and
affine+TPS stages, which the caller does by calling this once per
(direction, stage). Pass ``mask_a=mask_b=None`` for weakalign's plain score
(all ones); the correspondence mask has no ``offset_factor`` rescaling.

**Forward-backward consistency (eq. 5), :func:`cycle_consistency_loss`.**
L = mean_{n, p} || T_BA(T_AB(p)) - p ||_2^2 over sampled points p
(:func:`sample_points`; MaCoSNet uses 100). The squared distance in normalised
units; the authors' code measures it in 240-pixel units, a constant factor
(119.5^2) apart for square 240 inputs.

**Transitivity (eq. 6), :func:`transitivity_loss`.**
L = mean_{n, p} || T_CA(T_BC(T_AB(p))) - p ||_2^2 over sampled points, the
maps applied in the paper's (and code's) order: first theta_ab, then
theta_bc, then theta_ca.
"""

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from coseg_jax.losses.registry import register_loss
from coseg_jax.nn import geometry


def sample_points(key: jax.Array, *, batch: int, num: int = 100,
                  minval: float = -1.0, maxval: float = 1.0) -> jax.Array:
  """Uniform random normalised points [batch, num, 2] (x, y)."""
  return jax.random.uniform(key, (batch, num, 2), minval=minval,
                            maxval=maxval)


def _indicator_stack(size, phi: float, distance: str) -> np.ndarray:
  """I[y, x, k] = [dist((x, y), p_k) <= phi], k = x_k * h + y_k."""
  h, w = size
  ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  # Column-major enumeration of A's positions, as feature_correlation.
  ky = np.tile(np.arange(h), w)
  kx = np.repeat(np.arange(w), h)
  dy = ys[..., None] - ky
  dx = xs[..., None] - kx
  if distance == "chebyshev":
    dist = np.maximum(np.abs(dx), np.abs(dy))
  elif distance == "euclidean":
    dist = np.sqrt(dx * dx + dy * dy)
  else:
    raise ValueError(f"distance must be 'chebyshev' or 'euclidean', got "
                     f"{distance!r}")
  return (dist <= phi + 1e-9).astype(np.float32)


def correspondence_mask(*, theta: jax.Array, kind: str,
                        target_size: Sequence[int],
                        source_size: Sequence[int], phi: float = 1.0,
                        distance: str = "chebyshev") -> jax.Array:
  """Soft correspondence mask of eq. 2 (bilinearly sampled inlier indicator).

  Args:
    theta: [B, D] transformation warping the source (A) onto the target (B).
    kind: geometry kind of theta.
    target_size: (h_b, w_b) grid of the target (spatial axes of the result).
    source_size: (h_a, w_a) grid of the source (channels, column-major).
    phi: inlier threshold in source feature-grid cells.
    distance: 'chebyshev' (weakalign's square dilation) or 'euclidean'.

  Returns:
    [B, h_b, w_b, h_a * w_a] mask in [0, 1].
  """
  indicator = jnp.asarray(_indicator_stack(tuple(source_size), phi, distance),
                          theta.dtype)
  batch = theta.shape[0]
  grid = geometry.sampling_grid(theta=theta, kind=kind,
                                out_size=tuple(target_size))
  image = jnp.broadcast_to(indicator, (batch,) + indicator.shape)
  return geometry.grid_sample(image=image, grid=grid, align_corners=True,
                              padding="zeros")


def _flatten_column_major(mask: jax.Array) -> jax.Array:
  """[B, h, w, 1] -> [B, h*w] with k = x * h + y."""
  return jnp.swapaxes(mask[..., 0], 1, 2).reshape(mask.shape[0], -1)


NORMALIZE = ("none", "grid", "inliers")


@register_loss("macos_matching")
def matching_loss(*, correlation: jax.Array, theta: jax.Array, kind: str,
                  mask_a: Optional[jax.Array] = None,
                  mask_b: Optional[jax.Array] = None, phi: float = 1.0,
                  distance: str = "chebyshev",
                  source_size: Optional[Sequence[int]] = None,
                  normalize: str = "none") -> jax.Array:
  """Foreground-guided matching loss (eq. 2-4), one direction.

  Args:
    correlation: [B, h_b, w_b, h_a*w_a] from ``feature_correlation(
      features_a=f_A, features_b=f_B)``.
    theta: [B, D] warping A onto B (T_AB: B's frame -> A's frame).
    kind: 'affine', 'tps' or 'affine_tps'.
    mask_a: [B, h_a, w_a, 1] foreground of A at feature resolution, in [0, 1]
      (None: all ones). Not part of eq. 4 (module docstring).
    mask_b: [B, h_b, w_b, 1] foreground of B, the image whose grid points the
      score sums over: eq. 4's mask of this direction (None: all ones).
    phi: inlier threshold in A's feature-grid cells.
    distance: 'chebyshev' or 'euclidean'.
    source_size: (h_a, w_a); taken from ``mask_a`` when given, else assumed
      square.
    normalize: 'none' (eq. 4), 'grid' (/ h_b w_b) or 'inliers'
      (/ sum of the correspondence mask).

  Returns:
    Scalar loss -mean_n score (lower is better).
  """
  if correlation.ndim != 4:
    raise ValueError(f"correlation must be [B, h_b, w_b, h_a*w_a], got "
                     f"{correlation.shape}")
  if normalize not in NORMALIZE:
    raise ValueError(f"normalize must be one of {NORMALIZE}, got "
                     f"{normalize!r}")
  _, h_b, w_b, n_a = correlation.shape
  if source_size is not None:
    h_a, w_a = source_size
  elif mask_a is not None:
    h_a, w_a = mask_a.shape[1:3]
  else:
    h_a = w_a = int(round(np.sqrt(n_a)))
  if h_a * w_a != n_a:
    raise ValueError(f"correlation has {n_a} channels, which is not h_a*w_a "
                     f"= {h_a}*{w_a}; pass source_size (or mask_a)")
  if mask_a is not None and tuple(mask_a.shape[1:3]) != (h_a, w_a):
    raise ValueError(f"mask_a {mask_a.shape} does not match A's grid "
                     f"{(h_a, w_a)}")
  if mask_b is not None and tuple(mask_b.shape[1:3]) != (h_b, w_b):
    raise ValueError(f"mask_b {mask_b.shape} does not match the correlation's "
                     f"spatial grid {(h_b, w_b)}")
  m = correspondence_mask(theta=theta, kind=kind, target_size=(h_b, w_b),
                          source_size=(h_a, w_a), phi=phi, distance=distance)
  weight = m * correlation
  if mask_a is not None:
    weight = weight * _flatten_column_major(mask_a)[:, None, None, :]
  if mask_b is not None:
    weight = weight * mask_b
  score = jnp.sum(weight, axis=(1, 2, 3))
  if normalize == "grid":
    score = score / (h_b * w_b)
  elif normalize == "inliers":
    # The authors' code adds 1e-5 per entry of the mask before summing.
    score = score / jnp.sum(m + 1e-5, axis=(1, 2, 3))
  return -jnp.mean(score)


def _chain(points, thetas, kind):
  for theta in thetas:
    points = geometry.transform_points(points=points, theta=theta, kind=kind)
  return points


@register_loss("macos_cycle")
def cycle_consistency_loss(*, points: jax.Array, theta_ab: jax.Array,
                           theta_ba: jax.Array, kind: str) -> jax.Array:
  """Forward-backward consistency (eq. 5): mean ||T_BA(T_AB(p)) - p||^2.

  Args:
    points: [B, N, 2] sampled normalised points.
    theta_ab: [B, D], applied first.
    theta_ba: [B, D], applied second.
    kind: geometry kind of both thetas.

  Returns:
    Scalar, mean over batch and points of the squared Euclidean distance.
  """
  back = _chain(points, (theta_ab, theta_ba), kind)
  return jnp.mean(jnp.sum((back - points) ** 2, axis=-1))


@register_loss("macos_transitivity")
def transitivity_loss(*, points: jax.Array, theta_ab: jax.Array,
                      theta_bc: jax.Array, theta_ca: jax.Array,
                      kind: str) -> jax.Array:
  """Transitivity consistency (eq. 6): mean ||T_CA(T_BC(T_AB(p))) - p||^2.

  Args:
    points: [B, N, 2] sampled normalised points.
    theta_ab: [B, D], applied first.
    theta_bc: [B, D], applied second.
    theta_ca: [B, D], applied third.
    kind: geometry kind of the thetas.

  Returns:
    Scalar, mean over batch and points of the squared Euclidean distance.
  """
  back = _chain(points, (theta_ab, theta_bc, theta_ca), kind)
  return jnp.mean(jnp.sum((back - points) ** 2, axis=-1))
