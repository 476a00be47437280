"""Micro-benchmark: Lovász losses vs pixel BCE, forward + backward, jitted.

The Lovász losses sort every pixel's error (one sort per image and class), so
they cost more than an elementwise BCE; this measures how much at the mask
sizes the methods train with. Prints a markdown table: median wall time over
``--repeats`` runs of value_and_grad (after one warm-up/compile call) and the
compiled temporary memory reported by XLA (where the backend reports it).

    python benchmarks/losses_lovasz.py --repeats 5
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from coseg_jax import losses


# name -> loss(logits, labels) for the one-logit-per-pixel mask setting. The
# labels are arguments, not closed-over constants, so XLA cannot fold them.
CASES = {
    "sigmoid_bce": lambda x, y: losses.sigmoid_bce(logits=x, labels=y),
    "lovasz_hinge (per image)": lambda x, y: losses.lovasz_hinge(
        logits=x, labels=y, per_image=True),
    "lovasz_softmax_binary (batch)": lambda x, y: losses.lovasz_softmax_binary(
        logits=x, labels=y, per_image=False),
    "lovasz_softmax_binary (per image)":
        lambda x, y: losses.lovasz_softmax_binary(
            logits=x, labels=y, per_image=True),
}


def _temp_mib(fn, x, y):
  try:
    analysis = jax.jit(fn).lower(x, y).compile().memory_analysis()
    return analysis.temp_size_in_bytes / 2**20
  except Exception:  # Backends without memory analysis.
    return float("nan")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--sizes", default="4x128,16x128,4x256,16x256",
                      help="comma list of BxS (B images of SxS pixels)")
  args = parser.parse_args()
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"jax {jax.__version__}")
  print("| loss | B x H x W | fwd+bwd median (ms) | min (ms) "
        "| XLA temp (MiB) |")
  print("|---|---|---|---|---|")
  rng = np.random.RandomState(0)
  for spec in args.sizes.split(","):
    b, s = (int(v) for v in spec.split("x"))
    x = jnp.asarray(rng.randn(b, s, s, 1), jnp.float32)
    labels = jnp.asarray(rng.rand(b, s, s, 1) > 0.5, jnp.int32)
    for name, fn in CASES.items():
      step = jax.jit(jax.value_and_grad(fn))
      jax.block_until_ready(step(x, labels))  # Compile.
      times = []
      for _ in range(args.repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(step(x, labels))
        times.append((time.perf_counter() - t0) * 1e3)
      temp = _temp_mib(jax.value_and_grad(fn), x, labels)
      print(f"| {name} | {b} x {s} x {s} | {statistics.median(times):.1f} | "
            f"{min(times):.1f} | {temp:.1f} |")


if __name__ == "__main__":
  main()
