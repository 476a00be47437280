"""The PASCAL-VOC co-segmentation set and its three protocols (shared part).

Not a launchable config: ``cyclesegnet_pascal_voc_coseg.py``,
``dcc_pascal_voc_coseg.py``, ``cosegnet_pascal_voc_coseg.py`` and
``coattention_pascal_voc_coseg.py`` build on it.

The set (``pascal_voc_coseg``: Faktor & Irani, 1,037 images, 20 classes, one
split) is found through ``--config.data.manual_dir`` or ``$COSEG_DATA_DIR/
pascal_voc_coseg``. Protocols (the config argument's first token):

* ``disjoint``: train on the first ten classes of the builder's sorted list
  (Aero .. Cow), evaluate on the other ten (Dog .. Train), which training
  never sees: the model must find the common object of classes it does not
  know.
* ``split``: all 20 classes; a fixed per-class split of the images
  (``data.holdout_fraction`` 0.25 to test, seed ``data.holdout_seed``;
  ``data_pipelines.pipeline.holdout_selection``); no test image is trained
  on.
* ``all``: every image, for the model a user then runs ``--mode predict``
  with; evaluated on the training images (not a held-out figure).

Recipe flags (after the protocol): ``live`` trains from the live pipeline
instead of the frozen-encoder feature cache; ``blind`` trains without the
composite scenes that make the partner necessary (the partner-blind
comparison); ``finetune`` also fine-tunes the encoder's blocks past its
stride-16 level from the cache (``finetune_top``); ``runlocal`` is a
seconds-long variant for tests.
"""

import ml_collections

PROTOCOLS = ("disjoint", "split", "all")
FLAGS = ("live", "blind", "finetune", "runlocal")
NUM_CLASSES = 20
# Composite scenes (two objects of different classes, a member of both)
# per training image: they make the partner necessary (a partner-blind model
# cannot tell which object is the target).
COMPOSITES_PER_RECORD = 0.5


def apply_protocol(config: ml_collections.ConfigDict, protocol: str):
  """Sets ``config.data`` and ``config.eval.data`` for a protocol."""
  d = config.data
  d.name = "pascal_voc_coseg"
  d.builder_config = None
  d.train_split = "train"
  config.eval.split = "train"  # one split; classes or the holdout separate
  config.eval.data = ml_collections.ConfigDict()
  if protocol == "disjoint":
    d.class_slice = (0, NUM_CLASSES // 2)
    config.eval.data.class_slice = (NUM_CLASSES // 2, NUM_CLASSES)
  elif protocol == "split":
    d.holdout_fraction = 0.25
    d.holdout_seed = 0
    d.holdout_part = "train"
    config.eval.data.holdout_part = "test"
  elif protocol != "all":
    raise ValueError(f"unknown protocol {protocol!r}; expected one of "
                     f"{PROTOCOLS}")
  return config


def frozen_pretrained_backbone(config: ml_collections.ConfigDict,
                               backbone: str):
  """A backbone with its ImageNet weights, frozen and in evaluation mode."""
  config.model.backbone = backbone
  config.model.backbone_kwargs = ml_collections.ConfigDict()
  config.model.backbone_eval_mode = True
  config.init.pretrained = ml_collections.ConfigDict({
      "backbone": {"backbone": backbone, "path": "", "kwargs": {}}})
  config.optimizer.lr_multipliers = {"backbone": 0.0}
  return config


# EfficientNet-Lite's blocks (coseg_jax/backbones/efficientnet_lite.py):
# (index of the last block of each level, number of blocks). Configs do not
# import the models; tests/test_configs.py checks this table against them.
LITE_BLOCKS = {
    "efficientnet_lite0": ({"stride8": 4, "stride16": 10}, 16),
    "efficientnet_lite1": ({"stride8": 6, "stride16": 14}, 21),
    "efficientnet_lite2": ({"stride8": 6, "stride16": 14}, 21),
}
# Learning-rate factor of the fine-tuned encoder blocks against the heads'.
FINETUNE_LR_FACTOR = 1.0 / 3.0


def finetune_top(config: ml_collections.ConfigDict, level: str = "stride16",
                 factor: float = FINETUNE_LR_FACTOR):
  """Fine-tunes an EfficientNet-Lite encoder past ``level`` from the cache.

  The cache stores the levels up to ``level`` (the frozen bottom); the train
  step runs the later blocks and the 1280-wide head conv with learning rate
  factor ``factor``; BatchNorm stays on its ImageNet statistics.
  """
  backbone = config.model.backbone
  if backbone not in LITE_BLOCKS:
    raise ValueError(f"finetune_top: config.model.backbone must be one of "
                     f"{sorted(LITE_BLOCKS)}, got {backbone!r}")
  ends, count = LITE_BLOCKS[backbone]
  if level not in ends:
    raise ValueError(f"finetune_top: level must be one of {sorted(ends)}, "
                     f"got {level!r}")
  config.data.feature_cache.finetune_from = level
  top = [f"_blocks_{i}" for i in range(ends[level] + 1, count)]
  multipliers = {"backbone": 0.0}
  for name in top + ["_conv_head", "_bn1"]:
    multipliers[f"backbone/{name}"] = float(factor)
  config.optimizer.lr_multipliers = multipliers
  return config


def apply_recipe(config: ml_collections.ConfigDict, *, live: bool,
                 blind: bool, finetune: bool = False):
  """The CPU recipe's data side: the feature cache (unless ``live``),
  composite scenes (unless ``blind``), and the evaluators that show what
  the partner contributes."""
  d = config.data
  d.feature_cache.enabled = not live
  d.feature_cache.views = 4
  if finetune:
    if live:
      raise ValueError("recipe flags: 'finetune' trains from the feature "
                       "cache and cannot be combined with 'live'")
    finetune_top(config)
  d.composites.per_record = 0.0 if blind else COMPOSITES_PER_RECORD
  d.composites.background = "inpaint"
  config.eval.evaluators = ("coseg", "partner", "composite")
  config.eval.partner_pairs = 100
  config.eval.composites = 100
  return config


def apply_schedule(config: ml_collections.ConfigDict, num_steps: int = 500):
  """The recipes' shared schedule: ``num_steps`` (the recorded runs) of
  4 groups at 224 px, cosine after 50 warm-up steps; evaluation on 300
  groups."""
  config.data.image_size = 224
  config.optimizer.schedule = "cosine"
  config.optimizer.warmup_steps = 50
  t = config.train
  t.num_steps = num_steps
  t.global_batch_size = 4
  t.log_every = 10
  t.eval_every = 0
  t.checkpoint_every = 250
  config.eval.max_groups = 300  # round-robin over the classes
  config.eval.batch_size = 8
  config.predict.image_size = 224
  return config


def runlocal(config: ml_collections.ConfigDict):
  """Seconds-long variant for tests: 64 px, 2 steps, a few groups."""
  config.data.image_size = 64
  config.predict.image_size = 64
  t = config.train
  t.num_steps = 2
  t.global_batch_size = 2
  t.log_every = 1
  t.checkpoint_every = 2
  t.progress_bar = False
  config.optimizer.warmup_steps = 0
  config.eval.max_groups = 10
  config.eval.batch_size = 2
  config.eval.partner_pairs = 4
  config.eval.composites = 2
  config.data.feature_cache.views = 2
  # The common-object selection's cut-outs, when a recipe turns it on.
  config.eval.common_selection.crop_size = 64
  return config

