"""MaCoSNet on PF-PASCAL (semantic matching, PCK at alpha 0.05/0.1/0.15).

Paper setting (TPAMI, Sec. 5.1): loss weights cycle 20, transitivity 10,
contrastive 2.5, task 2.5 (matching 1); 240 x 240, Adam; image pairs of the
same class from the PF-PASCAL training split.

  python -m coseg_jax.main --config configs/macosnet_pf_pascal.py \\
      --workdir /tmp/macos_pf --mode train \\
      --config.data.manual_dir=/path/to/PF-PASCAL

Variants: ``:lite0``, ``:no_<term>``, ``:runlocal``.
"""

from configs import macosnet_base

PCK_ALPHAS = (0.05, 0.1, 0.15)  # Sec. 5.1, bounding-box reference size


def get_config(arg=None):
  """PF-PASCAL setting; arg = '[runlocal][,lite0][,no_<term>]...'."""
  # Paper weights for PF-PASCAL: cycle/trans/contrast/task = 20/10/2.5/2.5.
  config = macosnet_base.base(arg, weights=(20.0, 10.0, 2.5, 2.5),
                              dataset="pf_pascal",
                              config_name="macosnet_pf_pascal")
  config.eval.pck_alphas = PCK_ALPHAS
  return config
