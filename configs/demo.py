"""The offline demo: CycleSegNet co-segmentation of synthetic groups on CPU.

The README's main command (trains, evaluates and draws in one go; offline: the
synthetic set is rendered locally, nothing is downloaded):

  python -m coseg_jax.main --config configs/demo.py --workdir /tmp/coseg_demo

It runs in two stages, both on the synthetic training split (``same64``: each
image shows its group's object and one distractor from another group, every
object in its category's texture, so a single image does not say which object
is common and a pair does):

1. Encoder pre-training (``config.pretrain_encoder``, 600 steps, about 45 s):
   the tiny CNN encoder learns to name the category of every pixel inside the
   training masks (``coseg_jax.models.dense_category``). This stands in for
   the paper's ImageNet weights, which a from-scratch encoder lacks.
2. CycleSegNet (multi-level Cycle Refinement with 3 ConvLSTM steps, Lovász
   loss) on top of that encoder, kept frozen (``optimizer.lr_multipliers``),
   2,000 steps.

It then evaluates on the held-out synthetic test groups (prints P and J per
class and the class average) and writes masks, overlays and a per-refinement-
step strip for a few held-out groups to ``/tmp/coseg_demo/figures``.
Afterwards:

  python -m coseg_jax.main --config configs/demo.py --workdir /tmp/coseg_demo \\
      --mode eval
  python -m coseg_jax.main --config configs/demo.py --workdir /tmp/coseg_demo \\
      --mode predict --images '/path/to/photos/*.jpg' --out /tmp/coseg_demo/pred

``configs/demo.py:runlocal`` is a seconds-long version for tests.

Reductions from the paper's setting (``configs/cyclesegnet_voc2012.py``), all
for a few CPU minutes: 64 px images instead of 512; the tiny CNN, pre-trained
on the training masks' categories and then frozen, instead of ImageNet
ResNet-34 fine-tuned at 1e-5 (so Adam at 3e-3 for the rest); N = 3
refinement steps instead of 7 (the per-step strip shows what the steps do);
encoder skips into the decoder for sharper edges at 64 px. Two RCM options
that are not in the paper: ``regions='raw'`` (every pixel of the partner is a
region, where the paper pools 2x2) and ``match_score`` (each pixel's best
query-key match as one more channel).

Measured (benchmarks/RESULTS.md, session 6): held-out Avg. J 0.806 in
7 min 8 s of wall time on a 2-core CPU (seeds 1 and 2: 0.823, 0.803). With
the paper's RCM (2x2 pooled regions, no match channel) the same run gives
0.785. Without the pre-trained frozen encoder every variant tried ended at
0.71-0.75: trained end to end, the encoder learns single-image cues (object
size, stacking order) instead of features that match across the pair.
"""

from configs import baselines
from configs import cyclesegnet_voc2012


def get_config(arg=None):
  """CycleSegNet on 64 px synthetic pairs; ``runlocal`` shrinks it for tests."""
  _, runlocal = baselines.parse_arg(arg, methods=())
  config = cyclesegnet_voc2012.get_config("mcycle,runlocal")
  config.model.num_steps = 3
  config.visualise.num_groups = 2 if runlocal else 4
  # The tiny encoder has no ImageNet weights: a first stage trains it to name
  # the class of every pixel inside the training masks, and the CycleSegNet
  # stage keeps it frozen (coseg_jax.encoder_pretrain; RESULTS.md session 6).
  config.pretrain_encoder.num_steps = 2 if runlocal else 600
  config.pretrain_encoder.global_batch_size = 2 if runlocal else 16
  config.pretrain_encoder.learning_rate = 3e-3
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
    config.train.progress_bar = False
    config.eval.strategy = "pairs"
    config.eval.max_groups = -1
    config.eval.batch_size = 16
    config.benchmark = dict(steps=10, warmup=2)
  return config
