"""DCC on the PASCAL-VOC co-segmentation set: the real-photo recipe.

Argument: ``[disjoint|split|all][,live][,blind][,runlocal]`` (protocols
and flags: ``configs/pascal_voc_coseg.py``).

  python -m coseg_jax.main --config configs/dcc_pascal_voc_coseg.py:disjoint \\
      --config.data.manual_dir=/path/to/pascal_voc_coseg --workdir /tmp/dcc_pascal

The recipe: EfficientNet-Lite2 with its ImageNet weights, frozen and in
evaluation mode; depth-wise cross-correlation of the stride-16 maps at kernel
sizes 1, 3, 5; the bilinear decoder with encoder skips; Adam with a cosine
schedule; CE_A + CE_B with a Lovász term beside them; at
evaluation and prediction, the mean of each pair's and its mirror image's
probabilities (``--config.eval.flip=False`` scores one pass), foreground
where it is >= 0.45, then common-object selection
(``config.eval.common_selection``; ``--config.eval.common_selection.
enabled=False`` scores the model alone). Departures from the paper's setting
(``configs/dcc_voc2012.py``: VGG16-BN fine-tuned at 513 px) are CPU-driven
and listed in docs/methods/dcc.md. The matched map enters the decoder
un-normalised and beside the image's own features (``match_norm='none'``,
``include_features=True``), the form of this recipe's recorded runs; the
appendix's form is ``--config.model.match_norm=batchnorm
--config.model.include_features=False``.

Protocols: the paper trains on VOC 2012 pairs (``dcc_voc2012.py``); the
three protocols here (class-disjoint, per-class split, all) are ours.
"""

from configs import args
from configs import dcc_voc2012
from configs import pascal_voc_coseg


def get_config(arg=None):
  """'disjoint'|'split'|'all' [,live] [,blind] [,runlocal]."""
  a = args.parse(arg, config="dcc_pascal_voc_coseg",
                 groups={"protocol": pascal_voc_coseg.PROTOCOLS},
                 flags=pascal_voc_coseg.FLAGS)
  config = dcc_voc2012.get_config()
  pascal_voc_coseg.apply_protocol(config, a.protocol)
  pascal_voc_coseg.frozen_pretrained_backbone(config, "efficientnet_lite2")
  m = config.model
  m.feature_level = "stride16"
  m.match_norm = "none"  # the recorded runs (docstring)
  m.include_features = True
  m.decoder_widths = (128, 64, 64, 32, 16)
  d = config.data
  d.sampler = "pairs"
  d.augment.scale_min = 0.8  # the set's objects are large
  d.augment.scale_max = 1.25
  config.optimizer.learning_rate = 1e-3
  # Not in the paper (eq. B1 is CE only): the Lovász surrogate of J beside
  # it. Chosen on the training classes: Avg. J 0.564 -> 0.589
  # (docs/results.md#dcc).
  config.loss = {"ce": 1.0, "lovasz": 1.0}
  pascal_voc_coseg.apply_schedule(config)
  pascal_voc_coseg.apply_recipe(config, live=a.live, blind=a.blind,
                                finetune=a.finetune)
  # Test-time mirror averaging (steps.make_forward). On the training
  # classes it raised J from 0.559 to 0.564 (composite J 0.229 -> 0.235),
  # at twice the inference cost (docs/results.md#dcc).
  config.eval.flip = True
  # The trained pair network leaves many object pixels just under 0.5:
  # on the training classes, Avg. J 0.589 at 0.5, 0.630 at 0.45, 0.620 at
  # 0.4, 0.603 at 0.35 (docs/results.md#dcc). Also the cut of --mode
  # predict.
  config.eval.threshold = 0.45
  # Ours, after the model (coseg_jax.common_selection): keep the foreground
  # components the partner shows, found at the same cut. At the 0.45 cut
  # the masks cover both objects of half the training classes'
  # composites; the selection raised conditional J there from 0.350 to
  # 0.456 (wrong object 50 % -> 30.5 %) for single-object J 0.630 -> 0.622
  # (at its default 0.5 it reached 0.387; docs/results.md#dcc).
  config.eval.common_selection.enabled = True
  if a.runlocal:
    pascal_voc_coseg.runlocal(config)
    m.decoder_widths = (16, 16, 8, 8, 8)
  return config
