"""Shared pieces of the MaCoSNet configs (Chen et al., "Show, Match and Segment").

Not a launchable config by itself: ``configs/macosnet_tss.py``,
``macosnet_internet.py`` and ``macosnet_pf_pascal.py`` build on :func:`base`.
Every run has two stages (``config.stages``): ``matcher_pretrain`` trains the
transformation predictor G on synthetic affine + TPS warps (the paper starts
G from such a predictor, CNNGeo's procedure, to avoid the degenerate identity
solution; the warps are made from PASCAL-VOC co-segmentation images by
default, ``config.matcher_pretrain``), then ``main`` trains jointly from it.
One command runs both:

  python -m coseg_jax.main --config configs/macosnet_tss.py:lite0 \
      --config.data.manual_dir=/path/to/tss --workdir /tmp/macos_tss

Every config takes the argument ``[runlocal][,lite0][,no_<term>]...``:

* ``runlocal``: a seconds-long CPU variant (tiny backbone, tiny perceptual
  network, 176 px so the stride-16 grid is the regressor's minimum 11 x 11,
  synthetic data, a few steps) for tests and smoke runs;
* ``lite0``: EfficientNet-Lite0 (real ImageNet weights, frozen) as encoder E
  instead of ResNet-101 (whose ImageNet weights must be supplied by the
  user): what can run with real weights on these machines;
* ``no_<term>``: the Table 7-8 ablations, the weight of that loss term set to
  0 (``no_cycle``, ``no_transitivity``, ``no_contrastive``,
  ``no_cross_consistency``, ``no_matching``).

Soft masks become binary by ``config.eval.postprocess``: the 0.5 threshold,
or Otsu, dense CRF or GrabCut (``coseg_jax.postprocess``), in ``--mode eval``
and ``--mode predict``. ``--mode eval`` reports matching (PCK / flow-PCK) and,
where the data has masks, P and J.

Paper settings (Sec. 3.4 of the TPAMI paper and the authors' code): 240 x 240
input, ResNet-101 up to layer3 (frozen), Adam, 100 sampled points for the
consistency losses, phi = 1; eq. 4 with one mask per direction and the mask
gradient into D; eq. 7 on normalised images; decoder blocks of one
deconvolution and two convolutions. Deviations: F is EfficientNet-Lite0
(ResNet-50 in the paper), so eq. 10's margin is calibrated to it
(``model.margin='auto'``, see ``model_config``).

The encoder's ImageNet weights are required (``init.require_pretrained``):
with ``lite0`` they come from the installed package; for ResNet-101 pass
``--config.init.backbone_weights=resnet101.pth`` (torchvision state dict),
which loads into the encoder E (``init.backbone_subtree='encoder'``).
"""

import ml_collections
from ml_collections import config_dict

from configs import args
from configs import base as base_config

LOSS_TERMS = ("matching", "cycle", "transitivity", "contrastive",
              "cross_consistency")


def parse_arg(arg, config: str):
  """'runlocal,lite0,no_cycle' -> (runlocal, lite0, frozenset of terms off)."""
  a = args.parse(arg, config=config, flags=("runlocal", "lite0") + tuple(
      f"no_{t}" for t in LOSS_TERMS))
  return a.runlocal, a.lite0, frozenset(t for t in LOSS_TERMS
                                        if a[f"no_{t}"])


def model_config(lite0: bool) -> ml_collections.ConfigDict:
  """config.model for MaCoSNet (see coseg_jax/models/macosnet.py)."""
  m = ml_collections.ConfigDict()
  # Sec. 4.1 / authors' code: ResNet-101 to layer3 (1024 ch, 15x15 at 240).
  m.backbone = "efficientnet_lite0" if lite0 else "resnet101"
  m.backbone_kwargs = ml_collections.ConfigDict()
  m.feature_level = "stride16"
  m.freeze_encoder = True  # authors' code: the feature extractor is fixed
  # Fixed ImageNet network F of eq. 8-10 (ResNet-50 in the paper; Lite0 has
  # real weights here).
  m.perceptual = "efficientnet_lite0"
  m.perceptual_size = config_dict.placeholder(int)
  m.stage2_input = "image"  # weakalign: re-encode A warped by the affine
  m.triplets = "batch_roll"  # eq. 6 triplets from the mini-batch (pairs)
  m.residual_theta = True
  m.decoder_final_width = 32
  # Sec. 3.4: each decoder block is one deconvolution and two convolutions
  # (0: our earlier deconvolution-only decoder).
  m.decoder_convs = 2
  # Eq. 7 on the normalised image: removed pixels take the colour F's
  # normalisation maps to 0 ('raw': black, our earlier form).
  m.perceptual_masking = "normalized"
  m.num_points = 100  # authors' code: 100 sampled coordinates
  m.phi = 1.0  # eq. 2 threshold
  m.distance = "chebyshev"  # weakalign's 3x3 dilation at phi = 1
  # Eq. 10's margin. The paper's m = 2 is for its F (ResNet-50); for our F
  # (Lite0) its figure-ground distances are ~0.15 and m = 2 never releases
  # the hinge. 'auto': m = margin_ratio x F's mean squared feature distance
  # between different training images (per dimension), from the first
  # margin_batches training batches (coseg_jax/models/macosnet.py). A number
  # sets m directly (2.0: the paper's value).
  m.margin = "auto"
  m.margin_ratio = 1.0
  m.margin_batches = 10
  # Eq. 10 divides the two figure-ground distances by 2c ('sum': by c, the
  # authors' code).
  m.contrastive_reduction = "mean"
  # Eq. 4: one mask per direction ('product': M_A M_B, our earlier form),
  # plain sums over positions with both directions added ('grid': averages,
  # our earlier form; 'inliers': / inlier count, the authors' code), and the
  # mask gradient reaches D (False: stopped, our earlier form).
  m.matching_masks = "source"
  m.matching_normalize = "none"
  m.matching_mask_grad = True
  m.cross_ignore_outside = False
  m.cross_stop_gradient = False
  m.affine_grid_weight = 1.0
  m.synthetic = ml_collections.ConfigDict(dict(
      rotation=0.2617993877991494, shear=0.5235987755982988, scale=0.25,
      translation=0.25, tps=0.4, kind="affine_tps"))
  m.dtype = "float32"
  return m


