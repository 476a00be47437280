"""Tests of coseg_jax.checkpoint (in-process) and coseg_jax.sharding."""

import os
import signal

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from coseg_jax import checkpoint
from coseg_jax import logging_utils
from coseg_jax import models
from coseg_jax import sharding
from coseg_jax import train
import runtime_helpers as rh


def _state(seed=0):
  spec = models.get_method(rh.register_toy())
  model = spec.build_model(None)
  cfg = ml_collections.ConfigDict(dict(name="adam", learning_rate=0.1,
                                       grad_accum_steps=2))
  tx, _ = train.make_optimizer(cfg, 10)
  state, shardings = train.create_train_state(
      model=model, tx=tx, rng=jax.random.PRNGKey(seed),
      sample_shape=(1, 2, 8, 8, 3), mesh=sharding.make_mesh(1))
  step = train.make_train_step(model=model, loss_fn=spec.loss_fn,
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


def test_writers_console_and_tensorboard(tmp_path):
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.INFO)
  writer = logging_utils.create_writer(str(tmp_path / "tb"))
  writer.write_scalars(3, {"train/loss": np.float32(0.5)})
  writer.flush()
  writer.close()
  events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
  assert events and events[0].stat().st_size > 0
  progress = logging_utils.Progress(10, 2, enabled=False)
  rates = progress.rates(4, examples_per_step=8)
  assert rates["perf/step_time_s"] > 0
  assert rates["perf/examples_per_s"] == pytest.approx(
      8 / rates["perf/step_time_s"])
