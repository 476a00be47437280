"""coseg_jax: deep object co-segmentation in JAX/Flax.

Five published co-segmentation methods on one shared, tested core. See the
README for the architecture and ``python -m coseg_jax.main --help`` for the CLI.
"""

__version__ = "0.1.0"
