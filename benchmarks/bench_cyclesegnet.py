r"""CycleSegNet speed/memory benchmark, JAX vs PyTorch.

Paper setting (Zhang et al., TIP 2021, Sec. 4.1): 512x512 pairs, batch 4,
multi-level ResNet-34, N = 7 refinement steps, Adam; the paper reports
8.8 pairs/s inference on a GTX 1080 Ti (0.114 s per pair).

One cell per call (see ``benchmarks/common.py``)::

  python -m benchmarks.bench_cyclesegnet --framework jax --dtype bfloat16
  python -m benchmarks.bench_cyclesegnet --framework torch --dtype float32
  python -m benchmarks.bench_cyclesegnet --framework torch_compile --small
  python -m benchmarks.bench_cyclesegnet --framework jax --devices all

Group scaling (``--extra group_scaling``): group-mode inference of one group
of K = 2, 4, ..., 16 images (the same parameters for every K, eq. 13-14),
JAX jitted inference time (median) and XLA's memory estimate of the compiled
inference (arguments + outputs + temporaries), plus PyTorch eager time::

  python -m benchmarks.bench_cyclesegnet --extra group_scaling --dtype bfloat16

CPU recipe size (``--size cpu224 --encoder lite0|lite2``): the model of
``configs/cyclesegnet_pascal_voc_coseg.py`` (multi-level CRMs on 64-channel
projections, the RCM's value projection and match-score channel, skips,
decoder widths 128..16, Lovász, Adam) with the paper's N = 7 and the
encoder trained (the recipe freezes it and trains from cached features; here images go through the
encoder, BatchNorm and drop-connect in training mode), 224x224, batch 4
groups; K = 2 (pairs) and K = 5 (``--group_size 5``: 4 groups of 5)::

  python -m benchmarks.bench_cyclesegnet --size cpu224 --encoder lite2 \
      --framework torch_compile --group_size 5

Reduced sizes: ``small`` = ResNet-18, 64x64, batch 1, N = 2 (full widths);
``tiny`` = the tiny test CNN, 32x32, batch 1, N = 2 (for the CPU test).
"""

import statistics
import time

from benchmarks import common

BENCH = common.MethodBench(
    name="cyclesegnet",
    config="configs.cyclesegnet_voc2012",
    config_arg=None,  # full: Mcycle, multi-level (the paper's full model)
    image_size=512, batch=4, group_size=2,
    reduced={"cpu224": (224, 4), "small": (64, 1), "tiny": (32, 1)},
    model_overrides={
        "cpu224": {"num_steps": 7},
        "small": {"backbone": "resnet18", "num_steps": 2},
        "tiny": {"backbone": "tiny", "num_steps": 2,
                 "decoder_widths": (16, 16, 8, 8, 8)},
    },
    torch_module="cyclesegnet",
    notes="multi-level ResNet-34, N=7, Lovász, Adam (paper: 8.8 pairs/s "
          "inference on a GTX 1080 Ti)",
    configs={"cpu224": ("configs.cyclesegnet_pascal_voc_coseg", "disjoint")},
    configure={"cpu224": common.trained_encoder},
    group_sizes={"cpu224": (2, 5)},
    size_notes={"cpu224": "recipe model (multi-level CRMs on 64-channel "
                          "projections, value projection, match score, "
                          "skips), N = 7, "
                          "encoder trained; 4 groups of K per step"})
PAPER_PAIRS_PER_S = 8.8


def group_scaling(bench, args):
  """Group-mode inference time and memory for K images (one group)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  ks = (2, 4, 8) if args.size != "paper" else tuple(range(2, 17))
  rows = []
  config = common.make_config(bench, size=args.size, dtype=args.dtype,
                              batch=1, steps=args.steps, warmup=args.warmup)
  model, variables = common.jax_variables(config)
  infer = jax.jit(lambda v, x: jax.nn.sigmoid(
      model.apply(v, x, train=False).mask_logits))
  torch_rows = {}
  try:
    import torch  # pylint: disable=g-import-not-at-top
    from benchmarks.torch_impl import blocks  # pylint: disable=g-import-not-at-top
    impl = common.torch_module(bench)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tmodel = impl.build_model(config.model).to(device).eval()
    blocks.load_flax_variables(tmodel, jax.device_get(variables))
    tmodel.to(device)
  except Exception as e:  # pylint: disable=broad-except
    tmodel, torch_err = None, f"{type(e).__name__}: {e}"
  side = int(config.data.image_size)
  for k in ks:
    x = np.random.RandomState(k).rand(1, k, side, side, 3).astype(np.float32)
    t0 = time.perf_counter()
    compiled = infer.lower(variables, x).compile()
    compile_s = time.perf_counter() - t0
    xd = jax.device_put(x)
    for _ in range(args.warmup):
      jax.block_until_ready(compiled(variables, xd))
    times = []
    for _ in range(args.steps):
      t = time.perf_counter()
      jax.block_until_ready(compiled(variables, xd))
      times.append(time.perf_counter() - t)
    m = compiled.memory_analysis()
    mem = (m.argument_size_in_bytes + m.output_size_in_bytes +
           m.temp_size_in_bytes - m.alias_size_in_bytes) / common._MIB  # pylint: disable=protected-access
    row = {"k": k, "jax_ms": 1e3 * statistics.median(times),
           "jax_compile_s": compile_s, "jax_memory_mib": mem,
           "jax_temp_mib": m.temp_size_in_bytes / common._MIB}  # pylint: disable=protected-access
    if tmodel is not None:
      xt = torch.from_numpy(x).permute(0, 1, 4, 2, 3).contiguous().to(device)
      bf16 = args.dtype == "bfloat16"

      def run_torch(xt=xt, bf16=bf16):
        with torch.inference_mode(), torch.autocast(
            device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
          return impl.infer(tmodel, xt)
      if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
      tt = common._time_torch(run_torch, warmup=args.warmup,  # pylint: disable=protected-access
                              steps=args.steps, device=device)
      row["torch_eager_ms"] = 1e3 * tt["median_s"]
      if device.type == "cuda":
        row["torch_peak_mib"] = torch.cuda.max_memory_allocated() / common._MIB  # pylint: disable=protected-access
    rows.append(row)
  out = {"mode": "group_scaling", "rows": rows, "dtype": args.dtype,
         "image_size": side, "device": jax.devices()[0].device_kind}
  if tmodel is None:
    out["torch_error"] = torch_err
  return out


if __name__ == "__main__":
  common.main(BENCH, extra=lambda b, a: group_scaling(b, a))
