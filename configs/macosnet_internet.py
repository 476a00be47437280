"""MaCoSNet on the Internet dataset (Rubinstein et al.) co-segmentation setting.

Paper setting (TPAMI, Sec. 5.3): loss weights cycle 5, transitivity 5,
contrastive 20, task 10 (matching 1); 240 x 240, Adam; pairs of images of the
same class (weak supervision).

  python -m coseg_jax.main --config configs/macosnet_internet.py \\
      --workdir /tmp/macos_internet --mode train \\
      --config.data.manual_dir=/path/to/internet

(stages: G's synthetic pre-training, then the joint run; configs/macosnet_base.py)

Variants: ``:lite0``, ``:no_<term>``, ``:runlocal``.
"""

from configs import macosnet_base


def get_config(arg=None):
  """Internet setting; arg = '[runlocal][,lite0][,no_<term>]...'."""
  # Paper weights for Internet: cycle/trans/contrast/task = 5/5/20/10.
  return macosnet_base.base(arg, weights=(5.0, 5.0, 20.0, 10.0),
                            dataset="internet", config_name="macosnet_internet")
