"""CoSegNet / DCC class-disjoint experiment on the PASCAL-VOC co-segmentation set.

``pascal_voc_coseg`` (Faktor & Irani, 1,037 images, 20 classes, one split):
train on the first 10 classes (alphabetical, Aero .. Cow) and evaluate on the
other 10 (Dog .. Train), never seen in training. The same split as
CycleSegNet's class-disjoint experiment.

Config argument: ``[cosegnet|base|dcc][,train|unseen][,cpu|runlocal]``.
``unseen`` selects the evaluation classes; ``cpu`` is the reduced run
recorded in benchmarks/RESULTS.md; ``runlocal`` runs in seconds.

  python -m coseg_jax.main --config configs/cosegnet_pascal_disjoint.py:cosegnet,cpu \\
      --config.data.manual_dir=/work/shared/data/pascal_voc_coseg \\
      --workdir /tmp/cosegnet_disjoint --mode train
  python -m coseg_jax.main --config configs/cosegnet_pascal_disjoint.py:cosegnet,unseen,cpu \\
      --config.data.manual_dir=/work/shared/data/pascal_voc_coseg \\
      --workdir /tmp/cosegnet_disjoint --mode eval

Decision accuracy on cross-class negative pairs:
``python benchmarks/cosegnet_dcc.py voc --method cosegnet ...`` (see
benchmarks/RESULTS.md).

Deviations from the papers (stated, CPU-driven): the encoder is
EfficientNet-Lite0 with its real ImageNet weights (no VGG16 / VGG16-BN
ImageNet weights are reachable here, and a randomly initialised VGG cannot
learn 500 images' worth of objects); Adam at 1e-4 instead of SGD 1e-5 / Adam
1e-5 (hundreds, not tens of thousands, of steps). CoSegNet keeps the full
13-layer decoder structure at a width multiplier (1/8 for ``cpu``) and the
metric net on cT9; DCC matches Lite0's stride-16 map (112 channels) with
kernels 1, 3, 5. ``cpu``: 128 px inputs, batch 4, 400 steps.
The CoSegNet runs recorded in benchmarks/RESULTS.md (session 7) add, through
``benchmarks/cosegnet_dcc.py`` flags: ``--freeze_encoder`` (lr multiplier 0
and ``model.backbone_eval_mode``), ``--loss`` with mask weight 1,
``--set optimizer.learning_rate=1e-3`` and ``--steps 2000``.
"""

from configs import common
from configs import cosegnet_voc
from configs import dcc_voc

ALL_CLASSES = common.PASCAL_COSEG_CLASSES
TRAIN_CLASSES = common.PASCAL_COSEG_SEEN
UNSEEN_CLASSES = common.PASCAL_COSEG_UNSEEN
DEFAULT_MANUAL_DIR = common.PASCAL_COSEG_DIR
_METHODS = ("cosegnet", "base", "dcc")


def get_config(arg=None):
  """'cosegnet'|'base'|'dcc' [,train|unseen] [,cpu|runlocal]."""
  tokens = [t for t in (arg or "").split(",") if t]
  unknown = set(tokens) - set(_METHODS) - {"train", "unseen", "cpu",
                                           "runlocal"}
  if unknown:
    raise ValueError(f"unknown config variant(s) {sorted(unknown)}; expected "
                     f"one of {_METHODS}, 'train'/'unseen', 'cpu'/'runlocal'")
  method = next((t for t in tokens if t in _METHODS), "cosegnet")
  if method == "dcc":
    config = dcc_voc.get_config()
    config.model.feature_level = "stride16"  # Lite0 block 10, 112 ch
    config.model.decoder_widths = (128, 64, 64, 32, 16)
    config.data.sampler = "pairs"
    config.data.augment.scale_min = 0.8  # the set's objects are large
    config.data.augment.scale_max = 1.25
  else:
    config = cosegnet_voc.get_config(method)
    config.model.width_multiplier = 0.25
  config.model.backbone = "efficientnet_lite0"
  config.model.backbone_kwargs = {}
  config.init.backbone_weights = common.lite0_weights_path()

  d = config.data
  d.name = "pascal_voc_coseg"
  d.manual_dir = DEFAULT_MANUAL_DIR
  d.builder_config = None
  d.train_split = "train"
  d.eval_split = "train"  # one split; the classes separate the sets
  d.image_size = 224
  d.classes = UNSEEN_CLASSES if "unseen" in tokens else TRAIN_CLASSES

  o = config.optimizer
  o.name = "adam"
  o.learning_rate = 1e-4
  o.weight_decay = 0.0
  o.schedule = "cosine"
  o.warmup_steps = 50
  t = config.train
  t.num_steps = 3000
  t.global_batch_size = 4
  t.eval_every = 0
  t.checkpoint_every = 500
  config.eval.split = "train"
  config.eval.strategy = "pairs"
  config.eval.max_groups = -1
  config.eval.batch_size = 8
  config.predict.image_size = 224

  if "cpu" in tokens:
    d.image_size = 128
    if method != "dcc":
      config.model.width_multiplier = 1 / 8
    t.num_steps = 400
    t.log_every = 25
    t.checkpoint_every = 200
    t.progress_bar = False
    o.warmup_steps = 20
    config.eval.max_groups = 300  # round-robin: 30 pairs per unseen class
    config.predict.image_size = 128
  if "runlocal" in tokens:
    d.image_size = 64
    if method != "dcc":
      config.model.width_multiplier = 1 / 16
    else:
      config.model.decoder_widths = (16, 16, 8, 8, 8)
    t.num_steps = 2
    t.global_batch_size = 2
    t.log_every = 1
    t.checkpoint_every = 2
    t.progress_bar = False
    o.warmup_steps = 0
    config.eval.max_groups = 10
    config.eval.batch_size = 2
    config.predict.image_size = 64
  return config
