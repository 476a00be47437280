"""Loss registry and compute_total_loss semantics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coseg_jax import losses
from coseg_jax.losses import registry

EXPECTED = ["coattention", "coattention_mask", "decision_bce", "lovasz_hinge",
            "lovasz_softmax", "lovasz_softmax_binary", "sigmoid_bce",
            "triplet"]


@pytest.fixture
def scratch_name():
  name = "_test_scratch_loss"
  yield name
  registry._LOSSES.pop(name, None)


def test_every_loss_of_this_package_is_registered():
  names = losses.available_losses()
  assert names == sorted(names)
  assert set(EXPECTED) <= set(names)


def test_register_get_and_duplicate(scratch_name):
  @losses.register_loss(scratch_name)
  def my_loss(*, x):
    return jnp.sum(x)
  assert losses.get_loss(scratch_name) is my_loss
  assert scratch_name in losses.available_losses()
  with pytest.raises(ValueError, match="already registered"):
    losses.register_loss(scratch_name)(lambda *, x: x)
  assert losses.get_loss(scratch_name) is my_loss  # Not replaced.


def test_unknown_name_lists_known_ones():
  with pytest.raises(ValueError, match="lovasz_hinge") as e:
    losses.get_loss("lovasz_hing")
  assert "lovasz_hing'" in str(e.value)


def test_total_is_weighted_sum_and_terms_reported():
  terms = {"a": jnp.float32(2.0), "b": jnp.float32(-0.5), "c": jnp.float32(3.)}
  weights = {"a": 0.5, "b": 4.0, "c": 1.0}
  total, weighted = losses.compute_total_loss(terms, weights)
  np.testing.assert_allclose(total, 0.5 * 2 - 4 * 0.5 + 3, rtol=1e-7)
  assert set(weighted) == {"a", "b", "c"}
  np.testing.assert_allclose(weighted["b"], -2.0)
  assert total.dtype == jnp.float32


def test_terms_computed_in_float32():
  terms = {"a": jnp.asarray(1.0 / 3.0, jnp.bfloat16), "b": jnp.float32(1e-4)}
  total, weighted = losses.compute_total_loss(terms, {"a": 1.0, "b": 1.0})
  assert total.dtype == jnp.float32 and weighted["a"].dtype == jnp.float32
  # 1e-4 would vanish in a bf16 sum with ~0.333.
  np.testing.assert_allclose(
      total, float(jnp.asarray(1.0 / 3.0, jnp.bfloat16)) + 1e-4, rtol=1e-6)


def test_missing_weight_and_unknown_weight_are_errors():
  with pytest.raises(ValueError, match=r"without a weight: \['b'\]"):
    losses.compute_total_loss({"a": 1.0, "b": 2.0}, {"a": 1.0})
  with pytest.raises(ValueError, match=r"not computed: \['z'\]"):
    losses.compute_total_loss({"a": 1.0}, {"a": 1.0, "z": 1.0})


def test_non_scalar_term_and_bad_weight_are_errors():
  with pytest.raises(ValueError, match="'a' must be a scalar"):
    losses.compute_total_loss({"a": jnp.ones(3)}, {"a": 1.0})
  with pytest.raises(ValueError, match="'a' is not finite"):
    losses.compute_total_loss({"a": 1.0}, {"a": float("nan")})
  with pytest.raises(ValueError, match="'a' must be a scalar number"):
    losses.compute_total_loss({"a": 1.0}, {"a": "one"})


def _terms(params):
  x = params["x"]
  return {
      "fine": jnp.sum(x ** 2),
      # Value NaN and gradient NaN.
      "nan_value": jnp.log(-jnp.sum(jnp.abs(x)) - 1.0),
      # Finite value (0) but NaN gradient: d sqrt(u)/du = inf at u = 0.
      "nan_grad": jnp.sqrt(jnp.sum(x - x)),
  }


def test_zero_weight_removes_gradient_exactly_and_blocks_nan():
  params = {"x": jnp.asarray([1.0, -2.0, 0.5])}
  weights = {"fine": 1.0, "nan_value": 0.0, "nan_grad": 0}

  def loss_fn(p):
    total, weighted = losses.compute_total_loss(_terms(p), weights)
    return total, weighted

  (total, weighted), g = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      params)
  np.testing.assert_allclose(total, 1 + 4 + 0.25, rtol=1e-7)
  np.testing.assert_array_equal(g["x"], 2 * params["x"])  # Exact.
  assert float(weighted["nan_value"]) == 0.0  # Reported, weighted to 0.
  assert float(weighted["nan_grad"]) == 0.0
  # The same terms with a tiny non-zero weight do poison the gradient: the
  # zero-weight path above is what protects it.
  _, g_bad = jax.value_and_grad(lambda p: losses.compute_total_loss(
      _terms(p), {"fine": 1.0, "nan_value": 0.0, "nan_grad": 1e-8})[0])(params)
  assert np.isnan(np.asarray(g_bad["x"])).any()


def test_zero_weight_removes_a_finite_terms_gradient():
  x = jnp.asarray([0.3, 0.7])
  g = jax.grad(lambda x: losses.compute_total_loss(
      {"a": jnp.sum(x), "b": jnp.sum(jnp.sin(x))}, {"a": 2.0, "b": 0.0})[0])(x)
  np.testing.assert_array_equal(g, [2.0, 2.0])


def test_traced_weights_under_jit():
  def f(w, x):
    return losses.compute_total_loss(
        {"a": jnp.sum(x), "b": jnp.log(-jnp.sum(x))}, {"a": 1.0, "b": w})[0]
  x = jnp.asarray([1.0, 2.0])
  # A traced zero weight keeps the total finite even though term b is NaN.
  np.testing.assert_allclose(jax.jit(f)(0.0, x), 3.0)
  np.testing.assert_array_equal(jax.jit(jax.grad(f, argnums=1))(0.0, x),
                                [1.0, 1.0])
  y = -x
  np.testing.assert_allclose(jax.jit(f)(2.0, y), -3.0 + 2 * np.log(3.0),
                             rtol=1e-6)