def pretrained_init(config, lite0: bool):
  """Real Lite0 weights for F (and E with ``lite0``) via config.init."""
  config.init.pretrained = ml_collections.ConfigDict()
  config.init.pretrained.perceptual_net = ml_collections.ConfigDict(dict(
      backbone="efficientnet_lite0", path=""))
  if lite0:
    config.init.pretrained.encoder = ml_collections.ConfigDict(dict(
        backbone="efficientnet_lite0", path="",
        kwargs=ml_collections.ConfigDict(dict(truncate_at="stride16"))))


def matcher_pretrain_section() -> ml_collections.ConfigDict:
  """Settings of the 'matcher_pretrain' stage (``coseg_jax.runtime.stages``):
  G on synthetic warps of the images of ``data`` (CNNGeo: Adam 1e-3)."""
  s = ml_collections.ConfigDict()
  s.num_steps = 20000
  s.global_batch_size = 16
  s.learning_rate = 1e-3
  s.warmup_steps = 0
  s.weight_decay = 0.0
  # Data fields of the stage (images whose random warps train G): the
  # PASCAL-VOC co-segmentation images, found like any data set
  # (manual_dir None: $COSEG_DATA_DIR/pascal_voc_coseg).
  s.data = ml_collections.ConfigDict(dict(
      name="pascal_voc_coseg", builder_config=None, train_split="train",
      sampler="pairs"))
  s.data.manual_dir = config_dict.placeholder(str)
  return s


def base(arg, *, weights, dataset: str, config_name: str):
  """The common MaCoSNet config; ``weights`` = paper (cycle, trans, contrast,
  task) for the setting."""
  runlocal, lite0, off = parse_arg(arg, config_name)
  config = base_config.get_base_config()
  config.method = "macosnet"
  config.model = model_config(lite0)
  cycle, trans, contrast, task = weights
  config.loss = ml_collections.ConfigDict(dict(
      matching=1.0, cycle=cycle, transitivity=trans, contrastive=contrast,
      cross_consistency=task))
  for t in off:
    config.loss[t] = 0.0
  config.data.name = dataset
  config.data.image_size = 240  # authors' code: 240 x 240
  config.data.sampler = "pairs"
  config.data.group_size = 2
  config.data.augment.enabled = False
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 5e-5  # authors' code default (Adam)
  config.optimizer.schedule = "constant"
  config.train.num_steps = 20000
  config.train.global_batch_size = 16
  config.train.log_every = 50
  config.train.eval_every = 0
  config.train.checkpoint_every = 1000
  config.eval.strategy = "pairs"
  config.eval.batch_size = 8
  config.eval.threshold = 0.5
  # Soft masks -> binary: the 0.5 threshold by default; 'otsu', 'crf' or
  # 'grabcut' (coseg_jax.postprocess) with --config.eval.postprocess=...
  config.eval.postprocess = "threshold"
  config.predict.image_size = 240
  config.eval.evaluators = (("matching",) if dataset in ("tss", "pf_pascal",
                                                        "pf_willow")
                            else ("coseg",))
  config.stages = ("matcher_pretrain", "main")
  config.matcher_pretrain = matcher_pretrain_section()
  pretrained_init(config, lite0)
  config.init.backbone_subtree = "encoder"
  config.init.require_pretrained = True
  if runlocal:
    apply_runlocal(config)
  return config


def apply_runlocal(config):
  """Seconds-long CPU variant (tiny networks, synthetic data)."""
  config.model.backbone = "tiny"
  config.model.perceptual = "tiny"
  config.model.stage2_input = "features"
  config.model.num_points = 16
  config.model.decoder_final_width = 8
  config.init.pretrained = ml_collections.ConfigDict()
  config.init.require_pretrained = False
  config.data.name = "synthetic"
  config.data.builder_config = "tiny"
  config.data.image_size = 176
  config.optimizer.learning_rate = 1e-3
  config.train.num_steps = 2
  config.train.global_batch_size = 2
  config.train.log_every = 1
  config.train.checkpoint_every = 1
  config.train.progress_bar = False
  config.eval.max_groups = 2
  config.eval.batch_size = 2
  config.eval.evaluators = ("coseg",)
  config.predict.image_size = 176
  config.matcher_pretrain.num_steps = 2
  config.matcher_pretrain.global_batch_size = 2
  config.matcher_pretrain.data = ml_collections.ConfigDict(dict(
      name="synthetic", builder_config="tiny"))
