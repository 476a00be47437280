r"""MaCoSNet speed/memory benchmark, JAX vs PyTorch.

Setting (``configs/macosnet_internet.py``, the authors' code): 240x240
pairs, batch 4 (the brief's paper batch; the config trains with 16),
frozen ResNet-101 to layer3, two-stage affine -> TPS regression with the
warped image re-encoded, mask decoder, frozen Lite0 perceptual network, the
five joint losses.

The PyTorch side has the architecture (exact parameter count) and the
co-segmentation inference, but no port of the joint training objective: its
training cells are reported as n/a (see ``benchmarks/torch_impl/
macosnet.py``).

One cell per call (see ``benchmarks/common.py``)::

  python -m benchmarks.bench_macosnet --framework jax --dtype bfloat16
  python -m benchmarks.bench_macosnet --framework torch

CPU size (``--size cpu224 --encoder lite0|lite2``): the ``lite0`` variant
of ``configs/macosnet_internet.py`` (encoder E truncated at stride 16 and
frozen, as the paper's; affine + TPS matcher with the re-encoded warp, mask
decoder, frozen Lite0 F, the five joint losses) with E = Lite0 or Lite2,
240x240, batch 4 pairs (the config trains with 16: ``--batch 16``). The
PyTorch training cells are n/a (no port of the objective).

Reduced sizes: the regressors' 7x7 and 5x5 VALID convs need a feature grid
of at least 11x11, so inputs stay >= 176 px: ``small`` = ResNet-18 encoder,
176x176, batch 2; ``tiny`` = tiny CNNs (encoder and F), stage 2 on warped
features, 176x176, batch 2.
"""

from benchmarks import common

BENCH = common.MethodBench(
    name="macosnet",
    config="configs.macosnet_internet",
    config_arg=None,
    image_size=240, batch=4, group_size=2,
    reduced={"cpu224": (240, 4), "small": (176, 2), "tiny": (176, 2)},
    model_overrides={
        "small": {"backbone": "resnet18"},
        "tiny": {"backbone": "tiny", "perceptual": "tiny",
                 "stage2_input": "features"},
    },
    torch_module="macosnet",
    notes="ResNet-101 (layer3, frozen), affine+TPS, decoder, Lite0 F; "
          "torch: inference only",
    configs={"cpu224": ("configs.macosnet_internet", "lite0")},
    configure={"cpu224": common.random_init},
    size_notes={"cpu224": "lite0 config at 240 px: E truncated at stride 16 "
                          "and frozen (the paper's), matcher, decoder, frozen "
                          "Lite0 F; 4 pairs per step; PyTorch train: n/a (no "
                          "port of the objective)"})

if __name__ == "__main__":
  common.main(BENCH)
