"""Region Correspondence Module: NumPy reference of eq. 9-12, group form."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coseg_jax.nn import region_attention
from numeric_helpers import random_params

C, D = 4, 3


def _np_pool(x, out, mode):
  """Adaptive pooling with torch bin edges, x [H, W, C] -> [oh, ow, C]."""
  h, w, _ = x.shape
  oh, ow = out
  y = np.zeros((oh, ow, x.shape[-1]))
  for i in range(oh):
    rs = slice(math.floor(i * h / oh), math.ceil((i + 1) * h / oh))
    for j in range(ow):
      cs = slice(math.floor(j * w / ow), math.ceil((j + 1) * w / ow))
      p = x[rs, cs]
      y[i, j] = p.mean((0, 1)) if mode == "avg" else p.max((0, 1))
  return y


def _np_conv_same(x, kernel, bias):
  """x [H, W, Ci], kernel [k, k, Ci, Co], SAME zero padding."""
  k = kernel.shape[0]
  p = k // 2
  xp = np.pad(x, ((p, k - 1 - p), (p, k - 1 - p), (0, 0)))
  h, w = x.shape[:2]
  out = np.zeros((h, w, kernel.shape[-1])) + bias
  for dy in range(k):
    for dx in range(k):
      out += xp[dy:dy + h, dx:dx + w] @ kernel[dy, dx]
  return out


def _np_rcm(params, c_a, c_b, region_size=(2, 2), raw=False, scale=False,
            project_value=True):
  """Eq. 9-12 for one image pair (no batch), float64; without
  ``project_value`` eq. 11 reads the fused regions C'_B themselves."""
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
  conv = lambda name, x: _np_conv_same(x, p[name]["kernel"], p[name]["bias"])
  relu = lambda z: np.maximum(z, 0)
  if raw:
    pooled = np.concatenate([c_b, c_b], -1)
  else:
    pooled = np.concatenate([_np_pool(c_b, region_size, "avg"),
                             _np_pool(c_b, region_size, "max")], -1)
  regions = conv("fuse", pooled).reshape(-1, C)               # eq. 9
  q = relu(conv("query", c_a)).reshape(-1, D)                 # eq. 10
  k = relu(regions @ p["key"]["kernel"][0, 0] + p["key"]["bias"])
  v = (relu(regions @ p["value"]["kernel"][0, 0] + p["value"]["bias"])
       if project_value else regions)                        # eq. 11
  logits = q @ k.T / (np.sqrt(D) if scale else 1.0)
  a = np.exp(logits - logits.max(1, keepdims=True))
  a /= a.sum(1, keepdims=True)                                # eq. 11
  local = (a @ v).reshape(c_a.shape)
  return 0.5 * (local + c_b.mean((0, 1))), a.reshape(c_a.shape[:2] + (-1,))


def _random_params(params, seed):
  return random_params(params, seed, std=0.7)


def _setup(seed=0, k=2, hw=(5, 7), **kwargs):
  rng = np.random.default_rng(seed)
  feats = rng.normal(size=(2, k, *hw, C)).astype(np.float32)
  module = region_attention.RegionCorrespondence(C, key_features=D, **kwargs)
  params = module.init(jax.random.key(seed), feats)["params"]
  return module, {"params": _random_params(params, seed + 1)}, feats


@pytest.mark.parametrize("kwargs", [{}, {"region_size": (3, 2), "scale": True},
                                    {"regions": "raw"}, {"fuse_kernel": 3}])
def test_pair_matches_numpy_eq_9_to_12(kwargs):
  module, variables, feats = _setup(**kwargs)
  c_b = feats[:, 1, :4, :6]  # another size for B
  out, attn = jax.jit(lambda v, a, b: region_attention.rcm_pair(
      module, v, a, b, return_attention=True))(variables, feats[:, 0], c_b)
  for i in range(2):
    want, want_attn = _np_rcm(variables["params"], feats[i, 0].astype(float),
                              c_b[i].astype(float),
                              region_size=kwargs.get("region_size", (2, 2)),
                              raw=kwargs.get("regions") == "raw",
                              scale=kwargs.get("scale", False))
    np.testing.assert_allclose(out[i], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(attn[i], want_attn, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs", [{}, {"regions": "raw"},
                                    {"region_size": (3, 2), "scale": True}])
