"""DCC (depth-wise cross-correlation pair network), paper settings.

Config argument: ``[runlocal]``. Trains on VOC 2012 co-segmentation pairs
at 513x513 with random scale, crop and rotation; evaluates every pair of each
class at the data's resize (the network works at any input size).

Launch (ImageNet VGG16-BN weights from torchvision's ``vgg16_bn-6c64b313.pth``,
converted by ``coseg_jax.backbones.weights``):

  python -m coseg_jax.main --config configs/dcc_voc2012.py \\
      --config.data.manual_dir=/path/to/VOCdevkit/VOC2012 \\
      --config.init.backbone_weights=/path/to/vgg16_bn-6c64b313.pth \\
      --workdir /tmp/dcc --mode train
  python -m coseg_jax.main --config configs/dcc_voc2012.py:runlocal \\
      --workdir /tmp/dcc_smoke --mode train

Paper settings (appendix, paper 003): Siamese VGG16 encoder with BatchNorm
from ImageNet (its 13 convolutions, C.2), 513x513 training crops with random
scale, crop and rotation, Adam with a fixed learning rate of 1e-5, batch 5
pairs, 10 epochs, "about 335k" updates (C.2), loss CE_A + CE_B (eq. B1); the
decoder reads the cross-correlation output (appendix B:
``model.include_features = False``), BatchNorm-normalised as every
convolution input is (C.2: ``model.match_norm = 'batchnorm'``; see
``coseg_jax.models.dcc``). Our choices where the appendix is silent (module
docstring of ``coseg_jax.models.dcc``): matching at relu5_3 (stride 16),
kernels 1x1, 3x3, 5x5, L2-normalised features, scales concatenated, a
five-block bilinear decoder with encoder skips; scale range 0.5-2.0 and
+-15 degrees. The earlier form is ``--config.model.include_features=True
--config.model.match_norm=none``.
"""

from configs import args
from configs import base


def get_config(arg=None):
  """'' or 'runlocal'."""
  runlocal = args.parse(arg, config="dcc_voc2012", flags=("runlocal",)).runlocal
  config = base.get_base_config()
  config.method = "dcc"

  m = config.model
  m.backbone = "vgg16_bn"
  m.feature_level = "stride16"
  m.kernel_sizes = (1, 3, 5)
  m.combine = "concat"
  m.normalize_features = True
  m.match_norm = "batchnorm"  # appendix C.2: BN on every conv input
  m.include_features = False  # appendix B: the decoder reads the matching
  m.decoder_widths = (256, 128, 64, 32, 16)
  m.convs_per_block = 1
  m.use_skips = True
  m.xcorr_method = "shift"
  m.dtype = "float32"

  d = config.data
  d.name = "voc2012_coseg"
  d.image_size = 513
  d.sampler = "pairs"
  d.negative_fraction = 0.0
  d.augment.enabled = True  # random scale, crop, rotation (+ flip)
  d.augment.scale_min = 0.5
  d.augment.scale_max = 2.0
  d.augment.max_rotation_deg = 15.0
  d.augment.crop = True

  config.loss = {"ce": 1.0}  # CE_A + CE_B

  o = config.optimizer
  o.name = "adam"
  o.learning_rate = 1e-5
  o.weight_decay = 0.0
  o.schedule = "constant"

  t = config.train
  # Appendix C.2: 10 epochs over the >160k training pairs, "about 335k"
  # updates at batch 5.
  t.num_steps = 335_000
  t.global_batch_size = 5  # batch 5 pairs
  t.log_every = 100
  t.eval_every = 0
  t.checkpoint_every = 2000

  config.eval.split = "test"
  config.eval.strategy = "pairs"
  config.eval.batch_size = 4
  config.predict.image_size = 513
  config.predict.group_strategy = "all_pairs"
  config.benchmark = dict(steps=10, warmup=2)

  if runlocal:
    m.backbone = "tiny"
    m.backbone_kwargs = {"widths": (8, 16, 16, 32, 32)}
    m.decoder_widths = (16, 16, 8, 8, 8)
    d.augment.enabled = False
    o.learning_rate = 1e-3
    base.apply_tiny_run(config)
  return config
