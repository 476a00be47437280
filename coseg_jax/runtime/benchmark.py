"""``--mode benchmark``: compile and time a config's train step and inference.

The step is the trainer's own: ``trainers.get_trainer(config.trainer).
build_program(config)`` assembles model, state (with ``config.init``),
optimiser, frozen subtrees, dtype, accumulation and sharding exactly as
training does, and this module times that object's ``train_step``; the
inference is ``steps.make_inference``, the function evaluation and
prediction run. Nothing is assembled a second time here, so a benchmark
figure is the cost of the step a run takes.

On random inputs of the configured shapes (``train.global_batch_size``
groups of ``data.group_size`` images at ``data.image_size``; no data is
read) it measures, on the config's mesh:

- compile time of the train step and of the inference;
- step time: the median (and min/max) over ``benchmark.steps`` timed calls
  after ``benchmark.warmup`` untimed ones, each call blocked on
  (``block_until_ready``) so that asynchronous dispatch cannot hide work;
- examples/s: groups (and images = groups x K) per second, from the median;
- peak memory: ``peak_bytes_in_use`` of ``jax.devices()[0].memory_stats()``
  where the backend reports it (GPU, TPU); otherwise (CPU) XLA's static
  ``compiled.memory_analysis()`` of the train step (arguments + outputs +
  temporaries - aliased bytes), labelled as an estimate;
- FLOPs: XLA's ``compiled.cost_analysis()['flops']`` of both programs (per
  device: the SPMD-partitioned program).
"""

import statistics
import time
from typing import Any, Dict

import jax
import numpy as np

from coseg_jax.runtime import feature_cache
from coseg_jax.runtime import sharding
from coseg_jax.runtime import state as state_lib
from coseg_jax.runtime import steps
from coseg_jax.runtime import trainers

_MIB = 1024.0 * 1024.0


def fake_batch(shape, seed: int, feature_shapes=None,
               feature_dtype="float16") -> Dict[str, np.ndarray]:
  """A batch of the data contract with random content, images [B,K,H,W,3].

  With ``feature_shapes`` ({level: [h, w, C]}), the batch of a run that
  trains from the feature cache: ``features/<level>`` [B, K, h, w, C] in
  ``feature_dtype`` instead of images.
  """
  b, k, h, w, _ = shape
  rng = np.random.default_rng(seed)
  masks = (rng.uniform(size=(b, k, h, w, 1)) > 0.5).astype(np.float32)
  if feature_shapes:
    batch = {f"features/{level}": rng.uniform(size=(b, k) + tuple(s)).astype(
        feature_dtype) for level, s in feature_shapes.items()}
    batch.update(masks=masks, valid=np.ones_like(masks),
                 has_common=np.ones((b,), np.int32),
                 class_ids=np.zeros((b, k), np.int32),
                 record_ids=np.arange(b * k, dtype=np.int32).reshape(b, k))
    return batch
  images = rng.uniform(size=shape).astype(np.float32)
  return {
      "images": images,
      "masks": masks,
      # The co-attention mask loss (stage 2, eq. 7) reads the proposals
      # selected from the current maps (M) and from the stage-1 maps (M~).
      "object_masks": masks,
      "fixed_masks": (rng.uniform(size=(b, k, h, w, 1)) > 0.5).astype(
          np.float32),
      "valid": np.ones((b, k, h, w, 1), np.float32),
      "has_common": np.ones((b,), np.int32),
      "class_ids": np.zeros((b, k), np.int32),
      "record_ids": np.arange(b * k, dtype=np.int32).reshape(b, k),
  }


def memory_estimate(compiled) -> Dict[str, Any]:
  """XLA's static memory estimate of a compiled program (MiB)."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    m = None
  if m is None:
    return {"peak_memory_mib": float("nan"),
            "peak_memory_source": "unavailable"}
  total = (m.argument_size_in_bytes + m.output_size_in_bytes +
           m.temp_size_in_bytes - m.alias_size_in_bytes)
  return {"peak_memory_mib": total / _MIB,
          "peak_memory_source": "XLA memory_analysis estimate "
                                "(args + outputs + temps - aliased)"}


def xla_flops(compiled) -> float:
  """FLOPs of a compiled program by XLA's cost analysis (nan if unknown)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return float("nan")
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return float("nan")
  return float(cost["flops"])


def time_calls(fn, n: int):
  """Wall times (s) of ``n`` blocked calls of ``fn``."""
  times = []
  for _ in range(n):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return times


def prepare(config):
  """The trainer's program for ``config`` and a random batch for its step.

  Returns:
    (program, host batch (numpy), device batch placed as the trainer
    places it, batch shape [B, K, H, W, 3], whether the step reads cached
    features).
  """
  trainer = trainers.get_trainer(config.get("trainer", "supervised"))
  mesh = sharding.make_mesh(config.mesh.get("data", -1))
  program = trainer.build_program(config, mesh=mesh)
  _, k, h, w, c = state_lib.input_shape(config)
  if program.mesh is None:  # a one-device trainer (co-attention)
    global_batch = 1
    k = int(config.coattention.batch_size) if config.get(
        "coattention") else k
  else:
    global_batch = int(config.train.global_batch_size)
    n_dev = program.mesh.devices.size
    if global_batch % n_dev:
      raise ValueError(f"config.train.global_batch_size={global_batch} is "
                       f"not divisible by the {n_dev} devices of the mesh")
  shape = (global_batch, k, h, w, c)
  feature_shapes = None
  if feature_cache.enabled(config):
    feature_cache.check(config, program)
    feature_shapes = feature_cache.feature_shapes(config, program, (h, w))
  host_batch = fake_batch(shape, int(config.train.seed), feature_shapes,
                          config.data.feature_cache.get("dtype", "float16"))
  if program.mesh is None:
    batch = jax.device_put(host_batch)
  else:
    batch = sharding.shard_batch(host_batch, program.mesh)
  batch.update({key: jax.device_put(v) for key, v in
                program.example_extras.items()})
  return program, host_batch, batch, shape, feature_shapes is not None


