"""The generic training loop shared by every supervised method.

``train_and_evaluate(config, workdir)`` runs: mesh, data
(``data_pipelines.pipeline.make_dataset``, this process's shard), the train
program of :func:`coseg_jax.runtime.steps.build_train_program` (model, state
and jitted step), automatic resume from ``workdir``, logging, periodic
evaluation (the config's evaluators), checkpoints and pre-emption handling.

Design points:

* One ``jax.jit`` step with ``NamedSharding``s (batch on 'data', state
  replicated unless the method gives rules) and the state donated. On CPU
  with several devices we block on every step (a known collective rendezvous
  deadlock on small machines otherwise).
* Mixed precision: the model computes in ``config.model.dtype``; parameters,
  gradients, optimiser state and losses stay float32.
* Non-finite loss: every step records whether its loss and gradient norm are
  finite. The flags are read (one small device->host copy) at every log
  step, before every checkpoint and at the end; the first bad step raises
  ``FloatingPointError`` naming it, and the bad state is never saved, so the
  workdir keeps the last good checkpoint.
* ``config.train.num_steps`` counts micro-batches (data batches). With
  ``grad_accum_steps = k`` there are ``num_steps // k`` optimiser updates and
  the learning-rate schedule is defined over those updates.
"""

import os
import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np

from coseg_jax.runtime import checkpoint as ckpt_lib
from coseg_jax.runtime import console
from coseg_jax.runtime import evaluators
from coseg_jax.runtime import feature_cache
from coseg_jax.runtime import sharding as sharding_lib
from coseg_jax.runtime import steps as steps_lib
from data_pipelines import pipeline

EvalFn = Callable[[Dict[str, Any], int], Mapping[str, Any]]
StepHook = Callable[[int, Any, Mapping[str, Any]], None]


def default_dataset_fn(config, *, batch_size, process_index, process_count):
  """The training stream of ``config.data`` (this process's shard)."""
  return pipeline.make_dataset(
      config.data, split=config.data.get("train_split", "train"),
      batch_size=batch_size, train=True, seed=config.train.seed,
      process_index=process_index, process_count=process_count)


def _scalar_items(prefix: str, results: Mapping[str, Any]) -> Dict[str, float]:
  """The numeric scalars of a (nested) result dict, keys joined with '/'."""
  out = {}
  for k, v in results.items():
    if isinstance(v, Mapping):
      if k != "per_class":
        out.update(_scalar_items(f"{prefix}{k}/", v))
      continue
    try:
      arr = np.asarray(v)
    except Exception:  # pylint: disable=broad-except
      continue
    if arr.shape == () and np.issubdtype(arr.dtype, np.number):
      out[f"{prefix}{k}"] = float(arr)
  return out


