"""Shared pytest fixtures and helpers."""

import os
import pathlib

import pytest

# Most tests compile a small model once and run it for a step or two, so XLA's
# optimisation passes cost more than they save: without them the suite's
# compile-bound tests run 2-3x faster on CPU. Set before JAX is imported so
# that subprocesses (CLI, multi-process, notebook tests) inherit it. The
# slow-marked end-to-end tests train for hundreds of steps and run fully
# optimised (fixture below), so the optimised pipeline users get is still
# exercised. Export JAX_DISABLE_MOST_OPTIMIZATIONS=0 to run everything
# optimised.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Real third-party data lives beside the checkout, never inside it.
SHARED_DATA = pathlib.Path(
    os.environ.get("COSEG_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _optimise_slow_tests(request, monkeypatch):
  """Slow-marked tests (long training loops) compile with every XLA pass.

  Module-scoped fixtures are set up before this one, so a slow module whose
  shared fixture compiles must pin the setting itself (see
  test_train_distributed._env). Slow tests that run a handful of steps
  (notebooks, the CLI round trip) are compile-bound like the fast ones:
  ``@pytest.mark.compile_bound`` keeps them on the fast-compiling setting.
  """
  if (request.node.get_closest_marker("slow") is None or
      request.node.get_closest_marker("compile_bound") is not None):
    yield
    return
  import jax  # pylint: disable=g-import-not-at-top
  before = jax.config.read("jax_disable_most_optimizations")
  monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "0")
  jax.config.update("jax_disable_most_optimizations", False)
  try:
    yield
  finally:
    jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture
def shared_data():
  """Path to ../shared/data; skips the test where it is absent."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"real data not found at {SHARED_DATA} (set COSEG_DATA_DIR)")
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
