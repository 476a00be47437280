"""MaCoSNet's transformation predictor G pre-trained on synthetic warps.

The paper initialises G from a predictor trained on synthetic transformations
(CNNGeo's procedure) to avoid the degenerate identity solution of the weakly
supervised losses. Method ``macosnet_pretrain``: every training image I is
paired with warp(I, theta_gt), theta_gt a random affine + TPS warp with
CNNGeo's ranges (config.model.synthetic), and G is trained with CNNGeo's
transformed-grid loss (20 x 20 points) on the affine stage and the composed
warp. Decoder and F are not built; the joint configs then load these
parameters with ``--config.init.from_checkpoint``.

  python -m coseg_jax.main --config configs/macosnet_pretrain.py \\
      --workdir /tmp/macos_pre --mode train \\
      --config.data.manual_dir=../shared/data/pascal_voc_coseg

Variants: ``:lite0`` (Lite0 encoder, real weights), ``:runlocal``.
"""

from configs import macosnet_common


def get_config(arg=None):
  """Synthetic pre-training; arg = '[runlocal][,lite0]'."""
  config = macosnet_common.base(arg, weights=(0.0, 0.0, 0.0, 0.0),
                                dataset="pascal_voc_coseg")
  config.method = "macosnet_pretrain"
  config.loss = {"grid": 1.0}
  config.model.perceptual = None
  # No F in this mode: only E (with ':lite0') needs weights.
  _, lite0, _ = macosnet_common.parse_arg(arg)
  macosnet_common.pretrained_init(config, lite0)
  del config.init.pretrained["perceptual_net"]
  # Every image of a pair is a synthetic source (the pair is not used).
  config.data.sampler = "pairs"
  config.data.augment.enabled = True
  config.optimizer.learning_rate = 1e-3  # CNNGeo trains G with Adam 1e-3
  if macosnet_common.parse_arg(arg)[0]:  # runlocal
    macosnet_common.apply_runlocal(config)
  return config
