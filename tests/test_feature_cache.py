"""The frozen-encoder feature cache: same loss and gradients as the live
path, resumable build, rebuilt on any change, one-line errors."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import baselines_synthetic
from configs import pascal_voc_coseg
from coseg_jax import backbones
from coseg_jax.runtime import feature_cache
from coseg_jax.runtime import steps
from coseg_jax.runtime.trainers import supervised
from data_pipelines import feature_cache as cache_lib


def _config(tmp_path, **cache):
  c = baselines_synthetic.get_config("baseline,runlocal")
  c.data.data_dir = str(tmp_path / "tfds")
  c.model.backbone_eval_mode = True
  c.optimizer.lr_multipliers = {"backbone": 0.0}
  c.data.feature_cache.enabled = True
  c.data.feature_cache.views = 2
  c.data.feature_cache.chunk_size = 4
  c.data.feature_cache.batch_size = 4
  c.data.feature_cache.dir = str(tmp_path / "cache")
  c.data.feature_cache.update(cache)
  return c


def _live_batch(config, batch):
  """The images the live pipeline renders for the cached batch's views."""
  scenes = feature_cache.training_scenes(config)
  images = np.zeros(batch["masks"].shape[:-1] + (3,), np.float32)
  for i in range(images.shape[0]):
    for k in range(images.shape[1]):
      sid, view = int(batch["record_ids"][i, k]), int(batch["views"][i, k])
      images[i, k], _ = cache_lib.render_view(
          scenes[sid], scene_id=sid, view=view, data_config=config.data,
          seed=int(config.data.seed))
  live = {k: v for k, v in batch.items() if not k.startswith("features/")}
  live["images"] = images
  return live


def _loss_and_grads(program, b, complete=None):
  """The train step's loss and gradients for batch ``b`` (cached or live),
  with the frozen subtrees as constants and ``complete`` (a fine-tuning
  run's feature completion) applied to cached features."""
  images, feats = steps.model_inputs(b)

  def loss(params):
    params = steps.stop_gradient_at(params, program.frozen, program.thawed)
    if feats is not None and complete is not None:
      kwargs = {"features": complete(params, program.state.batch_stats,
                                     feats)}
    else:
      kwargs = {} if feats is None else {"features": feats}
    out, _ = program.model.apply(
        {"params": params, "batch_stats": program.state.batch_stats},
        images, train=True, mutable=["batch_stats"], **kwargs)
    return program.spec.loss_fn(outputs=out, batch=b,
                                loss_config={"lovasz": 1.0})[0]

  return jax.jit(jax.value_and_grad(loss))(program.state.params)


@pytest.mark.parametrize("storage,rtol", [
    ("float32", 1e-5), pytest.param("float16", 2e-2, marks=pytest.mark.slow)])
def test_cached_loss_and_head_gradients_equal_the_live_path(tmp_path,
                                                            storage, rtol):
  config = _config(tmp_path, dtype=storage)
  program = steps.build_train_program(config)
  directory, membership = feature_cache.build(config, program, str(tmp_path))
  batch = next(iter(cache_lib.make_cached_dataset(
      config.data, directory, membership, batch_size=2, seed=3)))
  assert batch[f"features/stride32"].dtype == np.dtype(storage)
  assert set(np.unique(batch["views"])) <= {0, 1}
  live = _live_batch(config, batch)
  cached_loss, cached_grads = _loss_and_grads(
      program, jax.tree.map(jnp.asarray, batch))
  live_loss, live_grads = _loss_and_grads(program,
                                          jax.tree.map(jnp.asarray, live))
  np.testing.assert_allclose(float(cached_loss), float(live_loss), rtol=rtol)
  for name in ("decoder", "head"):
    for a, b in zip(jax.tree.leaves(cached_grads[name]),
                    jax.tree.leaves(live_grads[name])):
      scale = max(float(jnp.abs(b).max()), 1e-6)
      assert float(jnp.abs(a - b).max()) <= rtol * 10 * scale