def run_benchmark(config) -> Dict[str, Any]:
  """Compiles and times ``config``'s train step and inference.

  Returns:
    dict with the labelled figures (see the module docstring).
  """
  bench = config.get("benchmark", {}) or {}
  n_steps = int(bench.get("steps", 10))
  warmup = int(bench.get("warmup", 2))
  program, _, batch, shape, cached = prepare(config)
  global_batch, k = shape[0], shape[1]
  n_dev = 1 if program.mesh is None else program.mesh.devices.size

  start = time.perf_counter()
  compiled_step = program.train_step.lower(program.state, batch).compile()
  train_compile = time.perf_counter() - start
  holder = {"state": program.state}

  def one_step():
    holder["state"], metrics = compiled_step(holder["state"], batch)
    return metrics["loss"]

  time_calls(one_step, warmup)
  train_times = time_calls(one_step, n_steps)

  variables = holder["state"].variables()
  infer = steps.make_inference(config, program.model, program.mesh)
  host_images = fake_batch(shape, int(config.train.seed))["images"]
  images = (jax.device_put(host_images) if program.mesh is None else
            sharding.shard_batch({"images": host_images},
                                 program.mesh)["images"])
  start = time.perf_counter()
  compiled_infer = infer.lower(variables, images).compile()
  infer_compile = time.perf_counter() - start
  time_calls(lambda: compiled_infer(variables, images), warmup)
  infer_times = time_calls(lambda: compiled_infer(variables, images), n_steps)

  def phase(name, compile_s, times):
    """The timings of one phase (train or infer), keys prefixed by it."""
    step = statistics.median(times)
    return {f"{name}_compile_s": compile_s,
            f"{name}_step_ms": 1e3 * step,
            f"{name}_step_min_ms": 1e3 * min(times),
            f"{name}_step_max_ms": 1e3 * max(times),
            f"{name}_groups_per_s": global_batch / step,
            f"{name}_images_per_s": global_batch * k / step}

  report = {
      "method": config.method,
      "trainer": config.get("trainer", "supervised"),
      "backbone": config.model.get("backbone"),
      "dtype": config.model.get("dtype", "float32"),
      "frozen": ["/".join(p) for p in program.frozen],
      "thawed": ["/".join(p) for p in program.thawed],
      "inputs": "cached features" if cached else "images",
      "batch_shape": shape,
      "devices": f"{n_dev} x {jax.devices()[0].device_kind}",
      "timed_steps": n_steps,
      **phase("train", train_compile, train_times),
      **phase("infer", infer_compile, infer_times),
      "train_flops": xla_flops(compiled_step),
      "infer_flops": xla_flops(compiled_infer),
      "infer_memory_mib": memory_estimate(compiled_infer)["peak_memory_mib"],
  }
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    stats = None
  if stats and "peak_bytes_in_use" in stats:
    report["peak_memory_mib"] = stats["peak_bytes_in_use"] / _MIB
    report["peak_memory_source"] = "device memory_stats peak_bytes_in_use"
  else:
    report.update(memory_estimate(compiled_step))
  return report


def format_report(report: Dict[str, Any]) -> str:
  """The figures, one labelled line each."""
  frozen = (f", frozen {', '.join(report['frozen'])}" if report.get("frozen")
            else "")
  if report.get("thawed"):
    frozen += f" except {len(report['thawed'])} trained subtrees in it"
  lines = [f"benchmark: {report['method']} (backbone {report['backbone']}, "
           f"{report['dtype']}{frozen}, trains from {report['inputs']}), "
           f"batch {tuple(report['batch_shape'])} on {report['devices']}, "
           f"median of {report['timed_steps']} steps"]
  rows = [
      ("train step compile time", f"{report['train_compile_s']:.2f} s"),
      ("train step time", f"{report['train_step_ms']:.1f} ms (min "
                          f"{report['train_step_min_ms']:.1f}, max "
                          f"{report['train_step_max_ms']:.1f})"),
      ("train examples/s", f"{report['train_groups_per_s']:.1f} groups/s, "
                           f"{report['train_images_per_s']:.1f} images/s"),
      ("inference compile time", f"{report['infer_compile_s']:.2f} s"),
      ("inference step time", f"{report['infer_step_ms']:.1f} ms (min "
                              f"{report['infer_step_min_ms']:.1f}, max "
                              f"{report['infer_step_max_ms']:.1f})"),
      ("inference examples/s", f"{report['infer_groups_per_s']:.1f} groups/s,"
                               f" {report['infer_images_per_s']:.1f} "
                               f"images/s"),
      ("peak memory", f"{report['peak_memory_mib']:.1f} MiB "
                      f"({report['peak_memory_source']})"),
  ]
  lines += [f"  {label:<26}{value}" for label, value in rows]
  return "\n".join(lines)
