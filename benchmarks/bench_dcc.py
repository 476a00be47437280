r"""DCC speed/memory benchmark, JAX vs PyTorch.

Setting (``configs/dcc_voc.py``): 513x513 pairs, batch 5, VGG16-BN encoder
to relu5_3, depth-wise cross-correlation at kernel scales 1, 3, 5, the
bilinear-upsampling decoder with skips, CE_A + CE_B.

One cell per call (see ``benchmarks/common.py``)::

  python -m benchmarks.bench_dcc --framework jax --dtype bfloat16
  python -m benchmarks.bench_dcc --framework torch

CPU recipe size (``--size cpu224 --encoder lite0|lite2``): the model of
``configs/dcc_pascal_voc_coseg.py`` (matching at stride 16, the matched map
un-normalised beside the image's own features, decoder widths 128..16, CE_A
+ CE_B, Adam) with the encoder trained (the recipe freezes it), 224x224,
batch 4 pairs. Both frameworks train with CE_A + CE_B only: the recipe's
Lovász term beside it is not in the PyTorch port (``--mode benchmark``
times the recipe's own step, Lovász included).

Reduced sizes: ``small`` = VGG16-BN, 65x65 (odd, like 513: exercises the
floor/ceil skip resizing), batch 1; ``tiny`` = tiny test CNN, 32x32.
"""

from benchmarks import common


def _cpu224(config) -> None:
  """The recipe with its encoder trained, and the paper's loss alone, the
  loss the PyTorch port computes."""
  common.trained_encoder(config)
  config.loss = {"ce": 1.0}


BENCH = common.MethodBench(
    name="dcc",
    config="configs.dcc_voc2012",
    config_arg=None,
    image_size=513, batch=5, group_size=2,
    reduced={"cpu224": (224, 4), "small": (65, 1), "tiny": (32, 1)},
    model_overrides={
        "tiny": {"backbone": "tiny", "backbone_kwargs": {},
                 "decoder_widths": (16, 16, 8, 8, 8)},
    },
    torch_module="dcc",
    notes="VGG16-BN, depth-wise xcorr scales 1/3/5, CE_A + CE_B",
    configs={"cpu224": ("configs.dcc_pascal_voc_coseg", "disjoint")},
    configure={"cpu224": _cpu224},
    size_notes={"cpu224": "recipe model (stride-16 matching, features "
                          "beside the matched map), encoder trained, "
                          "CE_A + CE_B only (no Lovász term); 4 pairs "
                          "per step"})

if __name__ == "__main__":
  common.main(BENCH)
