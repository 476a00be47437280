"""Executes the notebooks on CPU so that they cannot rot.

``COSEG_NOTEBOOK_QUICK=1`` makes each notebook use the demo's seconds-long
``runlocal`` variant on the tiny synthetic set (and, for the CycleSegNet
notebook, train it in-notebook since no checkpoint is given); the kernel
inherits the environment of this process.
"""

import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
QUICKSTART = NOTEBOOKS / "colab_tpu_quickstart.ipynb"
EXPLAINED = NOTEBOOKS / "cyclesegnet_explained.ipynb"


def _execute(path, workdir, monkeypatch):
  """Runs every cell of ``path``; returns the code cells' stream output."""
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  monkeypatch.setenv("COSEG_NOTEBOOK_QUICK", "1")
  monkeypatch.setenv("COSEG_NOTEBOOK_WORKDIR", str(workdir))
  monkeypatch.delenv("COSEG_NOTEBOOK_CHECKPOINT", raising=False)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                   resources={"metadata": {"path": str(REPO)}})
  client.execute()
  return "\n".join(
      o.get("text", "") for c in nb.cells if c.cell_type == "code"
      for o in c.get("outputs", []) if o.get("output_type") == "stream")


@pytest.mark.slow
@pytest.mark.compile_bound
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
  outputs = _execute(QUICKSTART, tmp_path / "run", monkeypatch)
  assert "install skipped" in outputs  # the package is importable here
  assert "backend: cpu" in outputs
  assert "finished at step 4" in outputs
  assert "Avg. J over classes" in outputs
  assert "predicted common object" in outputs
  # The checkpoint the notebook trained and evaluated exists.
  assert (tmp_path / "run" / "checkpoints" / "4").is_dir()


@pytest.mark.slow
@pytest.mark.compile_bound
def test_cyclesegnet_notebook_runs(tmp_path, monkeypatch):
  outputs = _execute(EXPLAINED, tmp_path / "run", monkeypatch)
  assert "trained here: finished at step 4" in outputs
  assert "loaded checkpoint step 4" in outputs
  assert "attends to image B's regions with weights" in outputs
  assert "sum 1.000)" in outputs  # a softmax row over the regions
  # The demo's N = 3 refinement steps (also in runlocal), one line each.
  for t in (1, 2, 3):
    assert f"after refinement step {t}:" in outputs
  assert "after refinement step 4:" not in outputs


@pytest.mark.parametrize("path", [QUICKSTART, EXPLAINED], ids=lambda p: p.stem)
def test_notebook_is_valid_fresh_and_parametrised(path):
  nbformat = pytest.importorskip("nbformat")
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)
  # No stored outputs: the notebook in the repository is always fresh.
  assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
