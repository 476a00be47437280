"""In-process tests of the runtime's optimiser, train step and supervised
trainer: optimiser semantics against NumPy references, per-subtree rates,
frozen subtrees, gradient accumulation, the non-finite guard, eval/logging
wiring and mixed precision."""

import glob
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from coseg_jax import models
from coseg_jax.runtime import checkpoint
from coseg_jax.runtime import optimizer
from coseg_jax.runtime import steps
from coseg_jax.runtime.trainers import supervised
import runtime_helpers as rh


def _opt_config(**kw):
  c = ml_collections.ConfigDict(dict(
      name="adam", learning_rate=0.1, schedule="constant", warmup_steps=0,
      step_boundaries=(0.5, 0.75), step_factor=0.1, poly_power=0.9,
      weight_decay=0.0, decoupled_weight_decay=False, momentum=0.9,
      beta1=0.9, beta2=0.999, grad_clip_norm=0.0, grad_accum_steps=1))
  c.update(kw)
  return c


def _run_opt(cfg, grads, p0, steps, num_steps=100):
  tx, _ = optimizer.make_optimizer(cfg, num_steps)
  p = jnp.asarray(p0, jnp.float32)
  state = tx.init(p)
  out = []
  for g in grads[:steps]:
    u, state = tx.update(jnp.asarray(g, jnp.float32), state, p)
    p = p + u
    out.append(np.asarray(p, np.float64))
  return out


P0 = np.array([1.0, -2.0, 3.0, 0.5])
GRADS = [np.array([0.3, -0.1, 0.2, 0.05]) * (i + 1) for i in range(3)]


def _np_adam(p, grads, lr, wd, decoupled, b1=0.9, b2=0.999, eps=1e-8):
  m = np.zeros_like(p)
  v = np.zeros_like(p)
  out = []
  for t, g in enumerate(grads, start=1):
    if not decoupled:
      g = g + wd * p
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    u = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    if decoupled:
      u = u + wd * p
    p = p - lr * u
    out.append(p)
  return out


def _np_sgd(p, grads, lr, wd, decoupled, mu):
  m = np.zeros_like(p)
  out = []
  for g in grads:
    if not decoupled:
      g = g + wd * p
    m = mu * m + g
    u = m + (wd * p if decoupled else 0.0)
    p = p - lr * u
    out.append(p)
  return out


@pytest.mark.parametrize("name,decoupled", [
    ("adam", False), ("adam", True), ("adamw", False), ("sgd", False),
    ("sgd", True)])
def test_weight_decay_semantics_match_numpy(name, decoupled):
  wd, lr = 0.05, 0.1
  cfg = _opt_config(name=name, weight_decay=wd,
                    decoupled_weight_decay=decoupled, learning_rate=lr)
  got = _run_opt(cfg, GRADS, P0, 3)
  if name == "sgd":
    want = _np_sgd(P0, GRADS, lr, wd, decoupled, 0.9)
  else:
    want = _np_adam(P0, GRADS, lr, wd, decoupled or name == "adamw")
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_l2_and_decoupled_decay_differ_under_adam():
  # Zero gradient: decoupled decay shrinks p by exactly lr*wd*p, while the
  # L2 term is normalised by Adam into ~lr*sign(p).
  zero = [np.zeros(4)]
  dec = _run_opt(_opt_config(weight_decay=0.01, decoupled_weight_decay=True),
                 zero, P0, 1)[0]
  l2 = _run_opt(_opt_config(weight_decay=0.01), zero, P0, 1)[0]
  np.testing.assert_allclose(dec, P0 - 0.1 * 0.01 * P0, rtol=1e-6)
  np.testing.assert_allclose(l2, P0 - 0.1 * np.sign(P0), rtol=1e-5)


def test_grad_clip_by_global_norm():
  g = np.array([3.0, 4.0, 0.0, 0.0])  # norm 5
  got = _run_opt(_opt_config(name="sgd", momentum=0.0, learning_rate=1.0,
                             grad_clip_norm=1.0), [g], P0, 1)[0]
  np.testing.assert_allclose(got, P0 - g / 5.0, rtol=1e-6)