def test_pair_without_value_projection_is_eq_9_to_12(kwargs):
  """Eq. 11: softmax(S) C'_B, the fused regions as values (signs kept)."""
  module, variables, feats = _setup(project_value=False, **kwargs)
  assert "value" not in variables["params"]
  c_b = feats[:, 1, :4, :6]
  out, attn = jax.jit(lambda v, a, b: region_attention.rcm_pair(
      module, v, a, b, return_attention=True))(variables, feats[:, 0], c_b)
  negative = False
  for i in range(2):
    want, want_attn = _np_rcm(variables["params"], feats[i, 0].astype(float),
                              c_b[i].astype(float),
                              region_size=kwargs.get("region_size", (2, 2)),
                              raw=kwargs.get("regions") == "raw",
                              scale=kwargs.get("scale", False),
                              project_value=False)
    np.testing.assert_allclose(out[i], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(attn[i], want_attn, rtol=1e-5, atol=1e-6)
    negative |= bool((want - c_b[i].mean((0, 1)) / 2 < 0).any())
  assert negative  # the local term keeps negative values (no ReLU)
  # Group form with K = 3 against eq. 13-14 with C'_B values.
  module, variables, feats = _setup(k=3, hw=(4, 5), project_value=False)
  out = module.apply(variables, feats)
  for k in range(3):
    others = [j for j in range(3) if j != k]
    for i in range(2):
      # Two other images: both sets of regions in one softmax.
      p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64),
                                 variables["params"])
      regions = np.concatenate([
          _np_conv_same(np.concatenate([
              _np_pool(feats[i, j].astype(float), (2, 2), "avg"),
              _np_pool(feats[i, j].astype(float), (2, 2), "max")], -1),
                        p["fuse"]["kernel"], p["fuse"]["bias"]).reshape(-1, C)
          for j in others])
      q = np.maximum(_np_conv_same(feats[i, k].astype(float),
                                   p["query"]["kernel"], p["query"]["bias"]),
                     0).reshape(-1, D)
      keys = np.maximum(regions @ p["key"]["kernel"][0, 0] + p["key"]["bias"],
                        0)
      logits = q @ keys.T
      a = np.exp(logits - logits.max(1, keepdims=True))
      a /= a.sum(1, keepdims=True)
      glob = np.mean([feats[i, j].astype(float).mean((0, 1)) for j in others],
                     0)
      want = 0.5 * ((a @ regions).reshape(4, 5, C) + glob)
      np.testing.assert_allclose(out[i, k], want, rtol=1e-5, atol=1e-5)


def test_param_count():
  _, variables, _ = _setup()
  n = sum(a.size for a in jax.tree_util.tree_leaves(variables))
  # fuse 1x1 (2C -> C) + query/key (C -> D) + value (C -> C), with biases.
  assert n == (2 * C * C + C) + 2 * (C * D + D) + (C * C + C) == 86
  # Eq. 11 (no value projection): the value conv's C * C + C are gone.
  _, variables, _ = _setup(project_value=False)
  n = sum(a.size for a in jax.tree_util.tree_leaves(variables))
  assert n == (2 * C * C + C) + 2 * (C * D + D) == 66


def test_attention_rows_sum_to_one_and_self_columns_zero():
  module, variables, feats = _setup(k=3)
  out, attn = module.apply(variables, feats, return_attention=True)
  assert out.shape == feats.shape and attn.shape == (2, 3, 5, 7, 12)
  np.testing.assert_allclose(attn.sum(-1), 1.0, rtol=1e-6)
  for k in range(3):
    np.testing.assert_array_equal(attn[:, k, ..., 4 * k:4 * k + 4], 0.0)


