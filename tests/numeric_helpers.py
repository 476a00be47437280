"""Numeric helpers shared by the tests: variables, finite differences and
random parameters (the ImageNet evaluation crop is benchmarks.imagenet)."""

import jax
import jax.numpy as jnp
import numpy as np


def abstract(model, shape):
  """The variables' shapes and dtypes for an input of ``shape`` (no
  compilation: ``eval_shape`` of ``init``)."""
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                           jnp.zeros(shape), train=False))


def np_init(model, shape, seed=0):
  """Variables without compiling ``init`` (slow on a busy CPU): the shapes
  from ``eval_shape``, LeCun-normal kernels, zero biases, unit BN
  scales/variances."""
  rng = np.random.default_rng(seed)

  def make(path, leaf):
    name = jax.tree_util.keystr(path[-1:])
    if "kernel" in name:
      fan_in = int(np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(fan_in),
                         jnp.float32)
    if "scale" in name or "var" in name:
      return jnp.ones(leaf.shape, jnp.float32)
    return jnp.zeros(leaf.shape, jnp.float32)

  return jax.tree_util.tree_map_with_path(make, abstract(model, shape))


def fd_grad(f, x, h=1e-6):
  """Central finite differences of a float64 NumPy function."""
  x = np.asarray(x, np.float64)
  g = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    xp, xm = x.copy(), x.copy()
    xp[idx] += h
    xm[idx] -= h
    g[idx] = (f(xp) - f(xm)) / (2 * h)
  return g


def random_params(params, seed, std):
  """Every leaf of ``params`` replaced by N(0, std) float32 draws, so that
  peepholes and biases are non-zero too."""
  leaves, tree = jax.tree_util.tree_flatten(params)
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_unflatten(
      tree, [jnp.asarray(rng.normal(0, std, l.shape), jnp.float32)
             for l in leaves])

