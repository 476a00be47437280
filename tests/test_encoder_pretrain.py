"""Dense category pre-training (models/dense_category.py) and its stage in a
co-segmentation run (coseg_jax/encoder_pretrain.py)."""

import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from coseg_jax import backbones
from coseg_jax import checkpoint
from coseg_jax import encoder_pretrain
from coseg_jax import models
from coseg_jax import train
from coseg_jax.models import dense_category as dc
from configs import cyclesegnet_voc2012


def _np_masked_ce(logits, class_ids, masks, valid):
  b, k, h, w, c = logits.shape
  total, count = 0.0, 0.0
  for i in range(b):
    for j in range(k):
      if class_ids[i, j] < 0:
        continue
      z = logits[i, j].reshape(-1, c).astype(np.float64)
      logp = z - z.max(-1, keepdims=True)
      logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
      wgt = (masks[i, j] * valid[i, j]).reshape(-1)
      total += -(logp[:, class_ids[i, j]] * wgt).sum()
      count += wgt.sum()
  return total / max(count, 1.0)


def test_masked_category_loss_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 5, 4, 6)).astype(np.float32) * 3
  class_ids = np.array([[0, 5, -1], [2, 2, 1]], np.int32)
  masks = (rng.random((2, 3, 5, 4, 1)) < 0.4).astype(np.float32)
  valid = (rng.random((2, 3, 5, 4, 1)) < 0.8).astype(np.float32)
  got = dc.masked_category_loss(jnp.asarray(logits), jnp.asarray(class_ids),
                                jnp.asarray(masks), jnp.asarray(valid))
  np.testing.assert_allclose(float(got), _np_masked_ce(
      logits, class_ids, masks, valid), rtol=1e-5)
  # Pixels outside the masks never matter; no mask pixel at all gives 0.
  changed = np.where(masks > 0, logits, logits + 50 * rng.normal(
      size=logits.shape)).astype(np.float32)
  np.testing.assert_allclose(float(dc.masked_category_loss(
      jnp.asarray(changed), jnp.asarray(class_ids), jnp.asarray(masks),
      jnp.asarray(valid))), float(got), rtol=1e-6)
  assert float(dc.masked_category_loss(
      jnp.asarray(logits), jnp.asarray(class_ids),
      jnp.zeros_like(jnp.asarray(masks)))) == 0.0
  # Known value: uniform logits cost log(C) per pixel.
  assert np.isclose(float(dc.masked_category_loss(
      jnp.zeros((1, 2, 3, 3, 6)), jnp.array([[1, 4]]),
      jnp.ones((1, 2, 3, 3)))), np.log(6.0))


def test_dense_category_net_shapes_names_and_parameter_count():
  kwargs = {"widths": (8, 8, 16, 16, 24)}
  net = dc.DenseCategoryNet(num_classes=5, backbone="tiny",
                            backbone_kwargs=kwargs)
  x = jnp.zeros((2, 3, 32, 32, 3))
  variables = net.init(jax.random.key(0), x)
  out = net.apply(variables, x)
  assert out.category_logits.shape == (2, 3, 32, 32, 5)
  assert out.category_logits.dtype == jnp.float32
  params = variables["params"]
  assert set(params) == {"backbone", "category_stride8", "category_stride16",
                         "category_stride32"}
  encoder = backbones.get_backbone("tiny", **kwargs)
  n_backbone = sum(v.size for v in jax.tree.leaves(encoder.init(
      jax.random.key(0), x[0])["params"]))
  # stride8/16/32 of the tiny backbone have widths[2:] channels.
  n_heads = sum(c * 5 + 5 for c in (16, 16, 24))
  assert sum(v.size for v in jax.tree.leaves(params)) == n_backbone + n_heads
  with pytest.raises(ValueError, match="no 'stride64'"):
    dc.DenseCategoryNet(num_classes=5, backbone_kwargs=kwargs,
                        levels=("stride64",)).init(jax.random.key(0), x)


def test_dense_category_is_registered_and_refuses_masks():
  spec = models.get_method("dense_category")
  assert spec.default_loss == {"category": 1.0}
  with pytest.raises(ValueError, match="num_classes must be set"):
    spec.build_model(ml_collections.ConfigDict({"backbone": "tiny"}))
  with pytest.raises(ValueError, match="predicts categories, not masks"):
    spec.predict_fn(outputs=None, batch={}, config=None)


