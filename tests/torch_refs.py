"""Plain-torch reference backbones for the parity tests (torch.nn only).

The implementations live in ``benchmarks/torch_impl/backbones.py``, shared
with the PyTorch benchmark implementations; this module re-exports them under
the names the tests use. Import this only after ``optional_import('torch')``.
"""

# pylint: disable=wildcard-import,unused-wildcard-import
from benchmarks.torch_impl.backbones import *  # noqa: F401,F403
