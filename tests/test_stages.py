"""Multi-stage runs (coseg_jax/runtime/stages.py): config validation, the
derived stage configs, and a pre-stage whose checkpoint starts the main run."""

import os
import shutil

import jax
import numpy as np
import pytest

from configs import base
from configs import cyclesegnet_voc2012
from configs import demo
from coseg_jax import models
from coseg_jax.runtime import checkpoint
from coseg_jax.runtime import stages
from coseg_jax.runtime import state as state_lib
from coseg_jax.runtime import trainers


def _cyclesegnet_run(tmp_path, **pretrain):
  c = cyclesegnet_voc2012.get_config("runlocal")
  c.data.data_dir = str(tmp_path / "tfds")
  c.train.num_steps = 2
  c.train.eval_every = 0
  c.train.checkpoint_every = 2
  c.stages = ("encoder_pretrain", "main")
  c.encoder_pretrain = base.encoder_pretrain_section(**pretrain)
  return c


def test_stage_names_are_validated():
  c = cyclesegnet_voc2012.get_config("runlocal")
  assert stages.stage_names(c) == ("main",)
  c.stages = ("encoder_pretrain", "main")
  with pytest.raises(ValueError, match="no 'encoder_pretrain' section"):
    stages.stage_names(c)
  c.encoder_pretrain = base.encoder_pretrain_section()
  assert stages.stage_names(c) == ("encoder_pretrain", "main")
  for bad, match in ((("main", "encoder_pretrain"), "must end with 'main'"),
                     (("warmup", "main"), "unknown stage 'warmup'"),
                     (("main", "main"), "must end with 'main'")):
    c.stages = bad
    with pytest.raises(ValueError, match=match):
      stages.stage_names(c)


def test_encoder_pretrain_derives_a_dense_category_run(tmp_path):
  c = _cyclesegnet_run(tmp_path, num_steps=7, learning_rate=0.01,
                       global_batch_size=6)
  c.optimizer.lr_multipliers = {"backbone": 0.0}
  p, hand_on = stages.encoder_pretrain(c, c.encoder_pretrain)
  assert hand_on == ("backbone",)
  assert p.method == "dense_category" and p.trainer == "supervised"
  assert p.model.backbone == c.model.backbone
  assert p.model.num_classes == 3  # the synthetic 'tiny' set's classes
  assert p.train.num_steps == 7 and p.train.global_batch_size == 6
  assert p.train.eval_every == 0 and p.stages == ("main",)
  assert p.optimizer.learning_rate == 0.01 and not p.optimizer.lr_multipliers
  assert p.data.to_dict() == c.data.to_dict()
  # The run's own config is untouched.
  assert c.method == "cyclesegnet" and c.optimizer.lr_multipliers
  models.get_method(p.method).build_model(p.model)


def test_pre_stage_conflicts_with_init_from_checkpoint(tmp_path):
  c = _cyclesegnet_run(tmp_path, num_steps=3)
  c.init.from_checkpoint = str(tmp_path / "elsewhere")
  with pytest.raises(ValueError, match="both set"):
    stages.prepare(c, str(tmp_path / "run"))


def test_a_single_stage_config_is_returned_unchanged(tmp_path):
  c = cyclesegnet_voc2012.get_config("runlocal")
  assert stages.prepare(c, str(tmp_path / "run")) is c


def test_demo_declares_its_two_stages():
  c = demo.get_config("runlocal")
  assert stages.stage_names(c) == ("encoder_pretrain", "main")
  assert c.optimizer.lr_multipliers["backbone"] == 0.0


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
  state = stages.run(c, workdir)
  stage = os.path.join(workdir, "encoder_pretrain")
  pre, pre_step = checkpoint.load_variables(stage)
  assert pre_step == 3
  assert set(pre["params"]) >= {"backbone", "category_stride8"}
  run_backbone = jax.device_get(state.params["backbone"])
  jax.tree.map(np.testing.assert_array_equal, run_backbone,
               jax.device_get(pre["params"]["backbone"]))
  fresh, _ = state_lib.create_train_state(
      c, models.get_method("cyclesegnet").build_model(c.model))
  diffs = jax.tree.leaves(jax.tree.map(
      lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
      run_backbone, jax.device_get(fresh.params["backbone"])))
  assert max(diffs) > 0
  # Done once: a resumed run skips the stage, a finished stage is reused.
  monkeypatch.setattr(stages.trainers, "get_trainer", lambda name: trainers.
                      Trainer(train=lambda *a, **k: pytest.fail("re-trained"),
                              build_program=None))
  assert stages.prepare(c, workdir) is c
  other = str(tmp_path / "run2")
  shutil.copytree(stage, os.path.join(other, "encoder_pretrain"))
  reused = stages.prepare(c, other)
  assert reused.init.from_checkpoint == os.path.join(other, "encoder_pretrain")
  assert tuple(reused.init.from_checkpoint_subtrees) == ("backbone",)
