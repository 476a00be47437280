"""Tests of coseg_jax.runtime.checkpoint (in-process), runtime.sharding and
runtime.console (metric writers, console lines, log verbosity)."""

import logging as py_logging
import os
import signal

from absl import logging as absl_logging
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from coseg_jax import models
from coseg_jax.runtime import checkpoint
from coseg_jax.runtime import console
from coseg_jax.runtime import optimizer
from coseg_jax.runtime import sharding
from coseg_jax.runtime import state as state_lib
from coseg_jax.runtime import steps
import runtime_helpers as rh


def _state(seed=0):
  spec = models.get_method(rh.register_toy())
  model = spec.build_model(None)
  cfg = ml_collections.ConfigDict(dict(name="adam", learning_rate=0.1,
                                       grad_accum_steps=2))
  tx, _ = optimizer.make_optimizer(cfg, 10)
  config = rh.toy_config()
  config.train.seed = seed
  state, shardings = state_lib.create_train_state(
      config, model, tx=tx, sample_shape=(1, 2, 8, 8, 3),
      mesh=sharding.make_mesh(1))
  step = steps.make_train_step(model=model, loss_fn=spec.loss_fn,
                               loss_config={"bce": 1.0}, donate=False,
                               mesh=sharding.make_mesh(1),
                               state_shardings=shardings)
  return state, shardings, step


def test_round_trip_state_iterator_config_and_keep_n(tmp_path):
  state, shardings, step = _state()
  batches = rh.make_batches(8)
  it = iter(grain.MapDataset.source(batches).to_iter_dataset())
  config = ml_collections.ConfigDict({"method": "toy", "size": (3, 4)})
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2)
  for i in range(1, 4):
    state, _ = step(state, next(it))
    ckpt.save(i, state, data_iter=it, config=config)
  assert ckpt.all_steps() == [2, 3]  # keep-N
  expected_next = next(it)
  ckpt.close()

  fresh, _, _ = _state(seed=1)  # different values, same structure
  it2 = iter(grain.MapDataset.source(batches).to_iter_dataset())
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2)
  restored, at = ckpt.restore(fresh, shardings=shardings, data_iter=it2)
  assert at == 3 and int(restored.step) == 3
  got, want = jax.tree.leaves(restored), jax.tree.leaves(state)
  assert len(got) == len(want)
  for a, b in zip(got, want):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The optimiser state keeps its structure (MultiSteps + Adam namedtuples).
  assert (jax.tree.structure(restored.opt_state) ==
          jax.tree.structure(state.opt_state))
  # The data iterator continues exactly where it was saved.
  np.testing.assert_array_equal(next(it2)["images"], expected_next["images"])
  assert ckpt.restore_config() == {"method": "toy", "size": [3, 4]}
  ckpt.close()
  variables, s = checkpoint.load_variables(str(tmp_path))
  assert s == 3
  jax.tree.map(np.testing.assert_array_equal, variables["params"],
               jax.device_get(state.params))
  # The toy model has no BatchNorm: only params reach model.apply.
  assert variables["batch_stats"] == {}
  applied, s = checkpoint.load_apply_variables(str(tmp_path))
  assert s == 3 and set(applied) == {"params"}


def test_restore_without_checkpoint_is_a_clear_error(tmp_path):
  state, shardings, _ = _state()
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  assert ckpt.latest_step() is None
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    ckpt.restore(state, shardings=shardings)
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    checkpoint.load_variables(str(tmp_path / "missing"))


def test_merge_params_copies_shared_keys_and_names_mismatches():
  target = {"a": {"w": np.zeros((2, 3))}, "head": np.ones(4)}
  source = {"a": {"w": np.full((2, 3), 7.0)}, "other": np.zeros(1)}
  out = checkpoint.merge_params(target, source)
  np.testing.assert_array_equal(out["a"]["w"], 7.0)
  np.testing.assert_array_equal(out["head"], 1.0)  # kept: not in source
  with pytest.raises(ValueError, match="/a/w"):
    checkpoint.merge_params(target, {"a": {"w": np.zeros((3, 2))}})


def test_preemption_watcher_catches_sigterm_and_restores_handler():
  before = signal.getsignal(signal.SIGTERM)
  watcher = checkpoint.PreemptionWatcher()
  assert not watcher.should_stop(0)
  os.kill(os.getpid(), signal.SIGTERM)
  assert watcher.should_stop(1)
  watcher.close()
  assert signal.getsignal(signal.SIGTERM) is before


def test_mesh_batch_placement_and_errors():
  mesh = sharding.make_mesh(-1)
  n = len(jax.devices())
  assert mesh.axis_names == ("data",) and mesh.devices.size == n
  with pytest.raises(ValueError, match="devices"):
    sharding.make_mesh(n + 1)
  assert sharding.local_batch_size(4 * n, mesh) == 4 * n  # one process
  if n > 1:
    with pytest.raises(ValueError, match="not divisible"):
      sharding.local_batch_size(n + 1, mesh)
  batch = {"x": np.arange(8 * n, dtype=np.float32).reshape(2 * n, 4)}
  placed = sharding.shard_batch(batch, mesh)
  assert placed["x"].shape == (2 * n, 4)
  assert placed["x"].sharding.spec == jax.sharding.PartitionSpec("data")
  np.testing.assert_array_equal(np.asarray(placed["x"]), batch["x"])
  assert not sharding.maybe_initialize_distributed(None)