def _check_finite(pending) -> None:
  """Raises FloatingPointError naming the first step with a non-finite loss."""
  if not pending:
    return
  steps = [s for s, _ in pending]
  flags = np.asarray(jax.device_get([f for _, f in pending]))
  pending.clear()
  bad = np.flatnonzero(flags < 0.5)
  if bad.size:
    raise FloatingPointError(
        f"non-finite loss or gradient at step {steps[bad[0]]}; stopping "
        f"without saving (the last good checkpoint is kept)")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       dataset_fn: Optional[Callable[..., Any]] = None,
                       eval_fn: Optional[EvalFn] = None,
                       step_hooks: Sequence[StepHook] = (),
                       timings: Optional[Dict[str, float]] = None):
  """Trains ``config.method`` per ``config``, checkpointing into ``workdir``.

  Resumes automatically from the latest checkpoint in ``workdir``.

  Args:
    config: a config built on ``configs.base.get_base_config()``.
    workdir: run directory (checkpoints/, tensorboard/).
    dataset_fn: ``(config, *, batch_size, process_index, process_count) ->
      iterable`` whose iterator yields local numpy batches and supports
      ``get_state``/``set_state`` (default: :func:`default_dataset_fn`).
    eval_fn: ``(variables, step) -> dict`` called every
      ``config.train.eval_every`` steps and at the end (default: the config's
      evaluators, ``coseg_jax.runtime.evaluators.evaluate``); scalar entries
      are logged.
    step_hooks: callables ``(step, state, metrics)`` run after every step
      (tests, custom monitoring); they must not keep the state (it is
      donated to the next step).
    timings: optional dict that receives wall times in seconds:
      'feature_cache' (building or reusing the cache) and 'train' (the
      loop, periodic evaluations included).

  Returns:
    The final TrainState (on the mesh).

  Raises:
    FloatingPointError: on a non-finite loss (naming the step).
  """
  sharding_lib.configure(config)
  tcfg = config.train
  num_steps = int(tcfg.num_steps)
  checkpointer = ckpt_lib.Checkpointer(workdir,
                                       keep=int(tcfg.keep_checkpoints))
  resuming = checkpointer.latest_step() is not None
  program = steps_lib.build_train_program(config, apply_init=not resuming)
  mesh, state, shardings = program.mesh, program.state, program.shardings
  local_bs = sharding_lib.local_batch_size(int(tcfg.global_batch_size), mesh)
  cpu_multi = (jax.default_backend() == "cpu" and mesh.devices.size > 1)
  accum = int(config.optimizer.get("grad_accum_steps", 1) or 1)

  timings = timings if timings is not None else {}
  if dataset_fn is None and feature_cache.enabled(config):
    t = time.time()
    directory, membership = feature_cache.build(config, program, workdir)
    dataset_fn = feature_cache.make_dataset_fn(directory, membership)
    timings["feature_cache"] = time.time() - t
  dataset_fn = dataset_fn or default_dataset_fn
  dataset = dataset_fn(config, batch_size=local_bs,
                       process_index=jax.process_index(),
                       process_count=jax.process_count())
  data_iter = iter(dataset)

  if resuming:
    state, _ = checkpointer.restore(state, shardings=shardings,
                                    data_iter=data_iter)
  start = int(jax.device_get(state.step))
  if resuming:
    console.info(f"resumed {workdir} at step {start}")

  eval_every = int(tcfg.get("eval_every", 0) or 0)
  if eval_fn is None and eval_every > 0:
    def eval_fn(variables, step):
      del step
      return evaluators.evaluate(config=config, model=program.model,
                                 variables=variables, mesh=mesh)

  log_every = max(int(tcfg.log_every), 1)
  writer = console.create_writer(
      os.path.join(workdir, "tensorboard"), total=num_steps,
      console_every=console.console_interval(num_steps, log_every))
  if start == 0:
    writer.write_texts(0, {"config": config.to_json_best_effort(indent=2)})
  progress = console.Progress(num_steps, start,
                              enabled=bool(tcfg.get("progress_bar", True)),
                              description=config.method)
  preemption = ckpt_lib.PreemptionWatcher(checkpointer, sync_every=log_every)
  ckpt_every = int(tcfg.checkpoint_every or 0)
  pending = []  # (step, device flag) not yet checked for finiteness
  metrics_acc = []
  last_saved = start

  def save(step):
    nonlocal last_saved
    _check_finite(pending)
    if step != last_saved or checkpointer.latest_step() != step:
      checkpointer.save(step, state, data_iter=data_iter, config=config)
    last_saved = step

  loop_start = time.time()
  try:
    step = start
    while step < num_steps:
      if preemption.should_stop(step):
        console.warning(f"pre-empted: saving step {step} and stopping")
        save(step)
        break
      batch = next(data_iter)
      gbatch = sharding_lib.shard_batch(batch, mesh)
      state, metrics = program.train_step(state, gbatch)
      step += 1
      if cpu_multi:
        jax.block_until_ready(state)
      pending.append((step, metrics["finite"]))
      metrics_acc.append(metrics)
      progress.update(step)
      for hook in step_hooks:
        hook(step, state, metrics)

      if step % log_every == 0 or step == num_steps:
        _check_finite(pending)
        host = jax.device_get(metrics_acc)
        metrics_acc = []
        scalars = {f"train/{k}": float(np.mean([m[k] for m in host]))
                   for k in host[0] if k != "finite"}
        scalars["train/learning_rate"] = float(
            program.schedule(max(step - 1, 0) // accum))
        scalars.update(progress.rates(step, int(tcfg.global_batch_size)))
        writer.write_scalars(step, scalars)
        progress.update(step, {"loss": scalars["train/loss"]})

      if ckpt_every and step % ckpt_every == 0 and step != num_steps:
        save(step)
        progress.reset_timer(step)
      if eval_fn is not None and eval_every and (step % eval_every == 0 or
                                                 step == num_steps):
        _check_finite(pending)
        results = eval_fn(state.variables(), step)
        writer.write_scalars(step, _scalar_items("eval/", results or {}))
        progress.reset_timer(step)
    else:
      save(num_steps)
    writer.flush()
  finally:
    timings["train"] = time.time() - loop_start
    preemption.close()
    progress.close()
    writer.close()
    checkpointer.close()
  logging.info("training of %s finished at step %d", workdir, num_steps)
  return state
