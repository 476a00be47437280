"""Channel-attention fusion: shapes, parameter count, NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coseg_jax.nn import fusion

CF, CC, F = 3, 5, 4


def _np_upsample_bilinear(x, out_h, out_w):
  """Half-pixel bilinear (torch align_corners=False), edges clamped; x [h,w,c]."""
  h, w, _ = x.shape

  def axis_weights(n_in, n_out):
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] += 1 - (pos - lo)
    m[np.arange(n_out), hi] += pos - lo
    return m

  return np.einsum("Hh,hwc,Ww->HWc", axis_weights(h, out_h), x,
                   axis_weights(w, out_w))


def _np_fusion(p, fine, coarse):
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), p)
  up = _np_upsample_bilinear(coarse, *fine.shape[:2])
  f = fine @ p["fine_proj"]["kernel"][0, 0] + p["fine_proj"]["bias"]
  c = up @ p["coarse_proj"]["kernel"][0, 0] + p["coarse_proj"]["bias"]
  s = np.concatenate([f, c], -1).mean((0, 1))
  s = np.maximum(s @ p["fc1"]["kernel"] + p["fc1"]["bias"], 0)
  wgt = 1 / (1 + np.exp(-(s @ p["fc2"]["kernel"] + p["fc2"]["bias"])))
  return f * wgt + c


@pytest.mark.parametrize("coarse_hw", [(3, 4), (6, 8), (4, 3)])
def test_matches_numpy(coarse_hw):
  rng = np.random.default_rng(0)
  fine = rng.normal(size=(2, 6, 8, CF)).astype(np.float32)
  coarse = rng.normal(size=(2, *coarse_hw, CC)).astype(np.float32)
  module = fusion.ChannelAttentionFusion(F)
  variables = module.init(jax.random.key(0), fine, coarse)
  leaves, tree = jax.tree_util.tree_flatten(variables)
  variables = jax.tree_util.tree_unflatten(
      tree, [jnp.asarray(rng.normal(0, 0.5, l.shape), jnp.float32)
             for l in leaves])
  out = jax.jit(module.apply)(variables, fine, coarse)
  assert out.shape == (2, 6, 8, F)
  for i in range(2):
    np.testing.assert_allclose(
        out[i], _np_fusion(variables["params"], fine[i].astype(float),
                           coarse[i].astype(float)), rtol=1e-5, atol=1e-5)


def test_param_count():
  module = fusion.ChannelAttentionFusion(8, reduction=2)
  variables = module.init(jax.random.key(0), jnp.zeros((1, 4, 4, CF)),
                          jnp.zeros((1, 2, 2, CC)))
  n = sum(a.size for a in jax.tree_util.tree_leaves(variables))
  # fine 1x1 (3->8), coarse 1x1 (5->8), fc1 (16->4), fc2 (4->8), with biases.
  assert n == (3 * 8 + 8) + (5 * 8 + 8) + (16 * 4 + 4) + (4 * 8 + 8) == 188


def test_bad_input():
  module = fusion.ChannelAttentionFusion(F)
  with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
    module.init(jax.random.key(0), jnp.zeros((4, 4, CF)),
                jnp.zeros((1, 2, 2, CC)))
  with pytest.raises(ValueError, match="batch sizes"):
    module.init(jax.random.key(0), jnp.zeros((2, 4, 4, CF)),
                jnp.zeros((1, 2, 2, CC)))
