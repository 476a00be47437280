"""CoSegNet on the PASCAL-VOC co-segmentation set: the real-photo recipe.

Argument: ``[disjoint|split|all][,cosegnet|base][,live][,blind][,runlocal]``
(protocols and flags: ``configs/pascal_voc_coseg.py``; ``base`` is the
Table 5 baseline).

  python -m coseg_jax.main --config configs/cosegnet_pascal_voc_coseg.py:disjoint \\
      --config.data.manual_dir=/path/to/pascal_voc_coseg --workdir /tmp/cosegnet_pascal

Evaluation reports the gated masks (P/J) and the decision accuracy on
positive and cross-class negative pairs. The recipe: EfficientNet-Lite2 with
its ImageNet weights, frozen and in evaluation mode, under CoSegNet's
13-layer transposed-convolution decoder (at a width multiplier), metric and
decision nets; triplets (anchor, positive, negative); Adam. Departures from
the paper (``configs/cosegnet_voc2012.py``: VGG16 at 224 px, SGD 1e-5) are
listed in docs/methods/cosegnet.md.

Protocols: the paper (Sec. 4.2) splits this set at random 3:1:1 into
train / validation / test over the same 20 classes and averages 100 such
splits. Here ``split`` is the closest: all 20 classes, a fixed per-class
3:1 train / test split (no validation part, one split); ``disjoint``
(train on ten classes, test on the other ten) and ``all`` are our
protocols, not the paper's.

Loss reduction: the paper's sums (eq. 2-4: the mask BCE summed over pixels
and images, the triplet and decision terms over the batch). With the
per-pixel and per-batch means (``--config.model.loss_reduction=mean``) the
decoder's masks stayed empty on the class-disjoint protocol; with the sums
they are not (docs/results.md#cosegnet).
"""

from configs import args
from configs import cosegnet_voc2012
from configs import pascal_voc_coseg


def get_config(arg=None):
  """'disjoint'|'split'|'all' [,cosegnet|base] [,live] [,blind]
  [,runlocal]."""
  a = args.parse(arg, config="cosegnet_pascal_voc_coseg",
                 groups={"protocol": pascal_voc_coseg.PROTOCOLS,
                         "variant": cosegnet_voc2012.METHODS},
                 flags=pascal_voc_coseg.FLAGS)
  config = cosegnet_voc2012.get_config(a.variant)
  pascal_voc_coseg.apply_protocol(config, a.protocol)
  pascal_voc_coseg.frozen_pretrained_backbone(config, "efficientnet_lite2")
  config.model.width_multiplier = 0.25
  o = config.optimizer
  o.name = "adam"
  o.learning_rate = 1e-3
  o.momentum = 0.9
  o.weight_decay = 0.0
  pascal_voc_coseg.apply_schedule(config)
  pascal_voc_coseg.apply_recipe(config, live=a.live, blind=a.blind,
                                finetune=a.finetune)
  # CoSegNet's own evaluation adds the decision (positive and cross-class
  # negative pairs); the Table 5 base has no decision output.
  if a.variant == "cosegnet":
    config.eval.evaluators = ("coseg", "decision", "partner", "composite")
  if a.runlocal:
    pascal_voc_coseg.runlocal(config)
    config.model.width_multiplier = 1 / 16
  return config
