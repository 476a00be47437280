"""Timing and memory helpers shared by the operator micro-benchmarks.

Kept apart from ``benchmarks/common.py`` (the JAX-vs-PyTorch method suite) so
that the micro-benchmarks import nothing but JAX.
"""

import statistics
import time
from typing import Callable, Sequence, Tuple

import jax


def device_line() -> str:
  """One line naming the device and JAX version, for report headers."""
  return (f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
          f"jax {jax.__version__}")


def time_calls(fn: Callable, args: Sequence, *, warmup: int,
               repeats: int) -> Tuple[float, float]:
  """(median, min) wall seconds of ``fn(*args)`` over ``repeats`` calls.

  Every call is blocked on (JAX dispatches asynchronously), after ``warmup``
  calls that absorb compilation.
  """
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times), min(times)


def compiled_memory_mib(fn: Callable, args: Sequence) -> Tuple[float, float]:
  """(temporary, output) MiB that XLA reports for ``jax.jit(fn)(*args)``.

  NaN where the backend gives no memory analysis.
  """
  jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
  try:
    mem = jitted.lower(*args).compile().memory_analysis()
  except NotImplementedError:
    mem = None
  if mem is None:
    return float("nan"), float("nan")
  return mem.temp_size_in_bytes / 2**20, mem.output_size_in_bytes / 2**20
