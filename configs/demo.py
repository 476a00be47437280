"""The offline demo: CycleSegNet co-segmentation of synthetic groups on CPU.

The README's main command (trains, evaluates and draws in one go; offline: the
synthetic set is rendered locally, nothing is downloaded):

  python -m coseg_jax.main --config configs/demo.py --workdir /tmp/coseg_demo

It runs two stages (``config.stages``), both on the synthetic training split
(``same64``: each image shows its group's object and one distractor from
another group, every object in its category's texture, so a single image does
not say which object is common and a pair does):

1. ``encoder_pretrain`` (600 steps, about 45 s): the tiny CNN encoder learns
   to name the category of every pixel inside the training masks
   (``coseg_jax.models.dense_category``). This stands in for the paper's
   ImageNet weights, which a from-scratch encoder lacks.
2. ``main``: CycleSegNet (multi-level Cycle Refinement with 3 ConvLSTM
   steps, Lovász loss) on top of that encoder, kept frozen
   (``optimizer.lr_multipliers``), 2,000 steps.

It then evaluates on the held-out synthetic test groups (P and J per class,
the class average, and the all-foreground and centre references) and writes
masks, overlays and a per-refinement-step strip for a few held-out groups to
``<workdir>/figures``. Afterwards:

  python -m coseg_jax.main --config configs/demo.py --workdir /tmp/coseg_demo \\
      --mode eval
  python -m coseg_jax.main --config configs/demo.py --workdir /tmp/coseg_demo \\
      --mode predict --images 'photos/*.jpg' --out /tmp/coseg_demo/pred

``configs/demo.py:runlocal`` is a seconds-long version for tests.

Reductions from the paper's setting (``configs/cyclesegnet_voc2012.py``), all
for a few CPU minutes: 64 px images instead of 512; the tiny CNN, pre-trained
on the training masks' categories and then frozen, instead of ImageNet
ResNet-34 fine-tuned at 1e-5 (so Adam at 3e-3 for the rest); N = 3
refinement steps instead of 7 (the per-step strip shows what the steps do);
encoder skips into the decoder for sharper edges at 64 px; augmentation.
Three RCM options that are not in the paper: ``regions='raw'`` (every pixel
of the partner is a region, where the paper pools 2x2), ``match_score``
(each pixel's best query-key match as one more channel) and
``value_projection`` (values ReLU(conv1x1(regions)) where eq. 11 reads the
regions). Measured figures: docs/results.md.
"""

from configs import args
from configs import base
from configs import cyclesegnet_voc2012


def get_config(arg=None):
  """CycleSegNet on 64 px synthetic pairs; ``runlocal`` shrinks it for tests."""
  runlocal = args.parse(arg, config="demo", flags=("runlocal",)).runlocal
  config = cyclesegnet_voc2012.get_config("runlocal")
  config.model.num_steps = 3
  # Ours, not the paper's (whose config sets both off): the value
  # projection in the RCM and data augmentation; the demo's measured
  # figures were made with them.
  config.model.value_projection = True
  config.data.augment.enabled = True
  config.visualise.num_groups = 2 if runlocal else 4
  # The tiny encoder has no ImageNet weights: a first stage trains it to name
  # the class of every pixel inside the training masks, and the CycleSegNet
  # stage keeps it frozen.
  config.stages = ("encoder_pretrain", "main")
  config.encoder_pretrain = base.encoder_pretrain_section(
      num_steps=2 if runlocal else 600,
      global_batch_size=2 if runlocal else 16, learning_rate=3e-3)
  config.optimizer.lr_multipliers = {"backbone": 0.0}
  # Not in the paper: every pixel of the partner is a region, and the RCM
  # appends each pixel's best query-key match (region_attention docstring).
  config.model.regions = "raw"
  config.model.match_score = True
  if not runlocal:
    config.model.backbone = "tiny"
    config.model.backbone_kwargs = {"widths": (16, 24, 32, 48, 64)}
    config.model.multi_level = True
    config.model.crm_features = None
    config.model.decoder_widths = (48, 32, 32, 16, 16)
    config.model.use_skips = True
    config.data.name = "synthetic"
    # 10 classes x 40/10 at 64 px; objects wear their category's texture and
    # each image has one distractor of another category (see the builder).
    config.data.builder_config = "same64"
    config.data.image_size = 64
    config.predict.image_size = 64
    config.optimizer.learning_rate = 3e-3
    config.optimizer.schedule = "cosine"
    config.optimizer.warmup_steps = 30
    config.optimizer.weight_decay = 0.0
    config.train.num_steps = 2000
    config.train.global_batch_size = 8
    config.train.log_every = 50
    config.train.eval_every = 2000
    config.train.checkpoint_every = 200
    config.eval.strategy = "pairs"
    config.eval.max_groups = -1
    config.eval.batch_size = 16
    config.benchmark = dict(steps=10, warmup=2)
  return config