def test_build_resumes_after_a_kill_and_reuses_a_complete_cache(
    tmp_path, monkeypatch):
  config = _config(tmp_path)
  program = steps.build_train_program(config)
  written = []
  real_write = cache_lib.write_chunk

  def dying_write(directory, chunk, records):
    if len(written) == 2:
      raise KeyboardInterrupt("killed")
    written.append(chunk)
    return real_write(directory, chunk, records)

  monkeypatch.setattr(cache_lib, "write_chunk", dying_write)
  with pytest.raises(KeyboardInterrupt):
    feature_cache.build(config, program, str(tmp_path))
  monkeypatch.setattr(cache_lib, "write_chunk", real_write)
  root = str(tmp_path / "cache")
  (directory,) = [os.path.join(root, d) for d in os.listdir(root)]
  assert not cache_lib.is_complete(directory)
  assert sorted(written) == [0, 1]
  # A half-written chunk of the killed build is left under a temporary
  # name and never read.
  resumed = []
  monkeypatch.setattr(cache_lib, "write_chunk", lambda d, c, r: (
      resumed.append(c), real_write(d, c, r))[1])
  again, _ = feature_cache.build(config, program, str(tmp_path))
  assert again == directory and cache_lib.is_complete(directory)
  spec = cache_lib.read_spec(directory)
  n_chunks = cache_lib.num_chunks(len(spec["scene_ids"]), 4)
  assert sorted(resumed) == list(range(2, n_chunks))  # only the missing
  views = cache_lib.CachedViews(directory)
  assert len(views) == len(spec["scene_ids"]) * 2
  record = views.view(int(spec["scene_ids"][-1]), 1)
  assert record["view"] == 1 and set(record["features"]) == set(
      spec["levels"])
  # Complete: a third build encodes nothing.
  resumed.clear()
  feature_cache.build(config, program, str(tmp_path))
  assert not resumed


def test_a_changed_setting_gives_a_new_cache(tmp_path):
  config = _config(tmp_path)
  program = steps.build_train_program(config)
  first, _ = feature_cache.build(config, program, str(tmp_path))
  for field, value in (("views", 3),):
    changed = _config(tmp_path, **{field: value})
    other, _ = feature_cache.build(changed, steps.build_train_program(
        changed), str(tmp_path))
    assert other != first and cache_lib.is_complete(other)
  resized = _config(tmp_path)
  resized.data.image_size = 48
  assert feature_cache.cache_spec(
      resized, steps.build_train_program(resized),
      scene_ids=[0]) != feature_cache.cache_spec(config, program,
                                                 scene_ids=[0])
  # Other weights (one parameter moved) are another cache.
  moved = program.state.params["backbone"]
  leaf = jax.tree.leaves(moved)[0]
  program.state.params["backbone"] = jax.tree.map(
      lambda x: x + 1.0 if x is leaf else x, moved)
  assert feature_cache.weights_digest(program) != cache_lib.read_spec(
      first)["encoder"]["weights"]


def test_the_cache_refuses_a_trained_or_training_mode_encoder(tmp_path):
  config = _config(tmp_path)
  config.optimizer.lr_multipliers = {}
  with pytest.raises(ValueError, match="needs a frozen backbone"):
    feature_cache.check(config, steps.build_train_program(config))
  config = _config(tmp_path)
  config.model.backbone_eval_mode = False
  with pytest.raises(ValueError, match="backbone_eval_mode=True"):
    feature_cache.check(config, steps.build_train_program(config))
  config = _config(tmp_path, dtype="int8")
  with pytest.raises(ValueError, match="feature_cache.dtype"):
    feature_cache.check(config, steps.build_train_program(config))


def test_the_trainer_trains_from_the_cache(tmp_path):
  config = _config(tmp_path)
  config.train.num_steps = 3
  state = supervised.train_and_evaluate(config, str(tmp_path / "run"))
  assert int(state.step) == 3
  root = str(tmp_path / "cache")
  assert any(cache_lib.is_complete(os.path.join(root, d))
             for d in os.listdir(root))


