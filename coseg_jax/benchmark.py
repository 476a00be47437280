"""``--mode benchmark``: compile and time a config's train step and inference.

On random inputs of the configured shapes (``train.global_batch_size`` groups
of ``data.group_size`` images at ``data.image_size``; no data is read) this
measures, on the config's mesh:

- compile time of the jitted train step (``coseg_jax.train.make_train_step``,
  the exact step training runs) and of the jitted inference
  (``model.apply(..., train=False)`` on the same batch shape);
- step time: the median over ``benchmark.steps`` timed calls after
  ``benchmark.warmup`` untimed ones, each call blocked on
  (``block_until_ready``) so that asynchronous dispatch cannot hide work;
- examples/s: groups (and images = groups x K) per second, from the median;
- peak memory: ``peak_bytes_in_use`` of ``jax.devices()[0].memory_stats()``
  where the backend reports it (GPU, TPU); otherwise (CPU) XLA's static
  ``compiled.memory_analysis()`` of the train step, reported as
  arguments + outputs + temporaries - aliased (donated) bytes, and labelled
  as an estimate;
- FLOPs: XLA's ``compiled.cost_analysis()['flops']`` of the train step and of
  the inference program (per device: the SPMD-partitioned program), for the
  fraction-of-peak figures of ``benchmarks/``.
"""

import statistics
import time
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np

_MIB = 1024.0 * 1024.0


def _fake_batch(shape, seed: int) -> Dict[str, np.ndarray]:
  """A batch of the data contract with random content."""
  b, k, h, w, _ = shape
  rng = np.random.default_rng(seed)
  images = rng.uniform(size=shape).astype(np.float32)
  masks = (rng.uniform(size=(b, k, h, w, 1)) > 0.5).astype(np.float32)
  return {
      "images": images,
      "masks": masks,
      # The co-attention mask loss (stage 2) reads the selected proposals.
      "object_masks": masks,
      "valid": np.ones((b, k, h, w, 1), np.float32),
      "has_common": np.ones((b,), np.int32),
      "class_ids": np.zeros((b, k), np.int32),
      "record_ids": np.arange(b * k, dtype=np.int32).reshape(b, k),
  }


def _memory_estimate(compiled) -> Dict[str, Any]:
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


def _time_calls(fn, n: int):
  times = []
  for _ in range(n):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return times


def run_benchmark(config) -> Dict[str, Any]:
  """Compiles and times ``config``'s train step and inference.

  Returns:
    dict with the labelled figures (see the module docstring).
  """
  from coseg_jax import models  # pylint: disable=g-import-not-at-top
  from coseg_jax import sharding  # pylint: disable=g-import-not-at-top
  from coseg_jax import train  # pylint: disable=g-import-not-at-top

  bench = config.get("benchmark", {}) or {}
  steps = int(bench.get("steps", 10))
  warmup = int(bench.get("warmup", 2))
  spec = models.get_method(config.method)
  model = spec.build_model(config.model)
  mesh = sharding.make_mesh(config.mesh.get("data", -1))
  n_dev = mesh.devices.size
  global_batch = int(config.train.global_batch_size)
  if global_batch % n_dev:
    raise ValueError(f"config.train.global_batch_size={global_batch} is not "
                     f"divisible by the {n_dev} devices of the mesh")
  _, k, h, w, c = train.input_shape(config)
  shape = (global_batch, k, h, w, c)
  tx, _ = train.make_optimizer(config.optimizer, int(config.train.num_steps))
  state, state_sh = train.create_train_state(
      model=model, tx=tx, rng=jax.random.PRNGKey(int(config.train.seed)),
      sample_shape=(1, k, h, w, c), mesh=mesh,
      param_rules=spec.param_sharding_rules)
  loss_config = dict(config.loss) if config.get("loss") else dict(
      spec.default_loss)
  step_fn = train.make_train_step(model=model, loss_fn=spec.loss_fn,
                                  loss_config=loss_config, mesh=mesh,
                                  state_shardings=state_sh)
  batch = sharding.shard_batch(_fake_batch(shape, int(config.train.seed)),
                               mesh)

  start = time.perf_counter()
  compiled_step = step_fn.lower(state, batch).compile()
  train_compile = time.perf_counter() - start

  holder = {"state": state}

  def one_step():
    holder["state"], metrics = compiled_step(holder["state"], batch)
    return metrics["loss"]

  _time_calls(one_step, warmup)
  train_times = _time_calls(one_step, steps)

  params = holder["state"].params
  variables = {"params": params}
  if holder["state"].batch_stats:
    variables["batch_stats"] = holder["state"].batch_stats

  @jax.jit
  def infer(variables, images):
    out = model.apply(variables, images, train=False)
    return jax.nn.sigmoid(out.mask_logits.astype(jnp.float32))

  start = time.perf_counter()
  compiled_infer = infer.lower(variables, batch["images"]).compile()
  infer_compile = time.perf_counter() - start
  _time_calls(lambda: compiled_infer(variables, batch["images"]), warmup)
  infer_times = _time_calls(
      lambda: compiled_infer(variables, batch["images"]), steps)

  train_step = statistics.median(train_times)
  infer_step = statistics.median(infer_times)
  report = {
      "method": config.method,
      "backbone": config.model.get("backbone"),
      "dtype": config.model.get("dtype", "float32"),
      "batch_shape": shape,
      "devices": f"{n_dev} x {jax.devices()[0].device_kind}",
      "timed_steps": steps,
      "train_compile_s": train_compile,
      "train_step_ms": 1e3 * train_step,
      "train_groups_per_s": global_batch / train_step,
      "train_images_per_s": global_batch * k / train_step,
      "infer_compile_s": infer_compile,
      "infer_step_ms": 1e3 * infer_step,
      "infer_groups_per_s": global_batch / infer_step,
      "infer_images_per_s": global_batch * k / infer_step,
      "train_flops": xla_flops(compiled_step),
      "infer_flops": xla_flops(compiled_infer),
      "infer_memory_mib": _memory_estimate(compiled_infer)["peak_memory_mib"],
  }
  stats = None
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    stats = None
  if stats and "peak_bytes_in_use" in stats:
    report["peak_memory_mib"] = stats["peak_bytes_in_use"] / _MIB
    report["peak_memory_source"] = "device memory_stats peak_bytes_in_use"
  else:
    report.update(_memory_estimate(compiled_step))
  return report


def print_report(report: Dict[str, Any]) -> None:
  """Prints the figures, one labelled line each."""
  print(f"benchmark: {report['method']} (backbone {report['backbone']}, "
        f"{report['dtype']}), batch {tuple(report['batch_shape'])} on "
        f"{report['devices']}, median of {report['timed_steps']} steps")
  rows = [
      ("train step compile time", f"{report['train_compile_s']:.2f} s"),
      ("train step time", f"{report['train_step_ms']:.1f} ms"),
      ("train examples/s", f"{report['train_groups_per_s']:.1f} groups/s, "
                           f"{report['train_images_per_s']:.1f} images/s"),
      ("inference compile time", f"{report['infer_compile_s']:.2f} s"),
      ("inference step time", f"{report['infer_step_ms']:.1f} ms"),
      ("inference examples/s", f"{report['infer_groups_per_s']:.1f} groups/s,"
                               f" {report['infer_images_per_s']:.1f} images/s"),
      ("peak memory", f"{report['peak_memory_mib']:.1f} MiB "
                      f"({report['peak_memory_source']})"),
  ]
  for label, value in rows:
    print(f"  {label:<26}{value}")