def test_group_k2_equals_pair():
  module, variables, feats = _setup(k=2)
  group, attn = module.apply(variables, feats, return_attention=True)
  ab = region_attention.rcm_pair(module, variables, feats[:, 0], feats[:, 1])
  ba, attn_ba = region_attention.rcm_pair(module, variables, feats[:, 1],
                                          feats[:, 0], return_attention=True)
  np.testing.assert_allclose(group[:, 0], ab, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(group[:, 1], ba, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(attn[:, 1, ..., :4], attn_ba, rtol=1e-5)


def test_group_matches_numpy_concatenated_regions():
  """Eq. 13-14: image k attends over the other images' regions concatenated."""
  module, variables, feats = _setup(k=3, hw=(4, 5))
  out = module.apply(variables, feats)
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64),
                             variables["params"])
  f = feats.astype(np.float64)
  relu = lambda z: np.maximum(z, 0)
  for b in range(2):
    for k in range(3):
      others = [j for j in range(3) if j != k]
      regions = np.concatenate([
          _np_conv_same(np.concatenate([_np_pool(f[b, j], (2, 2), "avg"),
                                        _np_pool(f[b, j], (2, 2), "max")], -1),
                        p["fuse"]["kernel"], p["fuse"]["bias"]).reshape(-1, C)
          for j in others])
      q = relu(_np_conv_same(f[b, k], p["query"]["kernel"],
                             p["query"]["bias"])).reshape(-1, D)
      key = relu(regions @ p["key"]["kernel"][0, 0] + p["key"]["bias"])
      val = relu(regions @ p["value"]["kernel"][0, 0] + p["value"]["bias"])
      logits = q @ key.T
      a = np.exp(logits - logits.max(1, keepdims=True))
      a /= a.sum(1, keepdims=True)
      glob = np.mean([f[b, j].mean((0, 1)) for j in others], 0)
      want = 0.5 * ((a @ val).reshape(4, 5, C) + glob)
      np.testing.assert_allclose(out[b, k], want, rtol=1e-5, atol=1e-5)


def test_group_invariant_to_order_of_others_and_k_free():
  module, variables, feats = _setup(k=2)
  rng = np.random.default_rng(7)
  feats5 = rng.normal(size=(1, 5, 5, 7, C)).astype(np.float32)
  out = jax.jit(module.apply)(variables, feats5)  # initialised with K=2
  perm = [0, 3, 1, 4, 2]
  out_perm = module.apply(variables, feats5[:, perm])
  np.testing.assert_allclose(out_perm[:, 0], out[:, 0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out_perm, out[:, perm], rtol=1e-5, atol=1e-6)


class _PerturbOwnRegions(region_attention.RegionCorrespondence):
  """Adds a large offset to the regions of image 0 of every group."""
  group_size: int = 3

  def _regions(self, x):
    r = super()._regions(x)
    is_first = (jnp.arange(r.shape[0]) % self.group_size == 0)
    return r + 50.0 * is_first[:, None, None]


def test_self_mask_ignores_own_regions():
  module, variables, feats = _setup(k=3)
  out = module.apply(variables, feats)
  perturbed = _PerturbOwnRegions(C, key_features=D, group_size=3).apply(
      variables, feats)
  # Image 0 never sees its own regions; images 1 and 2 do see image 0's.
  np.testing.assert_allclose(perturbed[:, 0], out[:, 0], rtol=1e-6, atol=1e-6)
  assert np.abs(perturbed[:, 1:] - out[:, 1:]).max() > 1e-2


def test_grad_finite_and_bf16():
  module, variables, feats = _setup(k=3)
  g = jax.jit(jax.grad(lambda v: jnp.sum(module.apply(v, feats) ** 2)))(
      variables)
  assert all(np.isfinite(a).all() for a in jax.tree_util.tree_leaves(g))
  bf16 = region_attention.RegionCorrespondence(C, key_features=D,
                                               dtype=jnp.bfloat16)
  out = jax.jit(bf16.apply)(variables, feats)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32),
                             module.apply(variables, feats), rtol=0.1,
                             atol=0.1)


