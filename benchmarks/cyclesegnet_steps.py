"""Inference time per pair vs the number of refinement steps N (Table 2 column).

CycleSegNet's Table 2 reports J and the inference time per image pair for
N = 1..7 ConvLSTM steps at 512x512. This script times the forward pass of the
paper's model (ResNet-34, multi-level CRM, 2x2 regions, randomly initialised:
speed does not depend on the weights) on one pair per call, for each N.

  python benchmarks/cyclesegnet_steps.py --size 512 --steps 1,2,3,4,5,6,7 \\
      --repeats 3

Reported per N: compile time, median wall time of ``repeats`` calls after one
warm-up call (each blocked on), and XLA's temporary memory estimate.
``--single_level`` times the single-level variant; ``--backbone`` any
registered backbone; ``--dtype bfloat16`` mixed precision.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from coseg_jax.models import cyclesegnet


def time_steps(*, num_steps, size, backbone, multi_level, dtype, repeats,
               batch=1):
  """(compile s, median call s, temp MiB) of one forward pass."""
  model = cyclesegnet.CycleSegNet(
      backbone=backbone, multi_level=multi_level, num_steps=num_steps,
      dtype=jnp.dtype(dtype))
  x = jnp.asarray(np.random.default_rng(0).uniform(
      size=(batch, 2, size, size, 3)), jnp.float32)
  variables = jax.jit(model.init)(jax.random.key(0), x[:, :, :64, :64])
  fwd = jax.jit(lambda v, x: model.apply(v, x, train=False).mask_logits)
  t0 = time.perf_counter()
  compiled = fwd.lower(variables, x).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  temp_mib = (getattr(mem, "temp_size_in_bytes", 0) or 0) / 2**20
  jax.block_until_ready(compiled(variables, x))  # warm-up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(variables, x))
    times.append(time.perf_counter() - t0)
  return compile_s, statistics.median(times), temp_mib


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=512)
  parser.add_argument("--steps", default="1,2,3,4,5,6,7")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--backbone", default="resnet34")
  parser.add_argument("--single_level", action="store_true")
  parser.add_argument("--dtype", default="float32")
  args = parser.parse_args()
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); "
        f"{args.backbone}, {'single' if args.single_level else 'multi'}-level,"
        f" {args.size}x{args.size}, one pair per call, {args.dtype}")
  print("| N | compile (s) | time per pair (ms, median of "
        f"{args.repeats}) | XLA temp (MiB) |")
  print("|---|---|---|---|")
  for n in [int(s) for s in args.steps.split(",")]:
    c, t, m = time_steps(num_steps=n, size=args.size, backbone=args.backbone,
                         multi_level=not args.single_level, dtype=args.dtype,
                         repeats=args.repeats)
    print(f"| {n} | {c:.1f} | {1000 * t:.0f} | {m:.0f} |", flush=True)


if __name__ == "__main__":
  main()
