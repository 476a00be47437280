"""ConvLSTM vs a float64 NumPy implementation of CycleSegNet eq. 1-6."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coseg_jax.nn import convlstm
from numeric_helpers import random_params

F, CIN, KS = 3, 2, 3


def _np_conv_same(x, kernel, bias=None):
  """Cross-correlation with SAME zero padding: x [B,H,W,Ci], kernel [k,k,Ci,Co]."""
  k = kernel.shape[0]
  p = k // 2
  xp = np.pad(x, ((0, 0), (p, k - 1 - p), (p, k - 1 - p), (0, 0)))
  h, w = x.shape[1:3]
  out = np.zeros(x.shape[:3] + (kernel.shape[-1],))
  for dy in range(k):
    for dx in range(k):
      out += np.einsum("bhwc,co->bhwo", xp[:, dy:dy + h, dx:dx + w],
                       kernel[dy, dx])
  return out if bias is None else out + bias


def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def _np_step(p, c, h, x, peephole, forget_bias):
  """Eq. 1-6 written out gate by gate (gate order i, f, o, g)."""
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), p)
  wx, bx = p["input_conv"]["kernel"], p["input_conv"]["bias"]
  wh = p["hidden_conv"]["kernel"]
  gate = lambda n: (_np_conv_same(x, wx[..., n * F:(n + 1) * F],
                                  bx[n * F:(n + 1) * F]) +
                    _np_conv_same(h, wh[..., n * F:(n + 1) * F]))
  zi, zf, zo, zg = gate(0), gate(1), gate(2), gate(3)
  if peephole:
    zi = zi + p["peephole_i"] * c
    zf = zf + p["peephole_f"] * c
  i, f = _sigmoid(zi), _sigmoid(zf + forget_bias)
  c_new = f * c + i * np.tanh(zg)
  if peephole:
    zo = zo + p["peephole_o"] * c_new
  h_new = _sigmoid(zo) * np.tanh(c_new)
  return c_new, h_new


def _random_params(params, seed):
  return random_params(params, seed, std=0.5)


@pytest.mark.parametrize("peephole,forget_bias", [(False, 0.0), (True, 1.0)])
def test_scan_equals_numpy_eq_1_to_6(peephole, forget_bias):
  rng = np.random.default_rng(0)
  t = 4
  xs = rng.normal(size=(2, t, 5, 6, CIN)).astype(np.float32)
  c0 = rng.normal(size=(2, 5, 6, F)).astype(np.float32)
  h0 = rng.normal(size=(2, 5, 6, F)).astype(np.float32)
  model = convlstm.ConvLSTM(F, KS, peephole=peephole, forget_bias=forget_bias)
  params = model.init(jax.random.key(0), (c0, h0), xs)["params"]
  params = _random_params(params, 1)
  (c_t, h_t), hs = jax.jit(model.apply)({"params": params}, (c0, h0), xs)
  assert hs.shape == (2, t, 5, 6, F)

  c, h = c0.astype(np.float64), h0.astype(np.float64)
  for step in range(t):
    c, h = _np_step(params["cell"], c, h, xs[:, step].astype(np.float64),
                    peephole, forget_bias)
    np.testing.assert_allclose(hs[:, step], h, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(c_t, c, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(h_t, h, rtol=1e-5, atol=1e-5)


def test_param_tree_and_count():
  cell = convlstm.ConvLSTMCell(F, KS, peephole=True)
  c = jnp.zeros((1, 4, 4, F))
  params = cell.init(jax.random.key(0), (c, c), jnp.zeros((1, 4, 4, CIN)))
  n = sum(a.size for a in jax.tree_util.tree_leaves(params))
  # input conv 3*3*2*12 + 12 bias, hidden conv 3*3*3*12, 3 peepholes of 3.
  assert n == 3 * 3 * CIN * 4 * F + 4 * F + 3 * 3 * F * 4 * F + 3 * F == 561


def test_scan_equals_unrolled_cell_and_shares_params():
  rng = np.random.default_rng(2)
  xs = jnp.asarray(rng.normal(size=(1, 3, 4, 4, CIN)), jnp.float32)
  c0 = jnp.asarray(rng.normal(size=(1, 4, 4, F)), jnp.float32)
  model = convlstm.ConvLSTM(F, KS)
  params = model.init(jax.random.key(3), (c0, c0), xs)["params"]
  # One set of weights for all steps: no time axis on any parameter.
  assert params["cell"]["input_conv"]["kernel"].shape == (KS, KS, CIN, 4 * F)
  _, hs = model.apply({"params": params}, (c0, c0), xs)
  cell_step = jax.jit(convlstm.ConvLSTMCell(F, KS).apply)
  carry = (c0, c0)
  for step in range(3):
    carry, h = cell_step({"params": params["cell"]}, carry, xs[:, step])
    np.testing.assert_allclose(hs[:, step], h, rtol=1e-6, atol=1e-6)


class _Mix(nn.Module):
  """Stand-in for the RCM: mixes the K branches' states (mean over K)."""

  @nn.compact
  def __call__(self, s):
    return nn.Dense(CIN)(s + jnp.mean(s, axis=1, keepdims=True))


