"""coseg_jax.nn.depthwise: the shifted multiply-add form equals XLA's
grouped convolution (values and gradients) with nn.Conv's parameters."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coseg_jax.nn import depthwise


@pytest.mark.parametrize("size,k,stride,dilation", [
    ((9, 13), 3, 1, 1), ((9, 13), 3, 2, 1), ((10, 7), 5, 2, 1),
    ((11, 11), 5, 1, 2), ((8, 12), 3, 1, 2), ((5, 6), 5, 2, 1)])
def test_shift_equals_grouped_convolution(size, k, stride, dilation):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2,) + size + (6,)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(k, k, 1, 6)), jnp.float32)
  f = lambda m: lambda x, w: depthwise.depthwise_conv(
      x, w, stride=stride, dilation=dilation, method=m)
  ref = jax.lax.conv_general_dilated(
      x, kernel, (stride, stride), "SAME", rhs_dilation=(dilation,) * 2,
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=6)
  got = f("shift")(x, kernel)
  assert got.shape == ref.shape == (2, -(-size[0] // stride),
                                    -(-size[1] // stride), 6)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(f("lax")(x, kernel), ref, rtol=1e-6, atol=1e-6)
  loss = lambda m: lambda x, w: jnp.sum(jnp.sin(f(m)(x, w)))
  g_shift = jax.grad(loss("shift"), argnums=(0, 1))(x, kernel)
  g_lax = jax.grad(loss("lax"), argnums=(0, 1))(x, kernel)
  for a, b in zip(g_shift, g_lax):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_same_padding_puts_the_extra_pixel_last():
  assert depthwise.same_padding(224, 3, 2) == (0, 1)
  assert depthwise.same_padding(225, 3, 2) == (1, 1)
  assert depthwise.same_padding(7, 5, 1, dilation=2) == (4, 4)


def test_module_has_nn_conv_parameters_and_values():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 8, 8, 4)),
                  jnp.float32)
  ours = depthwise.DepthwiseConv(3, strides=2)
  conv = nn.Conv(4, (3, 3), strides=(2, 2), padding="SAME",
                 feature_group_count=4, use_bias=False)
  v = ours.init(jax.random.PRNGKey(0), x)
  v_conv = conv.init(jax.random.PRNGKey(0), x)
  assert jax.tree.map(jnp.shape, v) == jax.tree.map(jnp.shape, v_conv)
  np.testing.assert_allclose(ours.apply(v_conv, x), conv.apply(v_conv, x),
                             rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="method must be one of"):
    depthwise.depthwise_conv(x, v["params"]["kernel"], method="fft")
  with pytest.raises(ValueError, match=r"kernel must be \[k, k, 1, 4\]"):
    depthwise.depthwise_conv(x, jnp.zeros((3, 3, 1, 5)))


def test_shift_backward_keeps_only_the_input_and_kernel():
  """Its residuals are x and the kernel, not the k*k taps of x (each as big
  as the output), so the backward pass reads x once instead of k*k copies."""
  x = jnp.ones((2, 9, 9, 4))
  kernel = jnp.ones((3, 3, 1, 4))
  _, vjp = jax.vjp(lambda a, w: depthwise.depthwise_conv(a, w, method="shift"),
                   x, kernel)
  shapes = sorted(leaf.shape for leaf in jax.tree_util.tree_leaves(vjp))
  assert shapes == [(2, 9, 9, 4), (3, 3, 1, 4)]


def test_shift_gradients_in_bfloat16_follow_float32():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(2, 10, 10, 8)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(3, 3, 1, 8)), jnp.float32)

  def grads(dtype):
    loss = lambda a, w: jnp.sum(jnp.sin(depthwise.depthwise_conv(
        a.astype(dtype), w.astype(dtype), stride=2, method="shift")
                                        ).astype(jnp.float32))
    return jax.grad(loss, argnums=(0, 1))(x, kernel)

  (dx32, dk32), (dx16, dk16) = grads(jnp.float32), grads(jnp.bfloat16)
  assert dx16.dtype == dk16.dtype == jnp.float32  # cast back by the astype
  np.testing.assert_allclose(dk16, dk32, rtol=0.05, atol=0.3)
  np.testing.assert_allclose(dx16, dx32, rtol=0.05, atol=0.1)
