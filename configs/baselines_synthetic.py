"""CycleSegNet's Table 1 baselines (baseline / Mcat / Mmul) on the synthetic set.

One file for the three methods: the method is the first part of the config
argument, optionally followed by ``runlocal`` (a seconds-long CPU variant for
tests and smoke runs). The three share every setting except ``method``, so a
comparison between them is a comparison of the feature exchange alone.

Launch (train, then evaluate the latest checkpoint, then co-segment a folder):

  python -m coseg_jax.main --config configs/baselines_synthetic.py:mcat \\
      --workdir /tmp/coseg_mcat --mode train
  python -m coseg_jax.main --config configs/baselines_synthetic.py:mcat \\
      --workdir /tmp/coseg_mcat --mode eval
  python -m coseg_jax.main --config configs/baselines_synthetic.py:mcat \\
      --workdir /tmp/coseg_mcat --mode predict --images 'photos/*.jpg' \\
      --out /tmp/coseg_mcat/predictions

CPU smoke run (a few steps, tiny images):

  python -m coseg_jax.main --config configs/baselines_synthetic.py:baseline,runlocal \\
      --workdir /tmp/coseg_smoke --mode train

Settings: the paper trains these on PASCAL VOC 2012 pairs with ResNet-34 at
512 px (Sec. 4.2); here they run on the procedural ``synthetic`` set with the
``tiny`` backbone so that they train on a CPU in minutes. Loss: Lovász-Softmax
over {background, foreground} as in the paper; Adam at 1e-3 (a from-scratch
tiny network needs a larger rate than the paper's fine-tuning 1e-5).
"""

from configs import args
from configs import base

METHODS = ("baseline", "mcat", "mmul")


def get_config(arg=None):
  """Returns the config for 'baseline' | 'mcat' | 'mmul' [',runlocal']."""
  a = args.parse(arg, config="baselines_synthetic",
                 groups={"method": METHODS}, flags=("runlocal",))
  runlocal = a.runlocal
  config = base.get_base_config()
  config.method = a.method

  config.model.backbone = "tiny"
  config.model.decoder_widths = (64, 32, 32, 16, 16)
  config.model.convs_per_block = 1
  config.model.use_skips = True
  config.model.dtype = "float32"

  config.data.name = "synthetic"
  config.data.image_size = 96
  config.data.sampler = "pairs"
  config.data.group_size = 2

  config.loss = {"lovasz": 1.0}

  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 1e-3
  config.optimizer.schedule = "cosine"
  config.optimizer.warmup_steps = 100

  config.train.num_steps = 3000
  config.train.global_batch_size = 16
  config.train.log_every = 50
  config.train.eval_every = 1000
  config.train.checkpoint_every = 500

  config.eval.split = "test"
  config.eval.strategy = "pairs"
  config.eval.group_size = 2
  config.eval.max_groups = -1
  config.eval.batch_size = 16

  config.predict.group_strategy = "all_pairs"
  config.predict.image_size = 96

  # --mode benchmark: timed calls (median reported) after untimed warm-up.
  config.benchmark = dict(steps=10, warmup=2)

  if runlocal:
    config.model.decoder_widths = (16, 16, 8, 8, 8)
    config.train.eval_every = 0
    config.optimizer.warmup_steps = 0
    base.apply_tiny_run(config)
  return config
