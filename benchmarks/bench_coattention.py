r"""Co-attention CNN speed/memory benchmark, JAX vs PyTorch.

Setting: 384x384 images, 5 images per step (one group of K = 5: the
co-attention loss takes all ordered pairs inside it), stage-2 loss
(co-attention + lambda = 9 x bootstrapped mask loss, the 40 of 60 epochs
that cost the most), Adam. Generator and extractor are the library's config
(``configs/coattention_voc.py``: EfficientNet-Lite0 FCN generator with skips,
frozen Lite0 extractor), not the paper's VGG16 / ResNet-50. The paper reports
about 1,560 s per collection of 100 images.

One cell per call (see ``benchmarks/common.py``)::

  python -m benchmarks.bench_coattention --framework jax --dtype bfloat16
  python -m benchmarks.bench_coattention --framework torch

Collection time (``--extra collection``): ``coseg_jax.runtime.trainers.collection.
train_on_images`` — the real per-collection training (stage 1, stage 2 with
the per-epoch proposal re-selection), timed on a second, identical call
after a first one that compiles — on a collection of random images with random box proposals: 100 images and the paper's 20 + 40
epochs at ``--size paper``; at the reduced sizes 10 images and 1 + 1 epochs,
extrapolated to 100 images x 60 epochs by the measured time per step
(stated in the output). PyTorch: its median train-step time x the number of
steps (1,200 for 100 images; no proposal selection: an estimate)::

  python -m benchmarks.bench_coattention --extra collection

CPU size (``--size cpu224 --encoder lite0|lite2``): the config's network
with the generator's encoder Lite0 or Lite2 (trained; its BatchNorm in
inference mode, ``generator_bn_train=False`` as configured), the extractor
f the config's frozen Lite0 in both, 224x224, one group of K = 16 images
per step (the co-attention loss over all 240 ordered pairs, + 9 x the mask
loss).

Reduced sizes: ``small`` = Lite0, 64x64, K = 5; ``tiny`` = tiny CNN
generator and extractor, 32x32, K = 3.
"""

import time

import numpy as np

from benchmarks import common

BENCH = common.MethodBench(
    name="coattention",
    config="configs.coattention_pascal_voc_coseg",
    config_arg=None,
    image_size=384, batch=1, group_size=5,
    reduced={"cpu224": (224, 1), "small": (64, 1), "tiny": (32, 1)},
    model_overrides={
        "tiny": {"backbone": "tiny", "backbone_kwargs": {},
                 "extractor": "tiny", "decoder_widths": (16, 16, 8, 8, 8),
                 "backbone_weights": None, "extractor_weights": None},
    },
    torch_module="coattention",
    notes="Lite0 FCN generator + frozen Lite0 extractor, 5 images per step, "
          "stage-2 loss (paper: ~1,560 s per 100-image collection)",
    configure={"cpu224": common.random_init},
    group_sizes={"cpu224": (16,)},
    size_notes={"cpu224": "generator encoder trained (BN in inference mode, "
                          "as configured), frozen Lite0 extractor; one group "
                          "of 16 images per step, stage-2 loss"})
PAPER_COLLECTION_S = 1560.0


def _random_proposals(rng, n, h, w, count=6):
  out = []
  for _ in range(n):
    p = np.zeros((count, h, w), bool)
    for j in range(count):
      y0, x0 = rng.randint(0, h // 2), rng.randint(0, w // 2)
      y1, x1 = rng.randint(y0 + 2, h + 1), rng.randint(x0 + 2, w + 1)
      p[j, y0:y1, x0:x1] = True
    out.append(p)
  return out


def collection(bench, args):
  """Per-collection training time (see the module docstring)."""
  import jax  # pylint: disable=g-import-not-at-top
  from coseg_jax.runtime.trainers import collection as collection_trainer  # pylint: disable=g-import-not-at-top
  paper = args.size == "paper"
  n = 100 if paper else 10
  config = common.make_config(bench, size=args.size, dtype=args.dtype,
                              steps=args.steps, warmup=args.warmup)
  k = int(config.data.group_size)
  side = int(config.data.image_size)
  cfg = config.coattention
  cfg.batch_size = k
  cfg.verbose = False
  if not paper:
    cfg.stage1_epochs, cfg.stage2_epochs = 1, 1
  epochs = int(cfg.stage1_epochs) + int(cfg.stage2_epochs)
  steps = epochs * -(-n // k)
  rng = np.random.RandomState(0)
  images = rng.rand(n, side, side, 3).astype(np.float32)
  proposals = _random_proposals(rng, n, side, side)
  # First call: compiles the trainer's step and prediction (cached by
  # shape); the second, identical call is the timed, warm one.
  t0 = time.perf_counter()
  collection_trainer.train_on_images(config, images, proposals)
  cold = time.perf_counter() - t0
  t0 = time.perf_counter()
  out = collection_trainer.train_on_images(config, images, proposals)
  wall = time.perf_counter() - t0
  paper_steps = 60 * 20
  per_step = out["train_seconds"] / steps
  impls = {"coseg_jax": {
      "step_ms": 1e3 * per_step,
      "collection_s": wall if paper else per_step * paper_steps +
                      out["select_seconds"] * (40 * 100) / (
                          int(cfg.stage2_epochs) * n),
      "measured_wall_s": wall, "first_call_wall_s": cold,
      "train_s": out["train_seconds"], "select_s": out["select_seconds"]}}
  note = (f"measured: train_on_images on {n} random images with random box "
          f"proposals, {cfg.stage1_epochs}+{cfg.stage2_epochs} epochs, "
          f"{steps} steps of {k} images, wall {wall:.1f} s including the "
          f"per-epoch proposal selection ({out['select_seconds']:.1f} s), "
          f"compiled beforehand (first call incl. compile: {cold:.1f} s)"
          if paper else
          f"extrapolated from train_on_images on {n} random images, "
          f"{cfg.stage1_epochs}+{cfg.stage2_epochs} epochs ({steps} steps "
          f"of {k} images, warm wall {wall:.1f} s; first call incl. compile "
          f"{cold:.1f} s): time per step x 1,200 steps (100 images x 60 "
          f"epochs / 5) + selection time scaled to 40 epochs x 100 images")
  try:
    tconf = common.make_config(bench, size=args.size, dtype=args.dtype,
                               steps=args.steps, warmup=args.warmup)
    tr = common.measure_torch(bench, tconf, compile_model=False)
    impls["PyTorch eager"] = {"step_ms": tr["train_step_ms"],
                              "collection_s": tr["train_step_ms"] / 1e3 *
                                              paper_steps}
  except Exception as e:  # pylint: disable=broad-except
    note += f"; PyTorch n/a ({type(e).__name__}: {e})"
  return {"mode": "collection", "num_images": 100, "dtype": args.dtype,
          "steps": paper_steps, "impls": impls, "method_note": note,
          "image_size": side, "device": jax.devices()[0].device_kind}


if __name__ == "__main__":
  common.main(BENCH, extra=lambda b, a: collection(b, a))
