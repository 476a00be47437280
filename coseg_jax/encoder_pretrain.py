"""Encoder pre-training as the first stage of a co-segmentation run.

With ``config.pretrain_encoder.num_steps`` > 0, :func:`maybe_pretrain` (called
by ``coseg_jax.train.train_and_evaluate`` before a fresh run initialises its
state) first trains method ``dense_category``
(``coseg_jax.models.dense_category``: the run's own backbone learns the class
of every pixel inside the training masks) into
``<workdir>/<pretrain_encoder.subdir>``, with the same data pipeline, device
mesh, checkpointing and multi-host handling as any run, then returns the run's
config with ``init.from_checkpoint`` pointing there: the co-segmentation
model's ``backbone`` parameters and BatchNorm statistics start from the
pre-trained ones (``checkpoint.merge_params`` copies the names both models
share; the class heads are not in the co-segmentation model).

The stage is resumable and done once: a finished stage (its last checkpoint at
``num_steps``) is reused, an interrupted one resumes, and a co-segmentation
run that already has checkpoints skips the stage entirely.
"""

import copy
import os

from absl import logging
import ml_collections

from coseg_jax import checkpoint as ckpt_lib


def enabled(config: ml_collections.ConfigDict) -> bool:
  """Whether ``config`` asks for the pre-training stage."""
  p = config.get("pretrain_encoder")
  return p is not None and int(p.get("num_steps", 0) or 0) > 0


def stage_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Work directory of the stage: ``<workdir>/<pretrain_encoder.subdir>``."""
  return os.path.join(workdir, config.pretrain_encoder.get(
      "subdir", "encoder_pretrain"))


def num_classes(data_config) -> int:
  """The training set's number of classes (from its TFDS features)."""
  from data_pipelines import pipeline  # pylint: disable=g-import-not-at-top
  index = pipeline.record_index(data_config,
                                data_config.get("train_split", "train"))
  return len(index.class_names)


def pretrain_config(config: ml_collections.ConfigDict, *,
                    classes: int) -> ml_collections.ConfigDict:
  """The ``dense_category`` run derived from a co-segmentation config.

  Same data (split, size, augmentation, group size), mesh, seed and backbone
  (name, kwargs, dtype; ``init.backbone_weights`` too, so ImageNet weights
  can be adapted rather than replaced); optimiser, length and batch from
  ``config.pretrain_encoder``; no evaluation, figures or nested stage.

  Args:
    config: the co-segmentation run's config.
    classes: the data set's number of classes.

  Returns:
    A new config (``config`` is not modified).
  """
  p = config.pretrain_encoder
  model = config.model
  c = copy.deepcopy(config)
  with c.unlocked():
    c.method = "dense_category"
    c.model = ml_collections.ConfigDict(dict(
        backbone=model.get("backbone", "tiny"),
        backbone_kwargs=dict(model.get("backbone_kwargs") or {}),
        dtype=model.get("dtype", "float32"),
        num_classes=int(classes),
        levels=tuple(p.get("levels") or ())))
    c.loss = ml_collections.ConfigDict({"category": 1.0})
    o = c.optimizer
    o.name = "adamw"
    o.learning_rate = float(p.learning_rate)
    o.schedule = "cosine"
    o.warmup_steps = int(p.get("warmup_steps", 0) or 0)
    o.weight_decay = float(p.get("weight_decay", 0.0) or 0.0)
    o.grad_accum_steps = 1
    o.lr_multipliers = {}
    t = c.train
    t.num_steps = int(p.num_steps)
    t.global_batch_size = int(p.global_batch_size)
    t.eval_every = 0
    t.checkpoint_every = int(p.num_steps)
    t.keep_checkpoints = 1
    c.init.from_checkpoint = None
    c.pretrain_encoder.num_steps = 0
    if c.get("visualise") is not None:
      c.visualise.num_groups = 0
  return c


def _latest_step(workdir: str):
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return None
  return ckpt_lib.Checkpointer(workdir, create=False).latest_step()


def maybe_pretrain(config: ml_collections.ConfigDict,
                   workdir: str) -> ml_collections.ConfigDict:
  """Runs (or reuses) the stage; returns the config to train with.

  Returns ``config`` itself when the stage is disabled, else a copy whose
  ``init.from_checkpoint`` is the stage's directory.

  Raises:
    ValueError: when ``init.from_checkpoint`` is set as well (the two would
      overwrite each other's backbone).
  """
  if not enabled(config) or _latest_step(workdir) is not None:
    return config  # disabled, or the run resumes (init is not applied)
  if config.init.get("from_checkpoint"):
    raise ValueError(
        "config.pretrain_encoder.num_steps > 0 and config.init.from_checkpoint "
        f"({config.init.from_checkpoint}) are both set; the stage's encoder "
        "and the checkpoint would overwrite each other; set one")
  from coseg_jax import train  # pylint: disable=g-import-not-at-top
  sub = stage_dir(config, workdir)
  steps = int(config.pretrain_encoder.num_steps)
  done = _latest_step(sub)
  if done == steps:
    logging.info("encoder pre-training: reusing %s (step %d)", sub, done)
  else:
    pcfg = pretrain_config(config, classes=num_classes(config.data))
    logging.info("encoder pre-training: %d steps of dense_category into %s",
                 steps, sub)
    train.train_and_evaluate(pcfg, sub)
  out = copy.deepcopy(config)
  with out.unlocked():
    out.init.from_checkpoint = sub
  return out
