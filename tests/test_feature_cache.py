"""The frozen-encoder feature cache: same loss and gradients as the live
path, resumable build, rebuilt on any change, one-line errors."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import baselines_synthetic
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

  def loss_and_grads(b):
    images, feats = steps.model_inputs(b)
    kwargs = {} if feats is None else {"features": feats}

    def loss(params):
      out, _ = program.model.apply(
          {"params": params, "batch_stats": program.state.batch_stats},
          images, train=True, mutable=["batch_stats"], **kwargs)
      return program.spec.loss_fn(outputs=out, batch=b,
                                  loss_config={"lovasz": 1.0})[0]

    return jax.value_and_grad(loss)(program.state.params)

  cached_loss, cached_grads = loss_and_grads(
      jax.tree.map(jnp.asarray, batch))
  live_loss, live_grads = loss_and_grads(jax.tree.map(jnp.asarray, live))
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
