"""MaCoSNet on TSS (Taniai et al.): matching by flow-PCK, co-segmentation P/J.

Paper setting (TPAMI, Sec. 5.2 / the authors' TSS script): loss weights
cycle 5, transitivity 5, contrastive 10, task (cross-network) 10, the
matching loss 1; 240 x 240, Adam. Start from a G pre-trained on synthetic
warps (the config's first stage, ``matcher_pretrain``). One command runs
both stages:

  python -m coseg_jax.main --config configs/macosnet_tss.py:lite0 \\
      --workdir /tmp/macos_tss --mode train \\
      --config.data.manual_dir=/path/to/tss

Variants: ``configs/macosnet_tss.py:lite0`` (Lite0 encoder with real
weights), ``:no_cycle`` etc. (ablations), ``:runlocal`` (CPU smoke run).
"""

from configs import macosnet_base


def get_config(arg=None):
  """TSS setting; arg = '[runlocal][,lite0][,no_<term>]...'."""
  # Paper weights for TSS: cycle/trans/contrast/task = 5/5/10/10.
  config = macosnet_base.base(arg, weights=(5.0, 5.0, 10.0, 10.0),
                              dataset="tss", config_name="macosnet_tss")
  if config.data.name == "tss":
    config.data.train_split = "test"  # TSS has one split (trained on it)
    config.eval.split = "test"
  return config
