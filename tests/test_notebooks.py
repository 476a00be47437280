"""Executes the Colab quickstart notebook on CPU so that it cannot rot.

``COSEG_NOTEBOOK_QUICK=1`` selects the notebook's seconds-long config (the
demo's ``runlocal`` variant on the tiny synthetic set); the kernel inherits
the environment of this process.
"""

import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "colab_tpu_quickstart.ipynb"


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  monkeypatch.setenv("COSEG_NOTEBOOK_QUICK", "1")
  monkeypatch.setenv("COSEG_NOTEBOOK_WORKDIR", str(tmp_path / "run"))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                   resources={"metadata": {"path": str(REPO)}})
  client.execute()
  outputs = "\n".join(
      o.get("text", "") for c in nb.cells if c.cell_type == "code"
      for o in c.get("outputs", []) if o.get("output_type") == "stream")
  assert "install skipped" in outputs  # the package is importable here
  assert "backend: cpu" in outputs
  assert "finished at step 4" in outputs
  assert "Avg. J over classes" in outputs
  assert "predicted common object" in outputs
  # The checkpoint the notebook trained and evaluated exists.
  assert (tmp_path / "run" / "checkpoints" / "4").is_dir()


def test_notebook_is_valid_and_has_a_parameters_cell():
  nbformat = pytest.importorskip("nbformat")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  tags = [c.metadata.get("tags", []) for c in nb.cells]
  assert any("parameters" in t for t in tags)
  # No stored outputs: the notebook in the repository is always fresh.
  assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
