"""Tests for coseg_jax.nn.geometry against NumPy float64 references."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from conftest import optional_import
from coseg_jax.nn import geometry

KINDS = ("affine", "tps", "affine_tps")


def _np_bilinear(image, grid, align_corners, padding):
  """Loop reference of torch grid_sample (bilinear), channels-last."""
  b, h, w, c = image.shape
  _, oh, ow, _ = grid.shape
  out = np.zeros((b, oh, ow, c))
  for n in range(b):
    for i in range(oh):
      for j in range(ow):
        x, y = grid[n, i, j]
        if align_corners:
          ix, iy = (x + 1) / 2 * (w - 1), (y + 1) / 2 * (h - 1)
        else:
          ix, iy = ((x + 1) * w - 1) / 2, ((y + 1) * h - 1) / 2
        if padding == "border":
          ix, iy = min(max(ix, 0), w - 1), min(max(iy, 0), h - 1)
        x0, y0 = int(np.floor(ix)), int(np.floor(iy))
        for yy in (y0, y0 + 1):
          for xx in (x0, x0 + 1):
            wgt = (1 - abs(ix - xx)) * (1 - abs(iy - yy))
            if 0 <= xx < w and 0 <= yy < h:
              out[n, i, j] += wgt * image[n, yy, xx]
  return out


def _np_tps(theta, points):
  """Re-derivation of CNNGeo's TpsGridGen.apply_transformation (float64)."""
  axis = np.linspace(-1, 1, 3)
  p_y, p_x = np.meshgrid(axis, axis)
  px, py = p_x.reshape(-1), p_y.reshape(-1)
  n = 9
  d2 = (px[:, None] - px[None]) ** 2 + (py[:, None] - py[None]) ** 2
  d2[d2 == 0] = 1
  k = d2 * np.log(d2)
  p = np.stack([np.ones(n), px, py], 1)
  l = np.block([[k, p], [p.T, np.zeros((3, 3))]])
  li = np.linalg.inv(l)
  out = np.zeros(points.shape)
  for b in range(theta.shape[0]):
    qx, qy = theta[b, :n], theta[b, n:]
    wx, wy = li[:n, :n] @ qx, li[:n, :n] @ qy
    ax, ay = li[n:, :n] @ qx, li[n:, :n] @ qy
    for idx in np.ndindex(points.shape[1:-1]):
      x, y = points[(b,) + idx]
      r2 = (x - px) ** 2 + (y - py) ** 2
      r2[r2 == 0] = 1
      u = r2 * np.log(r2)
      out[(b,) + idx + (0,)] = ax[0] + ax[1] * x + ax[2] * y + wx @ u
      out[(b,) + idx + (1,)] = ay[0] + ay[1] * x + ay[2] * y + wy @ u
  return out


def _np_affine(theta, points):
  m = theta.reshape(-1, 2, 3)
  out = np.zeros(points.shape)
  for b in range(theta.shape[0]):
    for idx in np.ndindex(points.shape[1:-1]):
      x, y = points[(b,) + idx]
      out[(b,) + idx] = m[b] @ np.array([x, y, 1.0])
  return out


def _random_theta(rng, kind, batch, scale=0.1):
  ident = np.asarray(geometry.identity_theta(kind, batch), np.float64)
  return ident + scale * rng.normal(size=ident.shape)


def _np_base_grid(h, w):
  gx, gy = np.meshgrid(np.linspace(-1, 1, w), np.linspace(-1, 1, h))
  return np.stack([gx, gy], -1)


def test_identity_constants_match_cnngeo():
  np.testing.assert_array_equal(
      geometry.TPS_IDENTITY,
      [-1, -1, -1, 0, 0, 0, 1, 1, 1, -1, 0, 1, -1, 0, 1, -1, 0, 1])
  np.testing.assert_array_equal(geometry.AFFINE_IDENTITY, [1, 0, 0, 0, 1, 0])