def test_schedules_match_formulas():
  n, lr = 100, 0.5
  steps = np.array([0, 5, 10, 37, 50, 74, 75, 99])
  cos = optimizer.make_schedule(_opt_config(learning_rate=lr, schedule="cosine",
                                        warmup_steps=10), n)
  want = np.where(steps < 10, lr * steps / 10,
                  lr * 0.5 * (1 + np.cos(np.pi * np.minimum(steps - 10, 90)
                                         / 90)))
  np.testing.assert_allclose([cos(s) for s in steps], want, rtol=1e-5,
                             atol=1e-7)
  poly = optimizer.make_schedule(_opt_config(learning_rate=lr, schedule="poly"), n)
  np.testing.assert_allclose([poly(s) for s in steps],
                             lr * (1 - steps / n)**0.9, rtol=1e-5)
  step = optimizer.make_schedule(_opt_config(learning_rate=lr, schedule="step"), n)
  want = lr * np.where(steps >= 75, 0.01, np.where(steps >= 50, 0.1, 1.0))
  np.testing.assert_allclose([step(s) for s in steps], want, rtol=1e-5)
  with pytest.raises(ValueError, match="schedule"):
    optimizer.make_schedule(_opt_config(schedule="linear"), n)
  with pytest.raises(ValueError, match="optimizer.name"):
    optimizer.make_optimizer(_opt_config(name="rmsprop"), n)


def test_lr_multipliers_scale_and_freeze_named_subtrees():
  params = {"backbone": {"w": jnp.asarray(P0)}, "head": jnp.asarray(P0),
            "other": jnp.asarray(P0)}
  grads = {k: jax.tree_util.tree_map(lambda _: jnp.asarray(GRADS[0]), v)
           for k, v in params.items()}
  cfg = _opt_config(weight_decay=0.01,
                    lr_multipliers={"backbone": 0.0, "head": 0.25})
  tx, _ = optimizer.make_optimizer(cfg, 10)
  updates, _ = tx.update(grads, tx.init(params), params)
  # One Adam step with L2 decay, as the NumPy reference.
  full = _np_adam(P0, GRADS[:1], lr=0.1, wd=0.01, decoupled=False)[0] - P0
  np.testing.assert_array_equal(np.asarray(updates["backbone"]["w"]), 0.0)
  np.testing.assert_allclose(np.asarray(updates["head"]), 0.25 * full,
                             rtol=1e-5)
  np.testing.assert_allclose(np.asarray(updates["other"]), full, rtol=1e-5)
  bad, _ = optimizer.make_optimizer(_opt_config(lr_multipliers={"encoder": 0.1}),
                                10)
  with pytest.raises(ValueError, match=r"lr_multipliers names \['encoder'\]"):
    bad.init(params)


def test_lr_multipliers_take_nested_paths_and_keep_no_state_when_frozen():
  params = {"generator": {"backbone": {"w": jnp.asarray(P0)},
                          "decoder": jnp.asarray(P0)},
            "extractor_net": {"w": jnp.asarray(P0)}}
  grads = jax.tree.map(lambda _: jnp.asarray(GRADS[0]), params)
  cfg = _opt_config(lr_multipliers={"generator/backbone": 0.0,
                                    "extractor_net": 0.5, "generator": 2.0})
  tx, _ = optimizer.make_optimizer(cfg, 10)
  opt_state = tx.init(params)
  updates, _ = tx.update(grads, opt_state, params)
  full = _np_adam(P0, GRADS[:1], lr=0.1, wd=0.0, decoupled=False)[0] - P0
  # The longest matching path decides: generator/backbone is frozen although
  # 'generator' doubles the rest of the generator.
  np.testing.assert_array_equal(
      np.asarray(updates["generator"]["backbone"]["w"]), 0.0)
  np.testing.assert_allclose(np.asarray(updates["generator"]["decoder"]),
                             2.0 * full, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(updates["extractor_net"]["w"]),
                             0.5 * full, rtol=1e-5)
  # Adam moments exist for the three trained leaves only (mu and nu each).
  moments = [x for x in jax.tree.leaves(opt_state) if np.shape(x) == (4,)]
  assert len(moments) == 2 * 2
  assert optimizer.frozen_paths(cfg) == (("generator", "backbone"),)


def test_stop_gradient_at_nested_paths():
  params = {"a": {"b": jnp.float32(2.0), "c": jnp.float32(3.0)},
            "d": jnp.float32(4.0)}
  loss = lambda p: jnp.sum(jnp.asarray(jax.tree.leaves(
      steps.stop_gradient_at(p, [("a", "b")]))) ** 2)
  grads = jax.grad(loss)(params)
  assert float(grads["a"]["b"]) == 0.0
  assert float(grads["a"]["c"]) == 6.0 and float(grads["d"]) == 8.0
  with pytest.raises(ValueError, match="frozen parameter subtree 'x'"):
    steps.stop_gradient_at(params, [("x",)])


