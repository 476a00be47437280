"""Multi-stage runs: pre-training stages, then the main run.

``config.stages`` lists the stages of a run in order, ending with ``'main'``
(the default is ``('main',)``). Every other name is a registered stage kind
whose settings are the config section of the same name:

* ``encoder_pretrain`` (the demo): method ``dense_category`` trains the run's
  own backbone to name the class of every pixel inside the training masks
  (pixels outside hold unlabelled objects of other classes and are ignored),
  with the same data, mesh and checkpointing as any run; the main run takes
  its ``backbone`` subtree. A stand-in for ImageNet weights where a backbone
  has none.
* ``matcher_pretrain`` (MaCoSNet): method ``macosnet_pretrain`` trains the
  transformation predictor G on synthetic affine + TPS warps of the training
  images (CNNGeo's procedure, which the paper uses to avoid the degenerate
  identity solution); the main run takes every parameter the two models
  share.

:func:`run` is the one way to run a config: the CLI's ``--mode train``, the
notebooks and the experiments all call it. A pre-stage trains into
``<workdir>/<stage name>`` with the trainer of its derived config and is done
once: a finished stage (its last checkpoint at its ``num_steps``) is reused,
an interrupted one resumes, and a main run that already has checkpoints
skips the pre-stages (its state comes from its own checkpoint). The main run
(``config.trainer``, see :mod:`coseg_jax.runtime.trainers`) then starts from
the last pre-stage's checkpoint through ``config.init.from_checkpoint`` and,
when the main config has a ``visualise`` section, the method's figures are
written (:mod:`coseg_jax.runtime.figures`).
"""

import copy
import os
from typing import Any, Callable, Dict, Tuple

import ml_collections

from coseg_jax.runtime import checkpoint as ckpt_lib
from coseg_jax.runtime import console
from coseg_jax.runtime import figures
from coseg_jax.runtime import trainers
from data_pipelines import pipeline

MAIN = "main"

# A stage kind: (main config, its section) -> (stage config, the parameter
# subtrees the next stage takes from it; () = every shared name).
StageFn = Callable[[ml_collections.ConfigDict, ml_collections.ConfigDict],
                   Tuple[ml_collections.ConfigDict, Tuple[str, ...]]]
_STAGES: Dict[str, StageFn] = {}


def register_stage(name: str):
  """Decorator registering a stage kind under ``name``."""
  def wrap(fn: StageFn) -> StageFn:
    if name in _STAGES or name == MAIN:
      raise ValueError(f"stage {name!r} is already registered")
    _STAGES[name] = fn
    return fn
  return wrap


def available_stages() -> Tuple[str, ...]:
  return tuple(sorted(_STAGES))


def _stage_run_config(config, section, *, method: str, model, loss,
                      optimizer_name: str = "adam", schedule="constant"):
  """The common part of a pre-stage config derived from ``config``."""
  c = copy.deepcopy(config)
  with c.unlocked():
    c.method = method
    c.model = ml_collections.ConfigDict(model)
    c.loss = ml_collections.ConfigDict(loss)
    c.trainer = "supervised"
    c.stages = (MAIN,)
    o = c.optimizer
    o.name = optimizer_name
    o.learning_rate = float(section.learning_rate)
    o.schedule = schedule
    o.warmup_steps = int(section.get("warmup_steps", 0) or 0)
    o.weight_decay = float(section.get("weight_decay", 0.0) or 0.0)
    o.grad_accum_steps = 1
    o.lr_multipliers = {}
    t = c.train
    t.num_steps = int(section.num_steps)
    t.global_batch_size = int(section.global_batch_size)
    t.eval_every = 0
    t.checkpoint_every = int(section.num_steps)
    t.keep_checkpoints = 1
    c.init.from_checkpoint = None
    c.init.from_checkpoint_subtrees = ()
    if c.get("visualise") is not None:
      c.visualise.num_groups = 0
    for key, value in (section.get("data") or {}).items():
      c.data[key] = value
  return c


@register_stage("encoder_pretrain")
def encoder_pretrain(config, section):
  """``dense_category`` on the run's data and backbone (module docstring)."""
  index = pipeline.record_index(config.data,
                                config.data.get("train_split", "train"))
  model = config.model
  c = _stage_run_config(
      config, section, method="dense_category",
      model=dict(backbone=model.get("backbone", "tiny"),
                 backbone_kwargs=dict(model.get("backbone_kwargs") or {}),
                 dtype=model.get("dtype", "float32"),
                 num_classes=len(index.class_names),
                 levels=tuple(section.get("levels") or ())),
      loss={"category": 1.0}, optimizer_name="adamw", schedule="cosine")
  return c, ("backbone",)


