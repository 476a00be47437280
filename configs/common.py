"""The base config every experiment config starts from.

Every file under ``configs/`` defines ``get_config(arg=None)`` that calls
``get_base_config()`` and then overrides the sections it cares about. The
sections (the runtime contract):

* ``method``: a name registered in ``coseg_jax.models`` (``available_methods()``).
* ``model``: passed as-is to the method's ``build_model``. ``backbone`` and
  ``dtype`` ('float32' | 'bfloat16': the compute dtype; parameters are always
  float32 and losses are computed in float32) are common to every method.
* ``data``: ``data_pipelines.config.default_data_config()``.
* ``loss``: weight by loss-term name, summed by
  ``coseg_jax.losses.compute_total_loss`` (a term without a weight is an error).
* ``optimizer``: see ``coseg_jax.train.make_optimizer``.
* ``train``, ``eval``, ``predict``, ``init``, ``mesh``: documented inline.

Example launch (any config file built on this one)::

  python -m coseg_jax.main --config configs/baselines.py:baseline,runlocal \
      --workdir /tmp/coseg_baseline --mode train
"""

import ml_collections
from ml_collections import config_dict


# The PASCAL-VOC co-segmentation set's 20 classes (folder names, sorted) and
# the class-disjoint split of the CycleSegNet/CoSegNet/DCC experiments.
PASCAL_COSEG_CLASSES = (
    "Aero", "Bicycle", "Bird", "Boat", "Bottle", "Bus", "Car", "Cat", "Chair",
    "Cow", "Dog", "Horse", "Mbike", "Monitor", "Person", "Plant", "Sheep",
    "Sofa", "Table", "Train")
PASCAL_COSEG_SEEN = PASCAL_COSEG_CLASSES[:10]
PASCAL_COSEG_UNSEEN = PASCAL_COSEG_CLASSES[10:]
PASCAL_COSEG_DIR = "/work/shared/data/pascal_voc_coseg"


def lite0_weights_path():
  """Path of the real Lite0 ImageNet weights, or None when not installed."""
  try:
    from coseg_jax.backbones import weights  # pylint: disable=g-import-not-at-top
    return str(weights.find_lite_weights("efficientnet_lite0"))
  except Exception:  # pylint: disable=broad-except
    return None


def _data_config() -> ml_collections.ConfigDict:
  from data_pipelines import config as data_config  # pylint: disable=g-import-not-at-top
  return data_config.default_data_config()