def test_a_thawed_subtree_inside_a_frozen_one_keeps_its_gradient():
  cfg = ml_collections.ConfigDict({"lr_multipliers": {
      "enc": 0.0, "enc/top": 0.5, "enc/top/w": 0.0, "head": 1.0}})
  assert optimizer.frozen_paths(cfg) == (("enc",), ("enc", "top", "w"))
  assert optimizer.thawed_paths(cfg) == (("enc", "top"),)
  params = {"enc": {"bottom": jnp.float32(2.0),
                    "top": {"b": jnp.float32(3.0), "w": jnp.float32(5.0)}},
            "head": jnp.float32(4.0)}
  loss = lambda p: jnp.sum(jnp.asarray(jax.tree.leaves(
      steps.stop_gradient_at(p, optimizer.frozen_paths(cfg),
                             optimizer.thawed_paths(cfg)))) ** 2)
  grads = jax.grad(loss)(params)
  assert float(grads["enc"]["bottom"]) == 0.0
  assert float(grads["enc"]["top"]["w"]) == 0.0
  assert float(grads["enc"]["top"]["b"]) == 6.0
  assert float(grads["head"]) == 8.0
  # Without the thawed paths the whole encoder is a constant.
  grads = jax.grad(lambda p: jnp.sum(jnp.asarray(jax.tree.leaves(
      steps.stop_gradient_at(p, [("enc",)]))) ** 2))(params)
  assert float(grads["enc"]["top"]["b"]) == 0.0


class _TwoPart(nn.Module):
  """'backbone' conv -> ReLU -> 'head' conv, for freezing tests."""

  @nn.compact
  def __call__(self, images, train=False):
    del train
    b, k, h, w, _ = images.shape
    x = nn.relu(nn.Conv(4, (3, 3), name="backbone")(
        images.reshape(b * k, h, w, 3)))
    return rh.ToyOutput(mask_logits=nn.Conv(1, (1, 1), name="head")(
        x).reshape(b, k, h, w, 1))


def test_frozen_subtrees_get_no_gradient_and_no_backward_pass():
  model = _TwoPart()
  batch = rh.make_batches(1)[0]
  cfg = _opt_config(name="sgd", momentum=0.0, weight_decay=0.01,
                    lr_multipliers={"backbone": 0.0, "head": 1.0})
  assert optimizer.frozen_paths(cfg) == (("backbone",),)
  states, counts = [], []
  for frozen in ((), ("backbone",)):
    tx, _ = optimizer.make_optimizer(cfg, 10)
    state = rh.make_state(model, tx)
    step = steps.make_train_step(model=model, loss_fn=rh.toy_loss,
                                 loss_config={"bce": 1.0}, donate=False,
                                 frozen=frozen)
    counts.append(str(jax.make_jaxpr(step)(state, batch)).count(
        "conv_general_dilated"))
    p0 = jax.device_get(state.params)
    state, metrics = step(state, batch)
    states.append((p0, jax.device_get(state.params), metrics))
  (p0, free, m_free), (_, frz, m_frz) = states
  # Frozen: the backbone does not move; the head's update is unchanged.
  jax.tree.map(np.testing.assert_array_equal, frz["backbone"], p0["backbone"])
  jax.tree.map(np.testing.assert_allclose, frz["head"], free["head"])
  assert float(m_frz["grad_norm"]) < float(m_free["grad_norm"])
  # Forward 2 convs; backward: head weight + head input + backbone weight
  # grads when trained, only the head weight grad when frozen.
  assert counts == [5, 3], counts
  with pytest.raises(ValueError, match=r"frozen parameter subtree 'enc'"):
    steps.make_train_step(model=model, loss_fn=rh.toy_loss,
                          loss_config={"bce": 1.0}, donate=False,
                          frozen=("enc",))(state, batch)


