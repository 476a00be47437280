"""XLA:CPU settings coseg_jax applies when it is imported.

XLA's CPU backend hands convolutions to the YNNPACK library by default. On
the x86 CPUs measured here (2-core AMD EPYC) YNNPACK is 2x slower than XLA's
own (Eigen) convolution for the decoder shapes every method has, large maps
with few channels ([16, 224, 224, 32] -> 16 channels, 3x3: 160 ms vs 86 ms;
[16, 112, 112, 64] -> 32: 100 ms vs 51 ms), and about even on small maps
with many channels ([16, 14, 14, 1400] -> 128: 55 vs 62 ms). Whole steps at
the recipes' sizes gain 20-40 % (results page, Speed). So importing
coseg_jax removes YNNPACK's convolution fusion from the default list
(``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution``);
YNNPACK still runs dots, reductions and element-wise fusions.

XLA reads ``XLA_FLAGS`` once, when JAX first builds its backends, so the
setting takes effect only if coseg_jax is imported before any JAX
computation has run. It is left out when ``XLA_FLAGS`` already names the
option (the user's value wins) or when ``COSEG_XLA_DEFAULTS=0``. Other
backends ignore XLA:CPU options.
"""

import os
import sys
from typing import MutableMapping

OPT_OUT = "COSEG_XLA_DEFAULTS"
YNN_FUSION_OPTION = "--xla_cpu_experimental_ynn_fusion_type"
CPU_FLAGS = (f"{YNN_FUSION_OPTION}=-individual_convolution",)


def _backends_initialized() -> bool:
  # Read from sys.modules: importing JAX here would be the first import of
  # it in most processes, for nothing.
  bridge = sys.modules.get("jax._src.xla_bridge")
  check = getattr(bridge, "backends_are_initialized", None)
  return bool(check()) if check is not None else False


def apply(environ: MutableMapping[str, str] = os.environ) -> bool:
  """Appends :data:`CPU_FLAGS` to ``environ['XLA_FLAGS']`` where allowed.

  Args:
    environ: the environment to change (``os.environ``; a dict in tests).

  Returns:
    True if the flags were added, False if left out (opted out, the user
    set the option, or JAX's backends already exist).
  """
  if environ.get(OPT_OUT, "1") == "0":
    return False
  current = environ.get("XLA_FLAGS", "")
  if YNN_FUSION_OPTION in current:
    return False
  if environ is os.environ and _backends_initialized():
    return False
  environ["XLA_FLAGS"] = " ".join(filter(None, [current, *CPU_FLAGS]))
  return True