@register_stage("matcher_pretrain")
def matcher_pretrain(config, section):
  """``macosnet_pretrain`` (G on synthetic warps), module docstring."""
  model = config.model.to_dict()
  model["perceptual"] = None  # F is not used by the grid loss
  c = _stage_run_config(config, section, method="macosnet_pretrain",
                        model=model, loss={"grid": 1.0})
  with c.unlocked():
    pretrained = dict(c.init.get("pretrained") or {})
    pretrained.pop("perceptual_net", None)
    c.init.pretrained = pretrained
    c.data.augment.enabled = True
  return c, ()


def stage_names(config) -> Tuple[str, ...]:
  """``config.stages`` validated: known kinds, each with its section, ending
  with 'main'.

  Raises:
    ValueError: naming the offending entry.
  """
  names = tuple(config.get("stages") or (MAIN,))
  if not names or names[-1] != MAIN or names.count(MAIN) != 1:
    raise ValueError(f"config.stages must end with {MAIN!r} (once); got "
                     f"{names}")
  for name in names[:-1]:
    if name not in _STAGES:
      raise ValueError(f"config.stages: unknown stage {name!r}; known: "
                       f"{', '.join(available_stages())}")
    if config.get(name) is None:
      raise ValueError(f"config.stages names {name!r} but the config has no "
                       f"'{name}' section")
  return names


def _latest_step(workdir: str):
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return None
  return ckpt_lib.Checkpointer(workdir, create=False).latest_step()


def prepare(config: ml_collections.ConfigDict, workdir: str
            ) -> ml_collections.ConfigDict:
  """Runs (or reuses) the pre-stages; returns the main run's config.

  The returned config is ``config`` itself when there is no pre-stage or
  the main run resumes, else a copy whose ``init.from_checkpoint`` is the
  last pre-stage's directory.

  Raises:
    ValueError: when ``init.from_checkpoint`` is set as well (the stage's
      parameters and the checkpoint would overwrite each other).
  """
  names = stage_names(config)
  if len(names) == 1 or _latest_step(workdir) is not None:
    return config
  if config.init.get("from_checkpoint"):
    raise ValueError(
        f"config.stages {names} and config.init.from_checkpoint "
        f"({config.init.from_checkpoint}) are both set; the stage's "
        "parameters and the checkpoint would overwrite each other; set one")
  previous, subtrees = None, ()
  for name in names[:-1]:
    section = config[name]
    stage_config, hand_on = _STAGES[name](config, section)
    if previous is not None:
      with stage_config.unlocked():
        stage_config.init.from_checkpoint = previous
        stage_config.init.from_checkpoint_subtrees = subtrees
    sub = os.path.join(workdir, name)
    if _latest_step(sub) == int(section.num_steps):
      console.info(f"stage {name}: reusing {sub}")
    else:
      console.info(f"stage {name}: {int(section.num_steps)} steps of "
                   f"{stage_config.method} into {sub}")
      trainers.get_trainer(stage_config.trainer).train(stage_config, sub)
    previous, subtrees = sub, hand_on
  out = copy.deepcopy(config)
  with out.unlocked():
    out.init.from_checkpoint = previous
    out.init.from_checkpoint_subtrees = subtrees
  return out


def run(config: ml_collections.ConfigDict, workdir: str) -> Any:
  """Runs every stage of ``config`` into ``workdir``; returns the main
  trainer's result (the final train state of the supervised trainer)."""
  main_config = prepare(config, workdir)
  trainer = trainers.get_trainer(main_config.get("trainer", "supervised"))
  if len(stage_names(config)) > 1:
    console.info(f"stage main: {main_config.method} into {workdir}")
  result = trainer.train(main_config, workdir)
  vis = main_config.get("visualise")
  if vis is not None and int(vis.get("num_groups", 0) or 0) > 0:
    written = figures.write_figures(
        config=main_config, workdir=workdir, result=result,
        out_dir=os.path.join(workdir, vis.get("subdir", "figures")),
        num_groups=int(vis.num_groups))
    console.info(f"figures of {int(vis.num_groups)} held-out groups written "
                 f"to {os.path.dirname(written[-1])}")
  return result