def _finetune_config(tmp_path):
  """Random EfficientNet-Lite0, the cache up to 'stride8', the blocks past
  it fine-tuned (the recipes' ``finetune`` flag, at another level)."""
  c = _config(tmp_path, dtype="float32")
  c.model.backbone = "efficientnet_lite0"
  pascal_voc_coseg.finetune_top(c, "stride8")
  return c


def test_finetuning_the_top_from_the_cache_equals_the_live_path(tmp_path):
  config = _finetune_config(tmp_path)
  program = steps.build_train_program(config)
  assert program.thawed and ("backbone",) in program.frozen
  directory, membership = feature_cache.build(config, program, str(tmp_path))
  spec = cache_lib.read_spec(directory)
  # The model reads stride32 and the skips; stride32 is recomputed.
  assert spec["levels"] == ["stride2", "stride4", "stride8"]
  assert spec["finetune_from"] == "stride8"
  batch = next(iter(cache_lib.make_cached_dataset(
      config.data, directory, membership, batch_size=2, seed=3)))
  live = _live_batch(config, batch)
  complete = feature_cache.make_completion(config, program.model)
  cached_loss, cached = _loss_and_grads(
      program, jax.tree.map(jnp.asarray, batch), complete)
  live_loss, live_grads = _loss_and_grads(
      program, jax.tree.map(jnp.asarray, live), complete)
  np.testing.assert_allclose(float(cached_loss), float(live_loss), rtol=1e-5)
  top = ("_blocks_15", "_conv_head", "_bn1")
  for name in ("decoder", "head"):
    for a, b in zip(jax.tree.leaves(cached[name]),
                    jax.tree.leaves(live_grads[name])):
      np.testing.assert_allclose(a, b, rtol=1e-4,
                                 atol=1e-4 * float(jnp.abs(b).max()))
  for name in top:
    for a, b in zip(jax.tree.leaves(cached["backbone"][name]),
                    jax.tree.leaves(live_grads["backbone"][name])):
      assert float(jnp.abs(b).max()) > 0
      np.testing.assert_allclose(a, b, rtol=1e-4,
                                 atol=1e-4 * float(jnp.abs(b).max()))
  for name in ("_conv_stem", "_blocks_4"):
    assert not any(np.any(g) for g in jax.tree.leaves(
        cached["backbone"][name]))


def test_the_trainer_finetunes_only_the_top_of_the_encoder(tmp_path):
  config = _finetune_config(tmp_path)
  config.train.num_steps = 2
  start = steps.build_train_program(config).state.params["backbone"]
  state = supervised.train_and_evaluate(config, str(tmp_path / "run"))
  end = state.params["backbone"]
  moved = {name: any(not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(start[name]), jax.tree.leaves(end[name])))
           for name in start}
  bottom = set(backbones.get_backbone(
      "efficientnet_lite0").modules_through("stride8"))
  assert not any(moved[n] for n in bottom)
  assert all(moved[n] for n in moved if n not in bottom and n != "_bn1")
  assert moved["_conv_head"] and moved["_blocks_15"]


def test_finetuning_needs_a_frozen_bottom_and_a_trained_top(tmp_path):
  config = _finetune_config(tmp_path)
  config.optimizer.lr_multipliers = {"backbone": 0.0}
  with pytest.raises(ValueError, match="nothing would be fine-tuned"):
    feature_cache.check(config, steps.build_train_program(config))
  config = _finetune_config(tmp_path)
  config.optimizer.lr_multipliers["backbone/_blocks_3"] = 1.0
  with pytest.raises(ValueError, match="must freeze it"):
    feature_cache.check(config, steps.build_train_program(config))
  config = _finetune_config(tmp_path)
  config.data.feature_cache.finetune_from = "stride32"
  with pytest.raises(ValueError, match="finetune_from: input_level"):
    feature_cache.check(config, steps.build_train_program(config))
  config = _config(tmp_path, finetune_from="stride8")
  with pytest.raises(ValueError, match="cannot resume"):
    feature_cache.check(config, steps.build_train_program(config))