def _np_best_cosine(q, keys):
  """Max over keys of the cosine similarity, q [P, D], keys [N, D] -> [P]."""
  unit = lambda v: v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True),
                                  1e-6)
  return (unit(q) @ unit(keys).T).max(-1)


def test_match_score_pair_and_group_match_numpy():
  """The extra channel: best query-key cosine over the *other* images."""
  module, variables, feats = _setup(k=3, hw=(4, 5), match_score=True)
  plain = region_attention.RegionCorrespondence(C, key_features=D)
  out = module.apply(variables, feats)
  assert out.shape == feats.shape[:-1] + (C + 1,)
  # The first C channels are exactly the paper's RCM (same parameters).
  np.testing.assert_allclose(out[..., :C], plain.apply(variables, feats),
                             rtol=1e-6, atol=1e-6)
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64),
                             variables["params"])
  f = feats.astype(np.float64)
  relu = lambda z: np.maximum(z, 0)

  def keys_of(x):
    pooled = np.concatenate([_np_pool(x, (2, 2), "avg"),
                             _np_pool(x, (2, 2), "max")], -1)
    r = _np_conv_same(pooled, p["fuse"]["kernel"], p["fuse"]["bias"])
    return relu(r.reshape(-1, C) @ p["key"]["kernel"][0, 0] + p["key"]["bias"])

  for b in range(2):
    for k in range(3):
      q = relu(_np_conv_same(f[b, k], p["query"]["kernel"],
                             p["query"]["bias"])).reshape(-1, D)
      keys = np.concatenate([keys_of(f[b, j]) for j in range(3) if j != k])
      np.testing.assert_allclose(out[b, k, ..., C].reshape(-1),
                                 _np_best_cosine(q, keys), rtol=1e-5,
                                 atol=1e-5)
  pair = region_attention.rcm_pair(module, variables, feats[:, 0], feats[:, 1])
  assert pair.shape == feats[:, 0].shape[:-1] + (C + 1,)
  q = relu(_np_conv_same(f[0, 0], p["query"]["kernel"],
                         p["query"]["bias"])).reshape(-1, D)
  np.testing.assert_allclose(pair[0, ..., C].reshape(-1),
                             _np_best_cosine(q, keys_of(f[0, 1])), rtol=1e-5,
                             atol=1e-5)


def test_match_score_ignores_own_regions_and_has_finite_grad():
  module, variables, feats = _setup(k=3, match_score=True)
  out = module.apply(variables, feats)
  perturbed = _PerturbOwnRegions(C, key_features=D, group_size=3,
                                 match_score=True).apply(variables, feats)
  np.testing.assert_allclose(perturbed[:, 0], out[:, 0], rtol=1e-6, atol=1e-6)
  # All-zero queries (every query pre-activation negative) must not give NaN
  # gradients through the normalisation.
  params = dict(variables["params"])
  params["query"] = dict(params["query"],
                         bias=jnp.full((D,), -1e3, jnp.float32))
  grad = jax.jit(jax.grad(lambda v: jnp.sum(module.apply(v, feats)[..., C]
                                             ** 2)))
  g = grad({"params": params})
  assert all(np.isfinite(a).all() for a in jax.tree_util.tree_leaves(g))
  g = grad(variables)
  assert np.abs(g["params"]["key"]["kernel"]).max() > 0


def test_bad_input():
  module, variables, feats = _setup(k=2)
  with pytest.raises(ValueError, match="K >= 2"):
    module.apply(variables, feats[:, :1])
  with pytest.raises(ValueError, match="channels"):
    module.apply(variables, feats[..., :3])
  with pytest.raises(ValueError, match=r"\[B, K, H, W, C\]"):
    module.apply(variables, feats[:, 0])
  with pytest.raises(ValueError, match="'pooled' or 'raw'"):
    region_attention.RegionCorrespondence(C, regions="grid").init(
        jax.random.key(0), feats)
