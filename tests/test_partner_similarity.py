"""Partner similarity: a loop-by-loop NumPy reference, K = 2 and groups."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coseg_jax.nn import partner_similarity as ps


def _np_reference(x, center=True):
  """x [B, K, h, w, C] -> [B, K, h, w, 1], one position at a time."""
  b, k, h, w, c = x.shape
  out = np.zeros((b, k, h, w, 1))
  for g in range(b):
    f = x[g].reshape(k, h * w, c).astype(np.float64)
    if center:
      f = f - f.reshape(-1, c).mean(0)
    for i in range(k):
      for p in range(h * w):
        best = -np.inf
        for j in range(k):
          if j == i:
            continue
          for q in range(h * w):
            u, v = f[i, p], f[j, q]
            den = np.sqrt((u @ u + 1e-12) * (v @ v + 1e-12))
            best = max(best, (u @ v) / den)
        out[g, i, p // w, p % w, 0] = best
  return out


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("center", [True, False])
def test_matches_numpy_reference(k, center):
  x = np.random.default_rng(k).normal(size=(2, k, 3, 4, 5)).astype(np.float32)
  got = ps.partner_similarity(jnp.asarray(x), center=center)
  assert got.shape == (2, k, 3, 4, 1) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, _np_reference(x, center), atol=1e-5)


def test_own_image_never_matches():
  """A position identical to one of its own image's positions but to none
  of the partner's does not score 1: only the other images count."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1, 2, 2, 2, 8)).astype(np.float32)
  x[0, 0, 1, 1] = x[0, 0, 0, 0]
  got = np.asarray(ps.partner_similarity(jnp.asarray(x), center=False))
  assert got[0, 0, 0, 0, 0] < 0.99
  x[0, 1, 0, 1] = 3.0 * x[0, 0, 0, 0]  # now the partner holds it (scaled)
  got = np.asarray(ps.partner_similarity(jnp.asarray(x), center=False))
  np.testing.assert_allclose(got[0, 0, 0, 0, 0], 1.0, atol=1e-6)


def test_follows_the_partner():
  """Two objects (feature vectors a, b) in image 0: a partner holding a
  scores a's positions above b's, and a partner holding b the reverse."""
  e = np.eye(4, dtype=np.float32)
  obj_a, obj_b, back = e[0], e[1], e[2]
  img = np.stack([[obj_a, obj_b], [back, back]])  # [2, 2, 4]
  with_a = np.stack([[obj_a, back], [back, back]])
  with_b = np.stack([[back, back], [obj_b, back]])
  for partner, (hi, lo) in ((with_a, ((0, 0), (0, 1))),
                            (with_b, ((0, 1), (0, 0)))):
    s = np.asarray(ps.partner_similarity(
        jnp.asarray(np.stack([img, partner])[None])))[0, 0, ..., 0]
    assert s[hi] > s[lo] + 0.5


def test_gradient_finite_at_zero_vectors():
  x = jnp.zeros((1, 2, 2, 2, 3))
  g = jax.grad(lambda v: jnp.sum(ps.partner_similarity(v, center=False)))(x)
  assert np.all(np.isfinite(np.asarray(g)))


@pytest.mark.parametrize("shape,match", [
    ((2, 3, 3, 4), r"\[B, K, h, w, C\]"),
    ((1, 1, 3, 3, 4), "K >= 2"),
])
def test_bad_shapes(shape, match):
  with pytest.raises(ValueError, match=match):
    ps.partner_similarity(jnp.zeros(shape))
