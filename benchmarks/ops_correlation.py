"""Micro-benchmark: correlation operators and the MaCoSNet matching loss.

Rows (all jit-compiled, float32):
  * ``corr4d``: all-pairs correlation as MaCoSNet uses it
    (``feature_correlation`` with feature and match L2 normalisation), two
    feature maps [B, 15, 15, 1024] -> [B, 15, 15, 225];
  * ``corr4d fwd+bwd``: the gradient with respect to both feature maps;
  * ``dcc xcorr``: DCC's multi-scale depth-wise cross-correlation,
    [B, 20, 20, 512] with kernels of sizes 1, 3, 5 from the other map, both
    implementations (shifted products / grouped convolution);
  * ``matching loss``: the foreground-guided matching loss (affine+TPS theta,
    correspondence mask at 15x15) with its gradient w.r.t. theta.

For each: the median wall time of ``--repeats`` runs after ``--warmup`` runs,
and XLA's ``compiled.memory_analysis()`` temporary and output bytes.

Usage:
  python -m benchmarks.ops_correlation [--batch 4] [--repeats 20]
"""

import argparse

import jax
import jax.numpy as jnp

from coseg_jax.losses import matching
from coseg_jax.nn import correlation
from coseg_jax.nn import geometry

from benchmarks import timing


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--size", type=int, default=15)
  parser.add_argument("--channels", type=int, default=1024)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=20)
  args = parser.parse_args()
  b, s, c = args.batch, args.size, args.channels

  keys = jax.random.split(jax.random.key(0), 4)
  fa = jax.random.normal(keys[0], (b, s, s, c), jnp.float32)
  fb = jax.random.normal(keys[1], (b, s, s, c), jnp.float32)
  corr = lambda x, y: correlation.feature_correlation(features_a=x,
                                                      features_b=y)
  corr_grad = jax.grad(lambda x, y: jnp.sum(corr(x, y) ** 2), argnums=(0, 1))

  da = jax.random.normal(keys[2], (b, 20, 20, 512), jnp.float32)
  db = jax.random.normal(keys[3], (b, 20, 20, 512), jnp.float32)
  dcc = lambda method: (lambda x, y: correlation.multiscale_xcorr(
      features=x, other=y, sizes=(1, 3, 5), method=method))

  corr_val = jax.jit(corr)(fa, fb)
  theta = geometry.identity_theta("affine_tps", b) + 0.05
  match = jax.value_and_grad(lambda t: matching.matching_loss(
      correlation=corr_val, theta=t, kind="affine_tps"))

  rows = [
      (f"corr4d [{b},{s},{s},{c}] -> [{b},{s},{s},{s * s}]", corr, (fa, fb)),
      ("corr4d fwd+bwd", corr_grad, (fa, fb)),
      (f"dcc xcorr [{b},20,20,512], k=1,3,5, method=shift", dcc("shift"),
       (da, db)),
      (f"dcc xcorr [{b},20,20,512], k=1,3,5, method=conv", dcc("conv"),
       (da, db)),
      (f"matching loss + grad (affine_tps, {s}x{s})", match, (theta,)),
  ]
  print(timing.device_line())
  print("| op | median ms | temp MiB | output MiB |")
  print("|---|---|---|---|")
  for name, fn, fargs in rows:
    jitted = jax.jit(fn)
    ms = 1e3 * timing.time_calls(jitted, fargs, warmup=args.warmup,
                                 repeats=args.repeats)[0]
    temp, out = timing.compiled_memory_mib(jitted, fargs)
    print(f"| {name} | {ms:.2f} | {temp:.2f} | {out:.2f} |", flush=True)


if __name__ == "__main__":
  main()