def _cyclesegnet_run(tmp_path, **pretrain):
  c = cyclesegnet_voc2012.get_config("mcycle,runlocal")
  c.data.data_dir = str(tmp_path / "tfds")
  c.train.num_steps = 2
  c.train.eval_every = 0
  c.train.checkpoint_every = 2
  c.pretrain_encoder.update(pretrain)
  return c


def test_pretrain_config_derives_the_stage():
  c = cyclesegnet_voc2012.get_config("mcycle,runlocal")
  c.pretrain_encoder.num_steps = 7
  c.pretrain_encoder.learning_rate = 0.01
  c.pretrain_encoder.global_batch_size = 6
  c.optimizer.lr_multipliers = {"backbone": 0.0}
  p = encoder_pretrain.pretrain_config(c, classes=3)
  assert p.method == "dense_category"
  assert (p.model.backbone, p.model.num_classes) == (c.model.backbone, 3)
  assert p.train.num_steps == 7 and p.train.global_batch_size == 6
  assert p.train.eval_every == 0
  assert p.optimizer.learning_rate == 0.01 and not p.optimizer.lr_multipliers
  assert p.pretrain_encoder.num_steps == 0  # no nested stage
  assert p.data.to_dict() == c.data.to_dict()
  # The run's own config is untouched.
  assert c.method == "cyclesegnet" and c.optimizer.lr_multipliers
  models.get_method(p.method).build_model(p.model)


def test_pretrain_conflicts_with_init_from_checkpoint(tmp_path):
  c = _cyclesegnet_run(tmp_path, num_steps=3)
  c.init.from_checkpoint = str(tmp_path / "elsewhere")
  with pytest.raises(ValueError, match="both set"):
    encoder_pretrain.maybe_pretrain(c, str(tmp_path / "run"))


@pytest.mark.slow
def test_stage_trains_the_encoder_that_the_run_starts_from(tmp_path,
                                                           monkeypatch):
  """3 pre-training steps, then 2 co-segmentation steps with the backbone
  frozen (lr multiplier 0): the run's backbone weights are exactly the
  stage's, which differ from a fresh initialisation.

  Slow-marked because it must compile with XLA's optimisations: under the
  suite's default JAX_DISABLE_MOST_OPTIMIZATIONS=1 the multi-level runlocal
  CycleSegNet (32 px) gets a NaN gradient for the encoder below stride 32
  (through the stride-16 fusion input) that neither the optimised program
  nor op-by-op execution produces.
  """
  c = _cyclesegnet_run(tmp_path, num_steps=3, global_batch_size=2)
  c.optimizer.lr_multipliers = {"backbone": 0.0}
  workdir = str(tmp_path / "run")
  state = train.train_and_evaluate(c, workdir)
  stage = encoder_pretrain.stage_dir(c, workdir)
  pre, pre_step = checkpoint.load_variables(stage)
  assert pre_step == 3
  assert set(pre["params"]) >= {"backbone", "category_stride8"}
  run_backbone = jax.device_get(state.params["backbone"])
  jax.tree.map(np.testing.assert_array_equal, run_backbone,
               jax.device_get(pre["params"]["backbone"]))
  fresh, _ = train.create_train_state(
      model=models.get_method("cyclesegnet").build_model(c.model),
      tx=train.make_optimizer(c.optimizer, 2)[0], rng=jax.random.PRNGKey(0),
      sample_shape=train.input_shape(c))
  diffs = jax.tree.leaves(jax.tree.map(
      lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
      run_backbone, jax.device_get(fresh.params["backbone"])))
  assert max(diffs) > 0
  # Done once: a finished stage is reused, a resumed run skips it.
  monkeypatch.setattr(train, "train_and_evaluate",
                      lambda *a, **k: pytest.fail("stage re-trained"))
  assert encoder_pretrain.maybe_pretrain(c, workdir) is c
  other = str(tmp_path / "run2")
  (tmp_path / "run2").mkdir()
  shutil.copytree(stage, encoder_pretrain.stage_dir(c, other))
  reused = encoder_pretrain.maybe_pretrain(c, other)
  assert reused.init.from_checkpoint == encoder_pretrain.stage_dir(c, other)
