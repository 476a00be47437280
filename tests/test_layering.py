"""The layers point one way, and imports sit at the top of modules.

Layers (lowest first): the core (``coseg_jax.nn``, ``backbones``, ``losses``,
``metrics``, ``postprocess``, ``proposals``, ``common_selection``,
``xla_defaults``) imports no other part of the project; the methods (``coseg_jax.models``) import only
the core; the data stack (``data_pipelines``) imports nothing of ``coseg_jax``; the runtime
(``coseg_jax.runtime``) imports the core, the methods and the data stack;
``coseg_jax.main`` sits on top; configs import only configs and the data
config. Every import of a project module is read from the source (functions
included), so a deferred import cannot hide an upward dependency.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("coseg_jax", "data_pipelines", "configs", "experiments")

CORE = ("coseg_jax.nn", "coseg_jax.backbones", "coseg_jax.losses",
        "coseg_jax.metrics", "coseg_jax.postprocess", "coseg_jax.proposals",
        "coseg_jax.common_selection", "coseg_jax.xla_defaults")
LAYERS = (
    # (layer name, module prefixes, what it may import)
    ("core", CORE, CORE),
    ("methods", ("coseg_jax.models",), CORE + ("coseg_jax.models",)),
    ("data", ("data_pipelines",), ("data_pipelines",)),
    ("runtime", ("coseg_jax.runtime",),
     CORE + ("coseg_jax.models", "coseg_jax.runtime", "data_pipelines")),
    ("main", ("coseg_jax.main",),
     CORE + ("coseg_jax.models", "coseg_jax.runtime", "data_pipelines")),
    ("configs", ("configs",), ("configs", "data_pipelines.config")),
    # Experiments use the public API of everything (never the tests).
    ("experiments", ("experiments",),
     ("coseg_jax", "data_pipelines", "configs", "experiments")),
)
# Optional third-party packages that may be imported where they are used
# (an install extra or a test-time reference), never at module top.
OPTIONAL = ("pydensecrf", "torch", "matplotlib")


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def _project_modules():
  for package in PACKAGES:
    for path in sorted((ROOT / package).rglob("*.py")):
      yield _module_name(path), path


def _imports(path: pathlib.Path):
  """(imported module, line, at module top?) for every import statement."""
  tree = ast.parse(path.read_text(), filename=str(path))
  top = {id(node) for node in tree.body}
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield alias.name, node.lineno, id(node) in top
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      for alias in node.names:
        # 'from a.b import c' may import the submodule a.b.c.
        yield f"{node.module}.{alias.name}", node.lineno, id(node) in top


def _layer(module: str):
  for name, prefixes, allowed in LAYERS:
    if any(module == p or module.startswith(p + ".") for p in prefixes):
      return name, allowed
  return None, None


def _is_project(module: str) -> bool:
  return module.split(".")[0] in PACKAGES


def _within(module: str, prefixes) -> bool:
  return any(module == p or module.startswith(p + ".") or
             p.startswith(module + ".") for p in prefixes)


def test_every_project_module_has_a_layer():
  missing = [m for m, _ in _project_modules()
             if m not in ("coseg_jax",) and _layer(m)[0] is None]
  assert not missing, f"modules outside every layer: {missing}"


@pytest.mark.parametrize("module,path", list(_project_modules()),
                         ids=lambda x: str(x))
def test_imports_point_down_and_sit_at_the_top(module, path):
  layer, allowed = _layer(module)
  if layer is None:
    return
  for imported, line, at_top in _imports(path):
    if _is_project(imported):
      assert _within(imported, allowed), (
          f"{path.relative_to(ROOT)}:{line}: the {layer} layer imports "
          f"{imported}")
      assert at_top, (f"{path.relative_to(ROOT)}:{line}: deferred import of "
                      f"{imported} (imports go at the top of the module)")
    elif not at_top:
      assert imported.split(".")[0] in OPTIONAL, (
          f"{path.relative_to(ROOT)}:{line}: deferred import of {imported} "
          f"(only optional extras {OPTIONAL} may be imported where used)")


def test_the_checker_sees_an_upward_import(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("def f():\n  from coseg_jax.runtime import steps\n")
  found = list(_imports(bad))
  assert found == [("coseg_jax.runtime.steps", 2, False)]
  _, allowed = _layer("coseg_jax.models.bad")
  assert not _within("coseg_jax.runtime.steps", allowed)