@pytest.mark.parametrize("kind", KINDS)
def test_identity_maps_grid_to_itself(kind):
  theta = geometry.identity_theta(kind, 2)
  grid = geometry.sampling_grid(theta=theta, kind=kind, out_size=(7, 9))
  expected = _np_base_grid(7, 9)
  assert grid.shape == (2, 7, 9, 2)
  np.testing.assert_allclose(np.asarray(grid), np.broadcast_to(
      expected, grid.shape), atol=1e-6, rtol=0)
  pts = jnp.asarray(expected.reshape(1, -1, 2).repeat(2, 0), jnp.float32)
  moved = geometry.transform_points(points=pts, theta=theta, kind=kind)
  np.testing.assert_allclose(np.asarray(moved), np.asarray(pts), atol=1e-6,
                             rtol=0)


def test_affine_grid_matches_numpy():
  rng = np.random.default_rng(0)
  theta = rng.normal(size=(2, 6))
  grid = geometry.affine_grid(theta=jnp.asarray(theta, jnp.float32),
                              out_size=(4, 5))
  ref = _np_affine(theta, np.broadcast_to(_np_base_grid(4, 5), (2, 4, 5, 2)))
  np.testing.assert_allclose(np.asarray(grid), ref, atol=1e-5, rtol=1e-5)


def test_tps_grid_matches_numpy_rederivation_of_tpsgridgen():
  rng = np.random.default_rng(1)
  theta = _random_theta(rng, "tps", 3, scale=0.3)
  grid = geometry.tps_grid(theta=jnp.asarray(theta, jnp.float32),
                           out_size=(6, 8))
  ref = _np_tps(theta, np.broadcast_to(_np_base_grid(6, 8), (3, 6, 8, 2)))
  np.testing.assert_allclose(np.asarray(grid), ref, atol=2e-5, rtol=1e-5)


def test_tps_interpolates_control_points():
  rng = np.random.default_rng(2)
  theta = _random_theta(rng, "tps", 2, scale=0.3)
  ctrl = geometry.TPS_IDENTITY.reshape(2, 9).T  # [9, 2] (x, y)
  pts = jnp.asarray(np.broadcast_to(ctrl, (2, 9, 2)), jnp.float32)
  moved = geometry.transform_points(
      points=pts, theta=jnp.asarray(theta, jnp.float32), kind="tps")
  target = np.stack([theta[:, :9], theta[:, 9:]], -1)
  np.testing.assert_allclose(np.asarray(moved), target, atol=1e-5)


def test_affine_tps_grid_is_affine_grid_sampled_at_tps_grid():
  rng = np.random.default_rng(3)
  theta = np.concatenate([_random_theta(rng, "affine", 2, 0.1),
                          _random_theta(rng, "tps", 2, 0.2)], 1)
  grid = geometry.sampling_grid(theta=jnp.asarray(theta, jnp.float32),
                                kind="affine_tps", out_size=(5, 6))
  base = np.broadcast_to(_np_base_grid(5, 6), (2, 5, 6, 2))
  aff = _np_affine(theta[:, :6], base)
  tps = _np_tps(theta[:, 6:], base)
  ref = _np_bilinear(aff, tps, align_corners=True, padding="border")
  np.testing.assert_allclose(np.asarray(grid), ref, atol=2e-5)
  # Inside [-1, 1]^2 the composition is the analytic T_aff(T_tps(q)).
  inside = np.all(np.abs(tps) <= 1, axis=-1)
  pts = geometry.transform_points(
      points=jnp.asarray(base.reshape(2, -1, 2), jnp.float32),
      theta=jnp.asarray(theta, jnp.float32), kind="affine_tps")
  np.testing.assert_allclose(np.asarray(pts).reshape(ref.shape)[inside],
                             ref[inside], atol=2e-5)
  assert inside.mean() > 0.3


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_grid_sample_matches_numpy_reference(align_corners, padding):
  rng = np.random.default_rng(4)
  image = rng.normal(size=(2, 5, 6, 3))
  grid = rng.uniform(-1.3, 1.3, size=(2, 4, 7, 2))
  out = geometry.grid_sample(image=jnp.asarray(image, jnp.float32),
                             grid=jnp.asarray(grid, jnp.float32),
                             align_corners=align_corners, padding=padding)
  ref = _np_bilinear(image, grid, align_corners, padding)
  np.testing.assert_allclose(np.asarray(out), ref, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_grid_sample_matches_torch(align_corners, padding):
  torch = optional_import("torch")
  rng = np.random.default_rng(5)
  image = rng.normal(size=(2, 6, 5, 3)).astype(np.float32)
  grid = rng.uniform(-1.2, 1.2, size=(2, 8, 3, 2)).astype(np.float32)
  ref = torch.nn.functional.grid_sample(
      torch.from_numpy(image).permute(0, 3, 1, 2), torch.from_numpy(grid),
      mode="bilinear", padding_mode=padding, align_corners=align_corners)
  ref = ref.permute(0, 2, 3, 1).numpy()
  out = geometry.grid_sample(image=jnp.asarray(image), grid=jnp.asarray(grid),
                             align_corners=align_corners, padding=padding)
  np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)


