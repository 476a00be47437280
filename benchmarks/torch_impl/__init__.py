"""PyTorch (``torch.nn`` only) implementations of the coseg_jax methods.

Each method module builds a ``torch.nn.Module`` with the same layers, shapes
and parameter count as its Flax counterpart, a training step and an
inference function, so that ``benchmarks/bench_<method>.py`` can time both
frameworks on the same work. ``blocks`` holds the shared building blocks and
the Flax -> torch weight copy used by the output-parity tests.
"""
