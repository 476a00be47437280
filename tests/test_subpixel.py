"""ConvTranspose2x (sub-pixel form) against flax's ConvTranspose."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coseg_jax.nn import subpixel

CASES = [((3, 3), ((1, 2), (1, 2))),   # torch k3, s2, p1, output_padding 1
         ((4, 4), ((2, 2), (1, 3))),
         ((2, 3), ((0, 2), (2, 1))),
         ((1, 1), ((0, 1), (1, 0)))]


def _pair(kernel_size, padding, use_bias, dtype=None):
  ref = nn.ConvTranspose(6, kernel_size, strides=(2, 2), padding=padding,
                         use_bias=use_bias, dtype=dtype)
  new = subpixel.ConvTranspose2x(6, kernel_size, padding, use_bias=use_bias,
                                 dtype=dtype)
  return ref, new


@pytest.mark.parametrize("kernel_size,padding", CASES)
@pytest.mark.parametrize("use_bias", [False, True])
def test_matches_flax_conv_transpose(kernel_size, padding, use_bias):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 7, 4))
  ref, new = _pair(kernel_size, padding, use_bias)
  params = ref.init(jax.random.PRNGKey(1), x)
  if use_bias:  # a non-zero bias, so that adding it is tested too
    params = jax.tree_util.tree_map(lambda p: p + 0.3, params)
  want = ref.apply(params, x)
  got = new.apply(params, x)
  assert got.shape == want.shape == (2, 10, 14, 6)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_same_parameters_and_initialisation_as_flax():
  x = jnp.ones((1, 4, 4, 3))
  ref, new = _pair((3, 3), ((1, 2), (1, 2)), True)
  a = ref.init(jax.random.PRNGKey(2), x)
  b = new.init(jax.random.PRNGKey(2), x)
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for p, q in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(p, q)


def test_gradients_match_flax_conv_transpose():
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 6, 6, 4))
  ref, new = _pair((3, 3), ((1, 2), (1, 2)), True)
  params = ref.init(jax.random.PRNGKey(4), x)
  target = jax.random.normal(jax.random.PRNGKey(5), (2, 12, 12, 6))
  loss = lambda m: lambda p, x: jnp.sum((m.apply(p, x) - target) ** 2)
  g_ref = jax.grad(loss(ref), argnums=(0, 1))(params, x)
  g_new = jax.grad(loss(new), argnums=(0, 1))(params, x)
  for p, q in zip(jax.tree_util.tree_leaves(g_ref),
                  jax.tree_util.tree_leaves(g_new)):
    np.testing.assert_allclose(q, p, rtol=1e-4, atol=1e-4)


def test_bfloat16_computation():
  x = jax.random.normal(jax.random.PRNGKey(6), (1, 4, 4, 8))
  ref, new = _pair((3, 3), ((1, 2), (1, 2)), False, jnp.bfloat16)
  params = ref.init(jax.random.PRNGKey(7), x)
  got = new.apply(params, x)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.float32(got), np.float32(ref.apply(params, x)),
                             rtol=5e-2, atol=5e-2)


def test_the_compiled_convolution_has_no_input_dilation():
  x = jnp.ones((1, 8, 8, 4))
  new = subpixel.ConvTranspose2x(4)
  params = new.init(jax.random.PRNGKey(0), x)
  hlo = jax.jit(new.apply).lower(params, x).as_text(dialect="hlo")
  convs = [line for line in hlo.splitlines() if " convolution(" in line]
  assert len(convs) == 1 and "lhs_dilate" not in convs[0], convs


def test_padding_that_is_not_2x_is_rejected():
  with pytest.raises(ValueError, match="does not give a 2x output"):
    subpixel.ConvTranspose2x(4, (3, 3), ((1, 1), (1, 2))).init(
        jax.random.PRNGKey(0), jnp.ones((1, 4, 4, 2)))