def test_affine_grid_matches_torch_affine_grid():
  torch = optional_import("torch")
  rng = np.random.default_rng(6)
  theta = rng.normal(size=(3, 6)).astype(np.float32)
  ref = torch.nn.functional.affine_grid(
      torch.from_numpy(theta).view(-1, 2, 3), (3, 1, 5, 7),
      align_corners=True).numpy()
  out = geometry.affine_grid(theta=jnp.asarray(theta), out_size=(5, 7))
  np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_point_transform_agrees_with_warped_delta_image(kind):
  """A delta at source pixel s lands where T(q) is near s (pull direction)."""
  rng = np.random.default_rng(7)
  h = w = 21
  theta = _random_theta(rng, kind, 1, scale=0.08)
  src = (8, 12)  # (x, y) pixel of the bright dot in the source
  image = np.zeros((1, h, w, 1))
  image[0, src[1], src[0], 0] = 1.0
  out_size = (17, 19)
  warped = jax.jit(lambda im, th: geometry.warp(
      image=im, theta=th, kind=kind, out_size=out_size))(
          jnp.asarray(image, jnp.float32), jnp.asarray(theta, jnp.float32))
  base = _np_base_grid(*out_size).reshape(1, -1, 2)
  mapped = geometry.transform_points(
      points=jnp.asarray(base, jnp.float32),
      theta=jnp.asarray(theta, jnp.float32), kind=kind)
  pix = np.asarray(geometry.normalized_to_pixels(mapped, (h, w)),
                   np.float64).reshape(out_size + (2,))
  # Bilinear sampling of a delta is the tent function of the offset between
  # the mapped output location and the dot, at every output pixel.
  tent = (np.maximum(0, 1 - np.abs(pix[..., 0] - src[0])) *
          np.maximum(0, 1 - np.abs(pix[..., 1] - src[1])))
  np.testing.assert_allclose(np.asarray(warped)[0, ..., 0], tent, atol=1e-5)
  # The brightest output pixel is the one T sends closest to the dot.
  i, j = np.unravel_index(np.argmax(np.asarray(warped)[0, ..., 0]), out_size)
  assert np.max(np.abs(pix[i, j] - np.array(src))) < 1.0
  assert np.asarray(warped).max() > 0.25


def test_invert_affine_pushes_source_points_forward():
  rng = np.random.default_rng(8)
  theta = jnp.asarray(_random_theta(rng, "affine", 2, 0.2), jnp.float32)
  pts = jnp.asarray(rng.uniform(-1, 1, (2, 10, 2)), jnp.float32)
  there = geometry.transform_points(points=pts, theta=theta, kind="affine")
  back = geometry.transform_points(points=there,
                                   theta=geometry.invert_affine(theta),
                                   kind="affine")
  np.testing.assert_allclose(np.asarray(back), np.asarray(pts), atol=1e-5)


