"""benchmarks/timing.py: the micro-benchmarks' timing and memory helpers."""

import jax.numpy as jnp
import numpy as np

from benchmarks import timing


def test_time_calls_counts_warmup_and_repeats_and_orders_stats():
  calls = []

  def fn(x):
    calls.append(1)
    return x * 2

  median, fastest = timing.time_calls(fn, (jnp.ones(3),), warmup=2, repeats=5)
  assert len(calls) == 7
  assert 0 < fastest <= median


def test_compiled_memory_reports_the_output_size():
  x = jnp.ones((256, 256), jnp.float32)
  temp, out = timing.compiled_memory_mib(lambda a: a @ a + 1, (x,))
  # CPU reports memory analysis: the output is one 256 x 256 float32 array.
  np.testing.assert_allclose(out, 256 * 256 * 4 / 2**20)
  assert temp >= 0


def test_device_line_names_backend():
  assert "jax " in timing.device_line()
