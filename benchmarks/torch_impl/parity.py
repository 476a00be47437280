"""Shared by the parity tests and ``benchmarks/torch_parity.py``: a Flax model
with random variables and its torch port carrying the same weights.

Import only where torch is installed (it is a test-time reference).
"""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks import common
from benchmarks.torch_impl import blocks
from coseg_jax import models

METHODS = ("cyclesegnet", "cosegnet", "dcc", "coattention", "macosnet")


def bench_of(method):
  """The ``MethodBench`` of ``benchmarks/bench_<method>.py``."""
  return importlib.import_module(f"benchmarks.bench_{method}").BENCH


def random_variables(config, seed=1):
  """Random Flax variables of ``config``'s model from its shapes alone.

  No init is compiled (``jax.eval_shape``): kernels ~ N(0, 1/fan_in), biases
  and BN means ~ N(0, 0.1^2), BN scales ~ 1 + N(0, 0.1^2), variances in
  [0.6, 1.4] — values far from any default so that layout mistakes show.
  """
  model = models.get_method(config.method).build_model(config.model)
  k, side = int(config.data.group_size), int(config.data.image_size)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, k, side, side, 3), jnp.float32)))
  rng = np.random.RandomState(seed)

  def f(path, s):
    name = jax.tree_util.keystr(path)
    if "var" in name and "batch_stats" in name:
      return (0.6 + 0.8 * rng.rand(*s.shape)).astype(np.float32)
    if "scale" in name:
      return (1.0 + 0.1 * rng.normal(size=s.shape)).astype(np.float32)
    if len(s.shape) >= 2:
      fan_in = int(np.prod(s.shape[:-1]))
      return (rng.normal(size=s.shape) / np.sqrt(fan_in)).astype(np.float32)
    return (0.1 * rng.normal(size=s.shape)).astype(np.float32)
  return model, jax.tree_util.tree_map_with_path(f, shapes)


def to_nchw(x):
  """[B, K, H, W, C] numpy -> [B, K, C, H, W] torch."""
  return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 1, 4, 2, 3)


def parity_models(method, size="tiny", *, overrides=None, k=None, seed=0):
  """(Flax model, its random variables, the torch port with them, input x).

  ``x`` is float32 [1, K, S, S, 3] in [0, 1]; ``overrides`` set
  ``config.model`` fields of the benchmark config first.
  """
  bench = bench_of(method)
  config = common.make_config(bench, size=size)
  for key, value in (overrides or {}).items():
    config.model[key] = value
  model, variables = random_variables(config)
  tmodel = common.build_torch_model(bench, config)
  blocks.load_flax_variables(tmodel, variables)
  tmodel.eval()
  k = k or int(config.data.group_size)
  side = int(config.data.image_size)
  x = np.random.RandomState(seed).rand(1, k, side, side, 3).astype(np.float32)
  return model, variables, tmodel, x


def mask_logits_pair(model, variables, tmodel, x):
  """(ours, torch's) mask logits [B, K, H, W, 1] as float64 numpy."""
  ours = jax.jit(lambda v, x: model.apply(v, x).mask_logits)(variables, x)
  with torch.no_grad():
    out = tmodel(to_nchw(x))
  out = out[0] if isinstance(out, tuple) else out
  ref = out.permute(0, 1, 3, 4, 2).numpy()
  return np.asarray(ours, np.float64), np.asarray(ref, np.float64)


def relative_error(ours, ref) -> float:
  """max |ours - ref| / max(max |ref|, 1e-3)."""
  return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-3))
