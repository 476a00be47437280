"""Adaptive ROI pooling vs a NumPy loop reference and torch."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import optional_import
from coseg_jax.nn import roi_pool

# Non-dividing sizes (overlapping bins), a dividing one, output > input
# along one axis, and the int form.
SIZES = [((7, 5), (2, 2)), ((15, 15), (2, 3)), ((5, 9), (3, 4)),
         ((4, 4), (2, 2)), ((3, 5), (4, 2)), ((5, 2), 1)]


def _np_reference(x, out, mode):
  """Plain loop over output cells with torch's floor/ceil bin edges."""
  x = np.asarray(x, np.float64)
  oh, ow = (out, out) if isinstance(out, int) else out
  b, h, w, c = x.shape
  y = np.zeros((b, oh, ow, c))
  for i in range(oh):
    h0, h1 = math.floor(i * h / oh), math.ceil((i + 1) * h / oh)
    for j in range(ow):
      w0, w1 = math.floor(j * w / ow), math.ceil((j + 1) * w / ow)
      patch = x[:, h0:h1, w0:w1]
      y[:, i, j] = (patch.mean(axis=(1, 2)) if mode == "avg" else
                    patch.max(axis=(1, 2)))
  return y


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("in_hw,out", SIZES)
def test_matches_numpy_loop(in_hw, out, mode):
  x = np.random.default_rng(0).normal(size=(2, *in_hw, 3)).astype(np.float32)
  got = jax.jit(lambda v: roi_pool.roi_pool(v, out, mode=mode))(x)
  np.testing.assert_allclose(got, _np_reference(x, out, mode), rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("in_hw,out", SIZES)
def test_matches_torch(in_hw, out, mode):
  torch = optional_import("torch")
  x = np.random.default_rng(1).normal(size=(2, *in_hw, 4)).astype(np.float32)
  pool = (torch.nn.AdaptiveAvgPool2d(out) if mode == "avg" else
          torch.nn.AdaptiveMaxPool2d(out))
  want = pool(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
  got = roi_pool.roi_pool(jnp.asarray(x), out, mode=mode)
  np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)


def test_bin_edges_cover_and_overlap():
  starts, ends = roi_pool.adaptive_bin_edges(7, 2)
  np.testing.assert_array_equal(starts, [0, 3])
  np.testing.assert_array_equal(ends, [4, 7])  # pixel 3 lies in both bins
  assert roi_pool.bin_membership(7, 2).any(0).all()


def test_vmap_and_grad():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 1, 5, 6, 2)),
                  jnp.float32)
  got = jax.vmap(lambda v: roi_pool.adaptive_avg_pool(v, (2, 4)))(x)
  np.testing.assert_allclose(got[1], roi_pool.adaptive_avg_pool(x[1], (2, 4)),
                             rtol=1e-6)
  # The mean of the average-pooled map weights each pixel by how many bins
  # contain it divided by the bin sizes; check against finite differences.
  f = lambda v: jnp.sum(roi_pool.adaptive_avg_pool(v, (2, 4)) ** 2)
  g = jax.grad(f)(x[0])
  eps = 1e-3
  e = jnp.zeros_like(x[0]).at[0, 2, 3, 1].set(eps)
  fd = (f(x[0] + e) - f(x[0] - e)) / (2 * eps)
  np.testing.assert_allclose(g[0, 2, 3, 1], fd, rtol=1e-2)


def test_bad_input():
  with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
    roi_pool.adaptive_avg_pool(jnp.zeros((4, 4, 3)), 2)
  with pytest.raises(ValueError, match="'avg' or 'max'"):
    roi_pool.roi_pool(jnp.zeros((1, 4, 4, 3)), 2, mode="sum")
