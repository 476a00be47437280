"""Micro-benchmark: Lovász losses vs pixel BCE, forward + backward, jitted.

The Lovász losses sort every pixel's error (one sort per image and class), so
they cost more than an elementwise BCE; this measures how much at the mask
sizes the methods train with. Prints a markdown table: median wall time over
``--repeats`` runs of value_and_grad (after one warm-up/compile call) and the
compiled temporary memory reported by XLA (where the backend reports it).

    python -m benchmarks.losses_lovasz --repeats 5
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from coseg_jax import losses

from benchmarks import timing


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


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--sizes", default="4x128,16x128,4x256,16x256",
                      help="comma list of BxS (B images of SxS pixels)")
  args = parser.parse_args()
  print(timing.device_line())
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
      median, fastest = timing.time_calls(step, (x, labels), warmup=1,
                                          repeats=args.repeats)
      temp = timing.compiled_memory_mib(step, (x, labels))[0]
      print(f"| {name} | {b} x {s} x {s} | {1e3 * median:.1f} | "
            f"{1e3 * fastest:.1f} | {temp:.1f} |")


if __name__ == "__main__":
  main()