def get_base_config() -> ml_collections.ConfigDict:
  """Returns the base ConfigDict with every section of the runtime contract."""
  config = ml_collections.ConfigDict()

  config.method = "baseline"

  config.model = ml_collections.ConfigDict()
  config.model.backbone = "tiny"
  # Extra keyword arguments for ``get_backbone`` (e.g. output stride).
  config.model.backbone_kwargs = ml_collections.ConfigDict()
  # True: the backbone runs in evaluation mode during training too (BatchNorm
  # on its loaded running statistics, no dropout): for a frozen encoder.
  config.model.backbone_eval_mode = False
  config.model.dtype = "float32"

  config.data = _data_config()

  # Weight per loss term name (the method's loss_fn returns the terms).
  config.loss = ml_collections.ConfigDict()

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adam"  # 'adam' | 'adamw' | 'sgd'
  config.optimizer.learning_rate = 1e-3
  # 'constant' | 'cosine' (to 0 at num_steps) | 'step' (x step_factor at each
  # of step_boundaries, given as fractions of num_steps) | 'poly' (power
  # poly_power to 0 at num_steps, the DeepLab schedule).
  config.optimizer.schedule = "constant"
  config.optimizer.warmup_steps = 0  # linear warm-up from 0, then the schedule
  config.optimizer.step_boundaries = (0.5, 0.75)
  config.optimizer.step_factor = 0.1
  config.optimizer.poly_power = 0.9
  config.optimizer.weight_decay = 0.0
  # True: decoupled (AdamW / SGDW style), param <- param - lr * wd * param,
  # NOT scaled by Adam's second moment. False: L2-style (the Caffe/PyTorch
  # `weight_decay` of SGD and Adam), wd * param added to the gradient before
  # the optimiser, so Adam rescales it. 'adamw' always decouples.
  config.optimizer.decoupled_weight_decay = False
  config.optimizer.momentum = 0.9  # SGD momentum (Nesterov off)
  config.optimizer.beta1 = 0.9
  config.optimizer.beta2 = 0.999
  config.optimizer.grad_clip_norm = 0.0  # global-norm clipping; 0 disables
  # The papers' Caffe iter_size: gradients of this many consecutive batches
  # are averaged before one update (optax.MultiSteps). The schedule counts
  # updates, not micro-batches.
  config.optimizer.grad_accum_steps = 1
  # {top-level parameter name: factor} scaling that subtree's updates, e.g.
  # {'backbone': 0.1} to fine-tune a pretrained encoder gently (0 freezes).
  config.optimizer.lr_multipliers = {}

  config.train = ml_collections.ConfigDict()
  config.train.num_steps = 10_000  # micro-batch steps (data batches consumed)
  config.train.global_batch_size = 8  # groups per step over all processes
  config.train.log_every = 50
  config.train.eval_every = 1000  # 0 disables periodic evaluation
  config.train.checkpoint_every = 1000
  config.train.keep_checkpoints = 3
  config.train.seed = 0
  # Deterministic XLA reductions (GPU); CPU is deterministic already.
  config.train.deterministic = False
  config.train.progress_bar = True

  config.eval = ml_collections.ConfigDict()
  config.eval.split = "test"
  config.eval.strategy = "pairs"  # 'pairs' | 'a' | 'b' | 'c' | 'd' (CycleSegNet 4.3)
  config.eval.group_size = 2
  config.eval.threshold = 0.5
  # How a probability map becomes a mask: 'threshold' (eval.threshold), or
  # 'otsu' | 'crf' | 'grabcut' (coseg_jax.postprocess; 'crf' needs the crf
  # extra). Used by --mode eval and --mode predict.
  config.eval.postprocess = "threshold"
  config.eval.max_groups = -1  # -1 = all
  config.eval.batch_size = 8

  config.predict = ml_collections.ConfigDict()
  config.predict.group_strategy = "all_pairs"  # 'all_pairs' | 'group'
  config.predict.image_size = 256

  config.init = ml_collections.ConfigDict()
  # Path to pretrained backbone weights (.pth / .safetensors / .npz) or None.
  config.init.backbone_weights = config_dict.placeholder(str)
  # Workdir of another run; its latest checkpoint's params (and batch stats)
  # initialise this run. Optimiser state and step start fresh.
  config.init.from_checkpoint = config_dict.placeholder(str)

  # Optional first stage (coseg_jax.encoder_pretrain): train the encoder to
  # name the class of every pixel inside the training masks, then start the
  # co-segmentation run from it. A stand-in for ImageNet weights where none
  # exist (the demo's tiny encoder); num_steps 0 disables it.
  config.pretrain_encoder = ml_collections.ConfigDict()
  config.pretrain_encoder.num_steps = 0
  config.pretrain_encoder.global_batch_size = 16  # groups (K images each)
  config.pretrain_encoder.learning_rate = 3e-3  # Adam, cosine to 0
  config.pretrain_encoder.warmup_steps = 0
  config.pretrain_encoder.weight_decay = 1e-4  # decoupled (AdamW)
  config.pretrain_encoder.levels = ("stride8", "stride16", "stride32")
  config.pretrain_encoder.subdir = "encoder_pretrain"  # under the workdir

  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1  # size of the 'data' axis; -1 = all devices
  # Multi-host: coordinator 'host:port', process count and id. Left None,
  # jax.distributed.initialize() auto-detects on TPU pods / SLURM / Open MPI.
  config.mesh.coordinator_address = config_dict.placeholder(str)
  config.mesh.num_processes = config_dict.placeholder(int)
  config.mesh.process_id = config_dict.placeholder(int)
  config.mesh.initialize_distributed = False

  return config


def get_config(arg=None):
  """The base config itself (baseline model, synthetic data)."""
  del arg
  return get_base_config()
