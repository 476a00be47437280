r"""CoSegNet speed/memory benchmark, JAX vs PyTorch.

Paper setting (Banerjee et al., IJCAI 2019, Sec. 4): 224x224, batch 3
triplets (anchor, positive, negative: K = 3), VGG16 encoder + 13-layer
transposed-conv decoder, metric and decision nets, the paper's loss weights;
the optimiser of ``configs/cosegnet_voc.py``.

One cell per call (see ``benchmarks/common.py``)::

  python -m benchmarks.bench_cosegnet --framework jax --dtype bfloat16
  python -m benchmarks.bench_cosegnet --framework torch_compile

CPU recipe size (``--size cpu224 --encoder lite0|lite2``): the model of
``configs/cosegnet_pascal_voc_coseg.py`` (decoder widths x 0.25 on the
encoder's 1280-channel head with its stride-16, 8 and 4 maps joined, the
metric net on the pooled encoder output, the decision on |e_0 - e_j|, the
paper's summed loss, Adam) with the encoder trained (the recipe freezes
it), 224x224, batch 4 triplets.

Reduced sizes: ``small`` = VGG16 with decoder widths / 4, 64x64, batch 1
triplet; ``tiny`` = the tiny test CNN encoder, decoder widths / 16, 32x32.
"""

from benchmarks import common

BENCH = common.MethodBench(
    name="cosegnet",
    config="configs.cosegnet_voc2012",
    config_arg=None,
    image_size=224, batch=3, group_size=3,
    reduced={"cpu224": (224, 4), "small": (64, 1), "tiny": (32, 1)},
    model_overrides={
        "small": {"width_multiplier": 0.25},
        "tiny": {"backbone": "tiny", "backbone_kwargs": {},
                 "width_multiplier": 1 / 16},
    },
    torch_module="cosegnet",
    notes="VGG16 encoder-decoder + metric/decision nets, triplets",
    configs={"cpu224": ("configs.cosegnet_pascal_voc_coseg", "disjoint")},
    configure={"cpu224": common.trained_encoder},
    size_notes={"cpu224": "recipe model (decoder x 0.25), encoder trained; "
                          "4 triplets per step"})

if __name__ == "__main__":
  common.main(BENCH)
