"""Shared pytest fixtures and helpers."""

import os
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Real third-party data lives beside the checkout, never inside it.
SHARED_DATA = pathlib.Path(
    os.environ.get("COSEG_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture
def shared_data():
  """Path to ../shared/data; skips the test where it is absent."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"real data not found at {SHARED_DATA} (set COSEG_SHARED_DATA)")
  return SHARED_DATA


def optional_import(module_name: str, reason: str = ""):
  """Imports an optional test-time dependency (torch, the Lite0 weights...).

  On a user's machine a missing module skips the test with a reason. CI sets
  COSEG_REQUIRE_OPTIONAL=1 so that a missing module fails instead: the parity
  and real-weight checks must never silently vanish there.
  """
  if os.environ.get("COSEG_REQUIRE_OPTIONAL") == "1":
    import importlib
    return importlib.import_module(module_name)
  return pytest.importorskip(module_name, reason=reason or
                             f"{module_name} not installed (optional)")