def test_param_sharding_rules_hook():
  mesh = sharding.make_mesh(1)
  params = {"w": jnp.zeros((4, 2)), "b": jnp.zeros((2,))}
  default = sharding.param_shardings(params, mesh)
  assert all(s.spec == jax.sharding.PartitionSpec()
             for s in jax.tree.leaves(default))
  P = jax.sharding.PartitionSpec
  rules = lambda p, m: {"w": P("data", None), "b": P()}
  custom = sharding.param_shardings(params, mesh, rules)
  assert custom["w"].spec == P("data", None) and custom["b"].spec == P()


def test_writers_console_and_tensorboard(tmp_path, capsys):
  writer = console.create_writer(str(tmp_path / "tb"), total=10,
                                 console_every=3)
  writer.write_scalars(3, {"train/loss": np.float32(0.5)})
  writer.write_texts(3, {"config": "method: toy"})
  writer.flush()
  writer.close()
  events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
  assert events and events[0].stat().st_size > 0
  assert capsys.readouterr().out.splitlines() == ["step 3/10  loss 0.5"]
  # No logdir and no console interval: nothing is written anywhere.
  quiet = console.create_writer(None)
  quiet.write_scalars(3, {"train/loss": 0.5})
  quiet.close()
  assert not capsys.readouterr().out
  progress = console.Progress(10, 2, enabled=False)
  rates = progress.rates(4, examples_per_step=8)
  assert rates["perf/step_time_s"] > 0
  assert rates["perf/examples_per_s"] == pytest.approx(
      8 / rates["perf/step_time_s"])


def _count_console_lines(num_steps, log_every, capsys):
  """Runs a ConsoleWriter as a trainer does (scalars every ``log_every``
  steps and at the last step); returns the interval and printed lines."""
  every = console.console_interval(num_steps, log_every)
  writer = console.create_writer(None, total=num_steps, console_every=every)
  scalars = {"train/loss": 0.5, "train/loss_terms/bce": 0.25,
             "train/learning_rate": 1e-3, "perf/step_time_s": 0.5}
  for step in range(1, num_steps + 1):
    if step % log_every == 0 or step == num_steps:
      writer.write_scalars(step, scalars)
  return every, capsys.readouterr().out.splitlines()


@pytest.mark.parametrize("num_steps,log_every", [
    (1000, 7), (12345, 50), (3000, 1), (95, 10)])
def test_console_writer_prints_about_ten_lines_per_run(num_steps, log_every,
                                                       capsys):
  every, lines = _count_console_lines(num_steps, log_every, capsys)
  assert every % log_every == 0  # metrics exist at those steps
  assert 9 <= len(lines) <= 11, lines
  steps_printed = [int(l.split()[1].split("/")[0]) for l in lines]
  assert steps_printed[-1] == num_steps  # the last step always prints
  assert all(s % every == 0 for s in steps_printed[:-1])
  assert lines[0] == (f"step {every}/{num_steps}  loss 0.5  bce 0.25  "
                      "lr 1.00e-03  2.00 steps/s")


def test_console_writer_short_runs_and_lines_without_a_loss(capsys):
  # Fewer steps than lines: every logged step prints.
  assert console.console_interval(4, 1) == 1
  _, lines = _count_console_lines(4, 1, capsys)
  assert [l.split()[1] for l in lines] == ["1/4", "2/4", "3/4", "4/4"]
  assert console.console_interval(1000, 7, lines=2) == 504
  writer = console.ConsoleWriter(total=10, every=5)
  writer.write_scalars(5, {"eval/avg_J": 0.4})  # nothing a line shows
  writer.write_scalars(4, {"train/loss": 0.1})  # not a console step
  assert not capsys.readouterr().out


def test_setup_sets_the_log_verbosity():
  before = absl_logging.get_verbosity()
  levels = {n: py_logging.getLogger(n).level for n in ("absl", "orbax")}
  try:
    console.setup(None)  # the command line's default: warnings and errors
    assert absl_logging.get_verbosity() == absl_logging.WARNING
    assert py_logging.getLogger("orbax").level == py_logging.WARNING
    console.setup(0)  # --verbosity=0
    assert absl_logging.get_verbosity() == absl_logging.INFO
    assert py_logging.getLogger("orbax").level == py_logging.INFO
    console.setup(1)
    assert absl_logging.get_verbosity() == absl_logging.DEBUG
  finally:
    absl_logging.set_verbosity(before)
    for name, level in levels.items():
      py_logging.getLogger(name).setLevel(level)
