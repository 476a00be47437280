"""Micro-benchmark: Region Correspondence Module (group form) vs group size K.

For K = 2..8 images of 32x32x512 features (batch 1), jit-compiles the RCM
group form (2x2 pooled regions, d = C = 512, value projection on) and reports
the median wall time of ``--repeats`` runs after ``--warmup`` runs, and XLA's
``memory_analysis()`` temporary bytes of the compiled executable. With
``--grad`` it also times the gradient with respect to the parameters and the
inputs (what training pays).

Usage:
  python -m benchmarks.ops_rcm [--ks 2,3,4,5,6,7,8] [--repeats 10] [--grad]
"""

import argparse

import jax
import jax.numpy as jnp

from coseg_jax.nn import region_attention

from benchmarks import timing


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--ks", default="2,3,4,5,6,7,8")
  parser.add_argument("--size", type=int, default=32)
  parser.add_argument("--channels", type=int, default=512)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--grad", action="store_true")
  args = parser.parse_args()

  c, s = args.channels, args.size
  module = region_attention.RegionCorrespondence(c)
  fwd = jax.jit(module.apply)
  loss = lambda v, x: jnp.sum(module.apply(v, x) ** 2)
  bwd = jax.jit(jax.grad(loss, argnums=(0, 1)))
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"features [1, K, {s}, {s}, {c}], regions 2x2")
  header = "| K | forward ms | forward temp MiB |"
  if args.grad:
    header += " fwd+bwd ms | fwd+bwd temp MiB |"
  print(header)
  print("|" + "---|" * (header.count("|") - 1))
  for k in [int(v) for v in args.ks.split(",")]:
    x = jax.random.normal(jax.random.key(k), (1, k, s, s, c), jnp.float32)
    variables = module.init(jax.random.key(0), x)
    row = "| %d |" % k
    for fn in (fwd, bwd) if args.grad else (fwd,):
      ms = 1e3 * timing.time_calls(fn, (variables, x), warmup=args.warmup,
                                   repeats=args.repeats)[0]
      temp = timing.compiled_memory_mib(fn, (variables, x))[0]
      row += f" {ms:.1f} | {temp:.2f} |"
    print(row, flush=True)


if __name__ == "__main__":
  main()
