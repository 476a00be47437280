"""coseg_jax.nn.resize: the stencil path equals jax.image.resize."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coseg_jax.nn import resize


def _reference(x, size):
  return jax.image.resize(x, (x.shape[0], *size, x.shape[-1]), "bilinear")


def _numpy_upsample(x, factor):
  """Half-pixel bilinear upsampling of [N, h, w, C] by factor, in NumPy."""
  def axis_weights(n):
    # [n * factor, n] interpolation matrix, edge samples clamped.
    pos = np.clip((np.arange(n * factor) + 0.5) / factor - 0.5, 0, n - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    frac = pos - lo
    m = np.zeros((n * factor, n))
    m[np.arange(n * factor), lo] += 1 - frac
    m[np.arange(n * factor), hi] += frac
    return m
  _, h, w, _ = x.shape
  return np.einsum("Hh,Ww,nhwc->nHWc", axis_weights(h), axis_weights(w), x)


@pytest.mark.parametrize("shape,size", [
    ((2, 5, 7, 3), (10, 14)),   # 2x, the decoders' step
    ((1, 1, 1, 2), (2, 2)),     # a single pixel
    ((2, 3, 4, 1), (12, 32)),   # 4x and 8x (CycleSegNet's priors)
    ((1, 7, 7, 4), (21, 14)),   # odd factor 3 on one axis
    ((1, 4, 6, 2), (6, 9)),     # non-integer factor: jax.image.resize path
    ((2, 8, 8, 3), (4, 4)),     # downsampling: jax.image.resize path
    ((1, 5, 5, 2), (5, 5)),     # same size: identity
])
def test_matches_jax_image_resize(shape, size):
  x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
  np.testing.assert_allclose(resize.bilinear_resize(x, size),
                             _reference(x, size), atol=2e-6)


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_matches_numpy_interpolation(factor):
  x = np.random.default_rng(1).normal(size=(2, 4, 5, 3)).astype(np.float32)
  got = resize.bilinear_resize(jnp.asarray(x), (4 * factor, 5 * factor))
  np.testing.assert_allclose(got, _numpy_upsample(x, factor), atol=2e-6)


def test_gradient_matches_jax_image_resize():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(2, 6, 5, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(2, 24, 10, 3)), jnp.float32)
  grad = lambda f: jax.grad(lambda x: jnp.sum(w * f(x)))(x)
  np.testing.assert_allclose(
      grad(lambda x: resize.bilinear_resize(x, (24, 10))),
      grad(lambda x: _reference(x, (24, 10))), atol=2e-5)


def test_keeps_dtype():
  x = jnp.ones((1, 3, 3, 2), jnp.bfloat16)
  y = resize.bilinear_resize(x, (6, 6))
  assert y.dtype == jnp.bfloat16 and y.shape == (1, 6, 6, 2)
  np.testing.assert_array_equal(np.asarray(y, np.float32), 1.0)


def test_upsampling_is_elementwise_not_a_matrix_product():
  # The point of the stencil path: no dot in the compiled upsampling.
  x = jnp.ones((2, 7, 7, 4))
  hlo = jax.jit(lambda x: resize.bilinear_resize(x, (14, 14))).lower(
      x).as_text()
  assert "dot_general" not in hlo
  hlo_ref = jax.jit(lambda x: _reference(x, (14, 14))).lower(x).as_text()
  assert "dot_general" in hlo_ref