def test_grad_accumulation_equals_bigger_batch():
  name = rh.register_toy()
  spec = models.get_method(name)
  model = spec.build_model(None)
  big = rh.make_batches(1, batch=4)[0]
  halves = [{k: v[:2] for k, v in big.items()},
            {k: v[2:] for k, v in big.items()}]
  results = []
  for accum, batches in ((1, [big]), (2, halves)):
    tx, _ = optimizer.make_optimizer(_opt_config(grad_accum_steps=accum), 10)
    state = rh.make_state(model, tx)
    step = steps.make_train_step(model=model, loss_fn=spec.loss_fn,
                                 loss_config={"bce": 1.0}, donate=False)
    p0 = state.params
    for b in batches:
      state, _ = step(state, b)
    results.append(state)
  assert int(results[1].step) == 2
  diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                      results[0].params, results[1].params)
  assert max(jax.tree.leaves(diff)) <= 1e-6
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                       results[0].params, p0)
  assert max(jax.tree.leaves(moved)) > 1e-3


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  config = rh.toy_config(steps=8)
  config.train.log_every = 100  # the check before each save must catch it
  batches = rh.make_batches(8, nan_at=4)  # the 5th batch -> step 5
  with pytest.raises(FloatingPointError, match="at step 5"):
    supervised.train_and_evaluate(config, str(tmp_path),
                             dataset_fn=rh.list_dataset_fn(batches))
  ckpt = checkpoint.Checkpointer(str(tmp_path), create=False)
  assert ckpt.all_steps() == [2, 4]
  ckpt.close()
  variables, step = checkpoint.load_variables(str(tmp_path))
  assert step == 4
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(variables))


def test_train_and_evaluate_calls_eval_logs_and_resumes(tmp_path):
  config = rh.toy_config(steps=4)
  config.train.eval_every = 2
  calls = []

  def eval_fn(variables, step):
    calls.append(step)
    assert set(variables) == {"params"}
    return {"coseg": {"avg_J": 0.25, "per_class": {"a": 1.0}}}

  batches = rh.make_batches(6)
  state = supervised.train_and_evaluate(config, str(tmp_path), eval_fn=eval_fn,
                                   dataset_fn=rh.list_dataset_fn(batches))
  assert int(state.step) == 4 and calls == [2, 4]
  assert glob.glob(os.path.join(tmp_path, "tensorboard", "events.out.*"))
  cfg = checkpoint.Checkpointer(str(tmp_path), create=False).restore_config()
  assert cfg["method"] == config.method and cfg["train"]["num_steps"] == 4
  # A longer run in the same workdir resumes at 4 and only runs 4 -> 6.
  config.train.num_steps = 6
  seen = []
  state = supervised.train_and_evaluate(
      config, str(tmp_path), eval_fn=eval_fn,
      dataset_fn=rh.list_dataset_fn(batches),
      step_hooks=[lambda s, st, m: seen.append(s)])
  assert seen == [5, 6] and int(state.step) == 6


def test_init_from_checkpoint_copies_params(tmp_path):
  config = rh.toy_config(steps=2)
  batches = rh.make_batches(2)
  first = supervised.train_and_evaluate(config, str(tmp_path / "a"),
                                   dataset_fn=rh.list_dataset_fn(batches))
  want = jax.device_get(first.params)
  config.init.from_checkpoint = str(tmp_path / "a")
  config.train.num_steps = 0
  second = supervised.train_and_evaluate(config, str(tmp_path / "b"),
                                    dataset_fn=rh.list_dataset_fn(batches))
  got = jax.device_get(second.params)
  jax.tree.map(np.testing.assert_array_equal, got, want)
  assert int(second.step) == 0


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params_and_loss():
  config = ml_collections.ConfigDict(dict(
      backbone="tiny", dtype="bfloat16", decoder_widths=(8, 8, 8, 8, 8),
      backbone_kwargs={"widths": (4, 8, 8, 8, 8)}))
  spec = models.get_method("mcat")
  model = spec.build_model(config)
  tx, _ = optimizer.make_optimizer(_opt_config(), 10)
  state = rh.make_state(model, tx, (1, 2, 32, 32, 3))
  batch = rh.make_batches(1, batch=2, size=32)[0]
  step = steps.make_train_step(model=model, loss_fn=spec.loss_fn,
                               loss_config={"lovasz": 1.0, "bce": 0.5})
  state, metrics = step(state, batch)
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {
      np.dtype("float32")}
  assert metrics["loss"].dtype == jnp.float32
  assert np.isfinite(float(metrics["loss"]))
  out = model.apply(state.variables(), jnp.asarray(batch["images"]))
  assert out.mask_logits.dtype == jnp.float32
