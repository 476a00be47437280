"""coseg_jax: deep object co-segmentation in JAX/Flax.

Five published co-segmentation methods on one shared, tested core. See the
README for the architecture and ``python -m coseg_jax.main --help`` for the CLI.
Importing the package sets XLA:CPU's convolution choice before JAX starts
(``coseg_jax.xla_defaults``; ``COSEG_XLA_DEFAULTS=0`` leaves XLA as it is).
"""

from coseg_jax import xla_defaults as _xla_defaults

_xla_defaults.apply()

__version__ = "0.1.0"
