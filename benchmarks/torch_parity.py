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

import torch

from benchmarks import common
from benchmarks.torch_impl import blocks
from benchmarks.torch_impl import parity


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--methods", default=",".join(parity.METHODS))
  args = p.parse_args(argv)
  print("| method | params (paper config): JAX | torch | params (tiny): JAX "
        "| torch | tiny output max abs diff / max abs |")
  print("|---|---|---|---|---|---|")
  for method in args.methods.split(","):
    bench = parity.bench_of(method)
    counts = []
    for size in ("paper", "tiny"):
      config = common.make_config(bench, size=size)
      with torch.device("meta"):
        tm = common.build_torch_model(bench, config)
      counts += [common.jax_param_count(config), blocks.torch_param_count(tm)]
    ours, ref = parity.mask_logits_pair(*parity.parity_models(method))
    err = parity.relative_error(ours, ref)
    print(f"| {method} | {counts[0]:,} | {counts[1]:,} | {counts[2]:,} | "
          f"{counts[3]:,} | {err:.1e} |", flush=True)


if __name__ == "__main__":
  main()