def test_pixel_normalized_round_trip():
  pts = jnp.array([[0.0, 0.0], [4.0, 2.0], [2.5, 1.0]])
  for ac in (True, False):
    n = geometry.pixels_to_normalized(pts, (3, 5), align_corners=ac)
    np.testing.assert_allclose(
        np.asarray(geometry.normalized_to_pixels(n, (3, 5), align_corners=ac)),
        np.asarray(pts), atol=1e-6)
  np.testing.assert_allclose(
      np.asarray(geometry.pixels_to_normalized(pts[:2], (3, 5))),
      [[-1, -1], [1, 1]], atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_warp_jit_and_vmap(kind):
  rng = np.random.default_rng(9)
  image = jnp.asarray(rng.uniform(size=(2, 6, 6, 2)), jnp.float32)
  theta = jnp.asarray(_random_theta(rng, kind, 2, 0.05), jnp.float32)
  f = lambda im, th: geometry.warp(image=im, theta=th, kind=kind)
  jitted = jax.jit(f)(image, theta)
  mapped = jax.jit(jax.vmap(f))(image[:, None], theta[:, None])[:, 0]
  np.testing.assert_allclose(np.asarray(mapped), np.asarray(jitted), atol=1e-5)
  grid = _np_base_grid(6, 6)
  if kind == "affine":
    ref = _np_bilinear(np.asarray(image, np.float64),
                       _np_affine(np.asarray(theta, np.float64),
                                  np.broadcast_to(grid, (2, 6, 6, 2))),
                       True, "zeros")
    np.testing.assert_allclose(np.asarray(jitted), ref, atol=1e-5)


def test_warp_theta_gradient_vs_finite_differences():
  """affine_tps exercises the affine, TPS and grid-composition gradients."""
  kind = "affine_tps"
  rng = np.random.default_rng(9)
  image = jnp.asarray(rng.uniform(size=(2, 6, 6, 2)), jnp.float32)
  theta = jnp.asarray(_random_theta(rng, kind, 2, 0.05), jnp.float32)
  f = lambda im, th: geometry.warp(image=im, theta=th, kind=kind)
  direct = jax.eval_shape(f, image, theta)
  with jax.enable_x64(True):
    im64 = jnp.asarray(np.asarray(image), jnp.float64)
    th64 = jnp.asarray(np.asarray(theta), jnp.float64)
    wts = jnp.asarray(rng.normal(size=direct.shape))
    loss = jax.jit(lambda th: jnp.sum(f(im64, th) * wts))
    g = np.asarray(jax.jit(jax.grad(loss))(th64))
    eps = 1e-6
    for idx in [(0, 0), (1, 2), (0, 10), (1, th64.shape[1] - 1)]:
      e = np.zeros(th64.shape)
      e[idx] = eps
      fd = (loss(th64 + e) - loss(th64 - e)) / (2 * eps)
      np.testing.assert_allclose(g[idx], float(fd), rtol=1e-4, atol=1e-7)


def test_tps_gradient_finite_at_control_points():
  theta = geometry.identity_theta("tps", 1)
  pts = jnp.asarray(geometry.TPS_IDENTITY.reshape(2, 9).T[None])
  g = jax.grad(lambda p: jnp.sum(geometry.transform_points(
      points=p, theta=theta, kind="tps")))(pts)
  assert np.all(np.isfinite(np.asarray(g)))


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match="kind"):
    geometry.identity_theta("homography")
  with pytest.raises(ValueError, match=r"theta for kind='tps'"):
    geometry.sampling_grid(theta=jnp.zeros((1, 6)), kind="tps",
                           out_size=(3, 3))
  with pytest.raises(ValueError, match="points"):
    geometry.transform_points(points=jnp.zeros((1, 3)),
                              theta=geometry.identity_theta("affine"),
                              kind="affine")
  with pytest.raises(ValueError, match="padding"):
    geometry.grid_sample(image=jnp.zeros((1, 2, 2, 1)),
                         grid=jnp.zeros((1, 1, 1, 2)), align_corners=True,
                         padding="reflection")


def test_bf16_images_sample_with_float32_coordinates():
  rng = np.random.default_rng(10)
  image = rng.uniform(size=(1, 40, 40, 2))
  theta = jnp.asarray(_random_theta(rng, "affine", 1, 0.1), jnp.float32)
  warp = jax.jit(lambda im, th: geometry.warp(image=im, theta=th,
                                              kind="affine"))
  ref = warp(jnp.asarray(image, jnp.float32), theta)
  out = warp(jnp.asarray(image, jnp.bfloat16), theta)
  assert out.dtype == jnp.bfloat16
  # Only the bf16 rounding of pixel values and of the result remains.
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref),
                             atol=1.5e-2)
  masks = warp(jnp.ones((1, 4, 4, 1), jnp.uint8),
               geometry.identity_theta("affine"))
  assert masks.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(masks), 1.0)
