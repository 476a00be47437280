"""Tests of the parameters' exponential moving average (``config.train.
ema_decay``): the update against a NumPy recurrence, the train step, the
state's inference variables, checkpoints and the trainer."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from coseg_jax import models
from coseg_jax.runtime import checkpoint
from coseg_jax.runtime import optimizer
from coseg_jax.runtime import sharding
from coseg_jax.runtime import state as state_lib
from coseg_jax.runtime import steps
from coseg_jax.runtime.trainers import supervised
import runtime_helpers as rh


def _np_decay(step, decay):
  return min(decay, (1.0 + step) / (10.0 + step))


def test_ema_update_known_values_and_ramp():
  ema = {"a": jnp.array([1.0, 2.0]), "b": jnp.array(4.0)}
  params = {"a": jnp.array([3.0, 2.0]), "b": jnp.array(0.0)}
  # Step 0: d = min(0.99, 1/10) = 0.1, so 90 % of the way to params.
  out = state_lib.ema_update(ema, params, jnp.int32(0), 0.99)
  np.testing.assert_allclose(out["a"], [1.0 + 0.9 * 2.0, 2.0], rtol=1e-6)
  np.testing.assert_allclose(out["b"], 4.0 - 0.9 * 4.0, rtol=1e-6)
  # Late in a run the target decay wins: d = 0.5 at step 1000.
  out = state_lib.ema_update(ema, params, jnp.int32(1000), 0.5)
  np.testing.assert_allclose(out["a"], [2.0, 2.0], rtol=1e-6)
  np.testing.assert_allclose(out["b"], 2.0, rtol=1e-6)
  # A parameter that did not move stays bit-identical (a frozen encoder).
  x = jnp.asarray(np.random.default_rng(0).normal(size=(64,)), jnp.float32)
  same = state_lib.ema_update({"x": x}, {"x": x}, jnp.int32(7), 0.999)
  np.testing.assert_array_equal(same["x"], x)
  assert same["x"].dtype == jnp.float32


def test_ema_decay_of_validates():
  config = rh.toy_config()
  assert state_lib.ema_decay_of(config) == 0.0
  config.train.ema_decay = 0.9
  assert state_lib.ema_decay_of(config) == 0.9
  for bad in (1.0, -0.1):
    config.train.ema_decay = bad
    with pytest.raises(ValueError, match=r"config.train.ema_decay must be"):
      state_lib.ema_decay_of(config)


def _program(decay, *, mesh=None):
  spec = models.get_method(rh.register_toy())
  model = spec.build_model(None)
  config = rh.toy_config()
  config.train.ema_decay = decay
  tx, _ = optimizer.make_optimizer(ml_collections.ConfigDict(dict(
      name="sgd", learning_rate=0.5, momentum=0.0)), 10)
  state, shardings = state_lib.create_train_state(
      config, model, tx=tx, sample_shape=(1, 2, 8, 8, 3), mesh=mesh)
  step = steps.make_train_step(
      model=model, loss_fn=spec.loss_fn, loss_config={"bce": 1.0},
      donate=False, mesh=mesh, state_shardings=shardings,
      ema_decay=state_lib.ema_decay_of(config))
  return state, shardings, step


def test_train_step_keeps_the_numpy_recurrence():
  decay = 0.6
  state, _, step = _program(decay)
  assert state.ema_params  # created with the state, equal to the params
  jax.tree.map(np.testing.assert_array_equal, state.ema_params, state.params)
  ema = jax.device_get(state.params)
  for i, batch in enumerate(rh.make_batches(4)):
    state, _ = step(state, batch)
    d = _np_decay(i, decay)
    ema = jax.tree.map(lambda e, p, d=d: e + (1 - d) * (p - e), ema,
                       jax.device_get(state.params))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               jax.device_get(state.ema_params), ema)
  lag = max(jax.tree.leaves(jax.tree.map(
      lambda a, b: float(np.max(np.abs(a - b))), state.ema_params,
      state.params)))
  assert lag > 1e-4  # the average is not the last iterate
  # Inference reads the average.
  jax.tree.map(np.testing.assert_array_equal,
               state.variables()["params"], state.ema_params)


def test_step_and_state_must_agree():
  with_ema, _, _ = _program(0.9)
  without, _, step_without = _program(0.0)
  assert without.ema_params == {}
  assert without.variables()["params"] is without.params
  batch = rh.make_batches(1)[0]
  with pytest.raises(ValueError, match=r"ema_decay=0.0 does not match"):
    step_without(with_ema, batch)


def test_checkpoint_saves_restores_and_serves_the_average(tmp_path):
  mesh = sharding.make_mesh(1)
  state, shardings, step = _program(0.8, mesh=mesh)
  batches = rh.make_batches(3)
  for b in batches:
    state, _ = step(state, b)
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  ckpt.save(3, state)
  ckpt.close()
  fresh, _, _ = _program(0.8, mesh=mesh)
  ckpt = checkpoint.Checkpointer(str(tmp_path), create=False)
  restored, at = ckpt.restore(fresh, shardings=shardings)
  ckpt.close()
  assert at == 3
  for name in ("params", "ema_params"):
    jax.tree.map(np.testing.assert_array_equal,
                 jax.device_get(getattr(restored, name)),
                 jax.device_get(getattr(state, name)))
  # Evaluation and prediction from the checkpoint get the average.
  variables, _ = checkpoint.load_variables(str(tmp_path))
  jax.tree.map(np.testing.assert_array_equal, variables["params"],
               jax.device_get(state.ema_params))


def test_run_without_average_writes_the_same_items(tmp_path):
  state, shardings, step = _program(0.0, mesh=sharding.make_mesh(1))
  state, _ = step(state, rh.make_batches(1)[0])
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  ckpt.save(1, state)
  ckpt.close()
  ckpt = checkpoint.Checkpointer(str(tmp_path), create=False)
  raw = ckpt.manager.item_metadata(1)["state"]
  ckpt.close()
  assert set(raw) == set(checkpoint.STATE_KEYS)


def test_trainer_evaluates_with_the_average(tmp_path):
  config = rh.toy_config(steps=4)
  config.train.ema_decay = 0.7
  config.train.eval_every = 4
  seen = []

  def eval_fn(variables, step):
    seen.append((step, jax.device_get(variables["params"])))
    return {}

  final = supervised.train_and_evaluate(
      config, str(tmp_path), eval_fn=eval_fn,
      dataset_fn=rh.list_dataset_fn(rh.make_batches(4)))
  assert seen and seen[-1][0] == 4
  jax.tree.map(np.testing.assert_array_equal, seen[-1][1],
               jax.device_get(final.ema_params))
  variables, step = checkpoint.load_variables(str(tmp_path))
  assert step == 4
  jax.tree.map(np.testing.assert_array_equal, variables["params"],
               jax.device_get(final.ema_params))


def test_initial_ema_is_a_separate_copy_or_empty():
  params = {"w": jnp.arange(4.0)}
  config = rh.toy_config()
  assert state_lib.initial_ema(config, params) == {}
  config.train.ema_decay = 0.5
  ema = state_lib.initial_ema(config, params)
  np.testing.assert_array_equal(ema["w"], params["w"])
  # Its own buffer: donating the parameters must not delete the average.
  assert (ema["w"].unsafe_buffer_pointer() !=
          params["w"].unsafe_buffer_pointer())
