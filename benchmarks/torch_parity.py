r"""Parity of the PyTorch implementations with the Flax models (a table).

For every method: the parameter counts of the Flax model and of its torch
implementation (``benchmarks/torch_impl``) at the paper's configuration and
at the tiny CPU size (torch built on the meta device), and, at the tiny size
in float32 on CPU, the largest output difference after copying random Flax
variables into the torch model (``blocks.load_flax_variables``), relative to
the largest output magnitude. The same checks, with assertions, are
``tests/test_benchmarks.py``.

Usage::

  python -m benchmarks.torch_parity [--methods cyclesegnet,dcc]
"""

import argparse
import importlib
import os
import sys

import jax
import numpy as np

from benchmarks import common
from benchmarks.torch_impl import blocks

METHODS = ("cyclesegnet", "cosegnet", "dcc", "coattention", "macosnet")


def main(argv=None):
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), "tests"))
  import test_benchmarks as tb  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--methods", default=",".join(METHODS))
  args = p.parse_args(argv)
  print("| method | params (paper config): JAX | torch | params (tiny): JAX "
        "| torch | tiny output max abs diff / max abs |")
  print("|---|---|---|---|---|---|")
  for method in args.methods.split(","):
    bench = importlib.import_module(f"benchmarks.bench_{method}").BENCH
    counts = []
    for size in ("paper", "tiny"):
      config = common.make_config(bench, size=size)
      with torch.device("meta"):
        tm = common.build_torch_model(bench, config)
      counts += [common.jax_param_count(config), blocks.torch_param_count(tm)]
    model, v, tm, x = tb._parity(method)  # pylint: disable=protected-access
    ours = jax.jit(lambda v, x, m=model: m.apply(v, x).mask_logits)(v, x)
    with torch.no_grad():
      out = tm(tb.to_nchw(x))
    out = out[0] if isinstance(out, tuple) else out
    ref = out.permute(0, 1, 3, 4, 2).numpy()
    ours = np.asarray(ours)
    err = np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-3)
    print(f"| {method} | {counts[0]:,} | {counts[1]:,} | {counts[2]:,} | "
          f"{counts[3]:,} | {err:.1e} |", flush=True)


if __name__ == "__main__":
  main()
