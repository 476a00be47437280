"""CoSegNet (Banerjee et al., IJCAI 2019) and its Table 5 baseline, paper settings.

Config argument: ``[cosegnet|base][,runlocal]``. ``cosegnet`` (default) is the
conditional siamese network trained on (anchor, positive, negative) triplets;
``base`` is ``cosegnet_base`` (concatenated encoder features, no metric or
decision nets) trained on positive and negative pairs, the negatives with
null masks. ``runlocal`` is a seconds-long CPU variant (tiny encoder, 32 px
synthetic data) for tests and smoke runs.

Launch (VOC 2012 pairs; ImageNet VGG16 weights from torchvision's
``vgg16-397923af.pth``, converted by ``coseg_jax.backbones.weights``):

  python -m coseg_jax.main --config configs/cosegnet_voc2012.py:cosegnet \\
      --config.data.manual_dir=/path/to/VOCdevkit/VOC2012 \\
      --config.init.backbone_weights=/path/to/vgg16-397923af.pth \\
      --workdir /tmp/cosegnet --mode train
  python -m coseg_jax.main --config configs/cosegnet_voc2012.py:cosegnet,runlocal \\
      --workdir /tmp/cosegnet_smoke --mode train

Paper settings (Sec. 4, "Implementation details"): 224x224 inputs, SGD with
learning rate 1e-5, momentum 0.9 and weight decay 5e-4 (the paper also
quotes 4e-4; set ``--config.optimizer.weight_decay=4e-4`` for that setting),
batch 3, triplet margin 1, loss weights w = (0.33, 0.33, 0.33) on positive
pairs and (0, 0.5, 0.5) on negative pairs, metric net on cT9 (Table 6:
'f', 'cT3', 'cT6', 'cT9', 'cT11' via ``--config.model.metric_layer``). The
number of iterations is not given in the text we could read: 50k is our
choice. Evaluation: every pair of each class, masks gated by the decision.

Loss reduction (``model.loss_reduction``): 'sum', eq. 2-4 as written (the
mask BCE summed over pixels, images and triplets; the triplet and decision
terms summed over the batch), the scale the paper's SGD rate of 1e-5 was
set for. 'mean' (per-pixel mean, batch means) is the earlier form, with the
mask term about 2 x 224 x 224 ~ 10^5 times lighter relative to the others.

Data protocol: this config trains on VOC 2012 co-segmentation pairs
(``voc2012_coseg``: VOC's train list; VOC's val list divided into
validation and test), the DOCS-style pair protocol the DCC config uses too.
CoSegNet's own PASCAL-VOC protocol (Sec. 4.2) is a random 3:1:1
train/validation/test split of the 20-class co-segmentation set over the
same classes, repeated 100 times; ``configs/cosegnet_pascal_voc_coseg.py``
offers that set under the class-disjoint, per-class-split (3:1, one fixed
split, no validation part) and all-images protocols of
``configs/pascal_voc_coseg.py``.
"""

from configs import args
from configs import base

METHODS = ("cosegnet", "base")


def get_config(arg=None):
  """'cosegnet'|'base' [,runlocal]."""
  a = args.parse(arg, config="cosegnet_voc2012", groups={"variant": METHODS},
                 flags=("runlocal",))
  variant, runlocal = a.variant, a.runlocal
  config = base.get_base_config()
  config.method = "cosegnet" if variant == "cosegnet" else "cosegnet_base"

  m = config.model
  m.backbone = "vgg16"  # 13 conv + 5 max-pool: 224 -> 7x7x512
  m.decoder_widths = (512, 512, 512, 512, 512, 256, 256, 256, 256, 128, 128,
                      64, 1)
  m.width_multiplier = 1.0
  m.metric_layer = "cT9"  # Sec. 3 / Table 6
  m.metric_widths = (128, 64)  # FC128-ReLU-FC64
  m.decision_hidden = 32  # FC32-ReLU-FC1-sigmoid
  m.decision_input = "concat"  # [e_0 ; e_j]; 'abs_difference' is ours
  m.skip_levels = ()  # the paper's decoder reads only f (stride 32)
  m.decision_threshold = 0.5
  # True: the threshold applies to the posterior the weighted decision BCE
  # implies (cosegnet.decision_cut; ours).
  m.decision_reweight = False
  m.gate_masks = True  # False: ungated decoder masks (a diagnostic)
  # Eq. 2-4 sum over pixels, images and the batch; 'mean' is the earlier
  # per-pixel / per-batch average (see the module docstring).
  m.loss_reduction = "sum"
  m.dtype = "float32"

  d = config.data
  d.name = "voc2012_coseg"
  d.image_size = 224  # Sec. 4
  if variant == "cosegnet":
    d.sampler = "triplets"  # (anchor, positive, negative)
    d.negative_fraction = 0.0
    config.loss = {"mask_pos": 0.33, "triplet_pos": 0.33,
                   "decision_pos": 0.33, "mask_neg": 0.0, "triplet_neg": 0.5,
                   "decision_neg": 0.5}  # Sec. 3.3: w1, w2, w3
  else:
    d.sampler = "pairs"
    d.negative_fraction = 0.5  # negatives with null masks (Table 5 base)
    config.loss = {"bce": 1.0}
  d.augment.enabled = True

  o = config.optimizer
  o.name = "sgd"
  o.learning_rate = 1e-5
  o.momentum = 0.9
  o.weight_decay = 5e-4
  o.schedule = "constant"

  t = config.train
  t.num_steps = 50_000
  t.global_batch_size = 3  # Sec. 4: batch 3
  t.log_every = 100
  t.eval_every = 0
  t.checkpoint_every = 2000

  config.eval.split = "test"
  config.eval.strategy = "pairs"
  config.eval.batch_size = 8
  # Masks (gated by the decision) and, for cosegnet, the decision itself.
  config.eval.evaluators = (("coseg", "decision") if variant == "cosegnet"
                            else ("coseg",))
  config.eval.decision_pairs = 200
  config.predict.image_size = 224
  config.predict.group_strategy = "all_pairs"
  config.benchmark = dict(steps=10, warmup=2)

  if runlocal:
    m.backbone = "tiny"
    m.backbone_kwargs = {"widths": (8, 16, 16, 32, 32)}
    m.width_multiplier = 1 / 16
    d.augment.enabled = False
    o.name = "adam"
    o.learning_rate = 1e-3
    o.weight_decay = 0.0
    base.apply_tiny_run(config)
  return config
