"""Executes notebooks/cyclesegnet_explained.ipynb on a tiny config (CPU).

``COSEG_NOTEBOOK_QUICK=1`` makes the notebook train the demo's seconds-long
``runlocal`` variant in-notebook (no checkpoint given); the kernel inherits
the environment of this process.
"""

import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "cyclesegnet_explained.ipynb"


@pytest.mark.slow
def test_cyclesegnet_notebook_runs(tmp_path, monkeypatch):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  monkeypatch.setenv("COSEG_NOTEBOOK_QUICK", "1")
  monkeypatch.setenv("COSEG_NOTEBOOK_WORKDIR", str(tmp_path / "run"))
  monkeypatch.delenv("COSEG_NOTEBOOK_CHECKPOINT", raising=False)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                   resources={"metadata": {"path": str(REPO)}})
  client.execute()
  outputs = "\n".join(
      o.get("text", "") for c in nb.cells if c.cell_type == "code"
      for o in c.get("outputs", []) if o.get("output_type") == "stream")
  assert "trained here: finished at step 4" in outputs
  assert "loaded checkpoint step 4" in outputs
  assert "attends to image B's regions with weights" in outputs
  assert "(sum 1.000)" in outputs  # a softmax row over the regions
  # The demo's N = 3 refinement steps (also in runlocal), one line each.
  for t in (1, 2, 3):
    assert f"after refinement step {t}:" in outputs
  assert "after refinement step 4:" not in outputs


def test_notebook_is_valid_fresh_and_parametrised():
  nbformat = pytest.importorskip("nbformat")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)
  assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
