"""Plain-torch reference backbones for the parity tests (torch.nn only).

The implementations live in ``benchmarks/torch_impl/backbones.py``, shared
with the PyTorch benchmark implementations; this module re-exports them under
the names the tests use. Import this only after ``optional_import('torch')``.
"""

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # 'benchmarks' is a top-level folder, not installed
  sys.path.insert(0, _ROOT)

# pylint: disable=wildcard-import,unused-wildcard-import,g-import-not-at-top
from benchmarks.torch_impl.backbones import *  # noqa: E402,F401,F403