def test_feedback_scan_equals_python_loop():
  rng = np.random.default_rng(4)
  c0 = jnp.asarray(rng.normal(size=(2, 3, 4, 4, F)), jnp.float32)
  h0 = jnp.asarray(rng.normal(size=(2, 3, 4, 4, F)), jnp.float32)
  model = convlstm.FeedbackConvLSTM(F, input_module=_Mix(), num_steps=5)
  params = model.init(jax.random.key(5), (c0, h0))["params"]
  (c_t, h_t), hs = jax.jit(model.apply)({"params": params}, (c0, h0))
  assert hs.shape == (5, 2, 3, 4, 4, F)

  mix, cell = _Mix(), convlstm.ConvLSTMCell(F, KS)
  step_fn = jax.jit(lambda carry: cell.apply(
      {"params": params["cell"]}, carry,
      mix.apply({"params": params["input_module"]}, carry[0])))
  carry = (c0, h0)
  for step in range(5):
    carry, h = step_fn(carry)
    np.testing.assert_allclose(hs[step], h, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(c_t, carry[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("unroll", [1, 2, 5])
def test_unroll_changes_neither_outputs_nor_gradients(unroll):
  """Partial or no unrolling (default: all 5 steps) computes the same thing;
  only the compiled loop differs (the default is there for CPU speed)."""
  rng = np.random.default_rng(6)
  c0 = jnp.asarray(rng.normal(size=(2, 3, 4, 4, F)), jnp.float32)
  h0 = jnp.asarray(rng.normal(size=(2, 3, 4, 4, F)), jnp.float32)
  full = convlstm.FeedbackConvLSTM(F, input_module=_Mix(), num_steps=5)
  other = convlstm.FeedbackConvLSTM(F, input_module=_Mix(), num_steps=5,
                                    unroll=unroll)
  params = full.init(jax.random.key(5), (c0, h0))["params"]

  def loss(model, p):
    (c, h), hs = model.apply({"params": p}, (c0, h0))
    return jnp.sum(hs ** 2) + jnp.sum(c * h)

  for fn in (loss, jax.grad(loss, argnums=1)):
    a = jax.jit(functools.partial(fn, full))(params)
    b = jax.jit(functools.partial(fn, other))(params)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
      np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
  xs = jnp.asarray(rng.normal(size=(2, 5, 4, 4, CIN)), jnp.float32)
  seq = convlstm.ConvLSTM(F, KS)
  v = seq.init(jax.random.key(1), (c0[:, 0], h0[:, 0]), xs)
  np.testing.assert_allclose(
      seq.apply(v, (c0[:, 0], h0[:, 0]), xs)[1],
      convlstm.ConvLSTM(F, KS, unroll=unroll).apply(
          v, (c0[:, 0], h0[:, 0]), xs)[1], rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="unroll"):
    convlstm.FeedbackConvLSTM(F, input_module=_Mix(), num_steps=2,
                              unroll=0).init(jax.random.key(0), (c0, h0))


def test_bf16_compute_keeps_carry_dtype_and_grad():
  c0 = jnp.ones((1, 4, 4, F))
  xs = jnp.ones((1, 2, 4, 4, CIN))
  model = convlstm.ConvLSTM(F, KS, dtype=jnp.bfloat16)
  params = model.init(jax.random.key(0), (c0, c0), xs)
  (c, h), hs = jax.jit(model.apply)(params, (c0, c0), xs)
  assert c.dtype == h.dtype == jnp.float32
  assert params["params"]["cell"]["input_conv"]["kernel"].dtype == jnp.float32
  g = jax.jit(jax.grad(lambda p: jnp.sum(model.apply(p, (c0, c0), xs)[1])))(
      params)
  assert all(np.isfinite(a).all() for a in jax.tree_util.tree_leaves(g))


def test_bad_carry_width():
  cell = convlstm.ConvLSTMCell(F)
  with pytest.raises(ValueError, match="features=3"):
    cell.init(jax.random.key(0), (jnp.zeros((1, 4, 4, 5)),) * 2,
              jnp.zeros((1, 4, 4, CIN)))


def test_cycle_refinement_pattern_with_rcm():
  """CRM: X_k = RCM of the branches' cell states, one shared ConvLSTM."""
  from coseg_jax.nn import region_attention
  rng = np.random.default_rng(6)
  enc = jnp.asarray(rng.normal(size=(1, 2, 5, 5, F)), jnp.float32)
  rcm = region_attention.RegionCorrespondence(F, key_features=2)
  model = convlstm.FeedbackConvLSTM(F, input_module=rcm, num_steps=3)
  params = model.init(jax.random.key(7), (enc, enc))["params"]
  (c_t, _), hs = jax.jit(model.apply)({"params": params}, (enc, enc))
  cell = convlstm.ConvLSTMCell(F, KS)

  @jax.jit
  def step(carry):
    rcm_vars = {"params": params["input_module"]}
    x_a = region_attention.rcm_pair(rcm, rcm_vars, carry[0][:, 0],
                                    carry[0][:, 1])
    x_b = region_attention.rcm_pair(rcm, rcm_vars, carry[0][:, 1],
                                    carry[0][:, 0])
    return cell.apply({"params": params["cell"]}, carry,
                      jnp.stack([x_a, x_b], axis=1))

  carry = (enc, enc)  # H_0 = C_0 = encoder features, as in the paper
  for _ in range(3):
    carry, h = step(carry)
  np.testing.assert_allclose(hs[-1], h, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(c_t, carry[0], rtol=1e-5, atol=1e-5)
