"""CycleSegNet on PASCAL VOC 2012 co-segmentation pairs: the paper's setting.

Zhang et al., "CycleSegNet: Object Co-Segmentation with Cycle Refinement and
Region Correspondence", IEEE TIP 2021. Config argument: comma-separated
tokens, any of

* the model: ``full`` (default): the full model of Sec. 4.1 and Tables 2-6,
  Mcycle with multi-level features (CRMs on res3/res4/res5, Sec. 3.4);
  or a Table 1 row: ``baseline``, ``mcat``, ``mmul`` (the Siamese baselines
  of ``coseg_jax.models.baselines``), ``mcross`` (one RCM exchange, no
  ConvLSTM) or ``mcycle`` (the CRM). Sec. 4.3: "All the models are tested
  with the single-level feature encoder", so all five Table 1 rows are
  single-level and compare like with like (the baselines have no
  multi-level form);
* ``single``: the full model single-level (= ``mcycle``); ``multi``: Mcross
  or Mcycle multi-level (``mcycle,multi`` = ``full``);
* ``runlocal``: a seconds-long CPU variant (tiny backbone, synthetic data).

Launch (VOC 2012 is not distributed with this repository; point
``manual_dir`` at the VOCdevkit/VOC2012 layout, see ``data_pipelines``).
The paper starts from ImageNet ResNet-34 weights, so the config refuses to
train without them (``init.require_pretrained``; torchvision state dict,
not downloadable on the dev machines):

  python -m coseg_jax.main --config configs/cyclesegnet_voc2012.py \\
      --config.data.manual_dir=/data/VOCdevkit/VOC2012 \\
      --config.init.backbone_weights=resnet34.pth \\
      --workdir /tmp/cyclesegnet_voc --mode train
  # Table 5 group evaluation: strategy a-d with tuple size k, or pairs.
  python -m coseg_jax.main --config configs/cyclesegnet_voc2012.py \\
      --config.data.manual_dir=/data/VOCdevkit/VOC2012 \\
      --config.eval.strategy=b --config.eval.group_size=4 \\
      --workdir /tmp/cyclesegnet_voc --mode eval

CPU smoke run: ``--config configs/cyclesegnet_voc2012.py:runlocal`` (no
ImageNet weights required).

Departures from the paper, all stated where they are set: the decoder widths
(the paper does not list its decoder), the ConvLSTM kernel and forget bias
(not stated), and nothing else by default. Data augmentation is off, as the
paper describes none (``data.augment.enabled=True`` is ours). The RCM
attends over the fused regions themselves (eq. 11, ``model.value_projection
=False``); a 1x1 conv + ReLU value projection is available (True, ours).
"""

import ml_collections

from configs import args
from configs import base

MODELS = ("full",)
ABLATIONS = ("mcycle", "mcross", "baseline", "mcat", "mmul")  # Table 1
BASELINES = ("baseline", "mcat", "mmul")


def get_config(arg=None):
  """Returns the paper's config (or a Table 1 row / runlocal variant)."""
  a = args.parse(arg, config="cyclesegnet_voc2012",
                 groups={"ablation": MODELS + ABLATIONS},
                 flags=("single", "multi", "runlocal"))
  ablation, runlocal = a.ablation, a.runlocal
  if a.single and a.multi:
    raise ValueError("configs/cyclesegnet_voc2012.py: 'single' and 'multi' "
                     "are both given; give one")
  if a.multi and ablation in BASELINES:
    raise ValueError(f"configs/cyclesegnet_voc2012.py: {ablation!r} has no "
                     f"multi-level form ('multi' is for mcross and mcycle)")
  # Table 1 (Sec. 4.3): every row single-level; the full model multi-level.
  multi_level = (not a.single) if ablation == "full" else a.multi
  config = base.get_base_config()
  config.method = ("cyclesegnet" if ablation in ("full", "mcycle", "mcross")
                   else ablation)

  m = config.model
  m.backbone = "resnet34"  # Sec. 4.1: Siamese ResNet-34 (ImageNet)
  m.backbone_kwargs = ml_collections.ConfigDict()
  m.exchange = "cross" if ablation == "mcross" else "cycle"
  m.multi_level = multi_level  # Sec. 3.4: CRM on res3/res4/res5, fused
  m.num_steps = 7  # Sec. 4.1 / Table 2: N = 7 refinement steps
  m.region_size = (2, 2)  # Sec. 4.1 / Table 3: 2x2 regions
  m.regions = "pooled"
  m.crm_features = ml_collections.config_dict.placeholder(int)  # encoder width
  m.key_features = ml_collections.config_dict.placeholder(int)
  m.lstm_kernel = 3  # not stated in the paper
  m.forget_bias = 0.0
  m.peephole = False
  m.fuse_kernel = 1
  # Eq. 11: softmax(S) C'_B, the fused regions themselves are the values
  # (True: ReLU(conv1x1(C'_B)) values, ours).
  m.value_projection = False
  m.scale_attention = False
  m.match_score = False  # not in the paper: RCM best-match channel
  m.decoder_widths = (256, 128, 64, 32, 16)  # decoder not listed; ours
  m.convs_per_block = 1
  m.use_skips = False
  m.fusion_features = ml_collections.config_dict.placeholder(int)
  m.crm_levels = ml_collections.config_dict.placeholder(tuple)  # 8/16/32
  m.decode_all_steps = False
  # Not in the paper: partner-similarity channels (levels, e.g.
  # ("stride16", "stride32"); empty: off), of the backbone features or of a
  # learnt projection to partner_prior_features channels.
  m.partner_prior_levels = ()
  m.partner_prior_features = ml_collections.config_dict.placeholder(int)
  m.dtype = "float32"

  config.data.name = "voc2012_coseg"
  config.data.image_size = 512  # Sec. 4.1: 512 x 512 inputs
  config.data.sampler = "pairs"
  config.data.group_size = 2
  # Sec. 4.1 resizes every image to 512 x 512 and names no augmentation.
  config.data.augment.enabled = False

  config.loss = {"lovasz": 1.0}  # Sec. 4.1: Lovász-Softmax

  config.optimizer.name = "adam"  # Sec. 4.1: Adam, lr 1e-5, wd 5e-4
  config.optimizer.learning_rate = 1e-5
  config.optimizer.weight_decay = 5e-4
  config.optimizer.schedule = "constant"

  config.train.num_steps = 40_000  # Sec. 4.1: 40k iterations, batch 4
  config.train.global_batch_size = 4
  config.train.eval_every = 5000
  config.train.checkpoint_every = 2000

  config.eval.split = "test"  # the 725-image test half of VOC val
  config.eval.strategy = "pairs"  # or 'a'..'d' with eval.group_size (Table 5)
  config.eval.group_size = 2
  config.eval.batch_size = 4
  config.predict.group_strategy = "group"
  config.predict.image_size = 512

  # Demo figures after training (method 'cyclesegnet'; 0 = off).
  config.visualise = ml_collections.ConfigDict()
  config.visualise.num_groups = 0
  config.visualise.subdir = "figures"

  config.benchmark = dict(steps=3, warmup=1)
  # Sec. 4.1: the encoder starts from ImageNet; refuse a random one.
  config.init.require_pretrained = True

  if runlocal:
    config.init.require_pretrained = False
    m.backbone = "tiny"
    m.num_steps = 2
    m.decoder_widths = (16, 16, 8, 8, 8)
    m.use_skips = True
    config.optimizer.learning_rate = 1e-3
    config.optimizer.weight_decay = 0.0
    config.train.eval_every = 4
    config.eval.split = "test"
    base.apply_tiny_run(config, benchmark_steps=2)
  return config
