"""notebooks/: stored without outputs, and executed here on tiny runs and a tiny sweep storage, from
the notebook's own folder as `jupyter execute notebooks/compare_runs.ipynb` runs it."""

import os
from pathlib import Path

import nbformat
import optuna
import pytest
from nbclient import NotebookClient
from optuna.distributions import CategoricalDistribution

from test_cli import fit

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} holds outputs"


def test_compare_notebook_runs_from_its_own_folder_on_tiny_runs_and_a_sweep_storage(tmp_path, monkeypatch):
    short = ["--trainer.max_steps=2", "--trainer.val_check_interval=2"]
    runs = [fit(tmp_path, "phase_1", *short), fit(tmp_path, "phase_b", *short)]
    # A sweep storage whose two trials are those runs, as `codec sweep` records them.
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="tiny", storage=storage, direction="maximize")
    arm = CategoricalDistribution(["zscore", "l2"])
    for value, run_dir, norm in zip((1.0, 2.0), runs, ("zscore", "l2"), strict=True):
        study.add_trial(optuna.trial.create_trial(params={"normalization": norm}, distributions={"normalization": arm},
                                                  value=value, user_attrs={"run_dir": str(run_dir), "seed": 0}))
    out = tmp_path / "out"
    # Paths relative to the repository root, as the notebook's defaults are (runs/demo/...): from
    # notebooks/, where Jupyter runs it, they would point one folder off.
    monkeypatch.setenv("CODEC_RUN_DIRS", " ".join(os.path.relpath(r.parent, REPO) for r in runs))
    monkeypatch.setenv("CODEC_SWEEP_STORAGE", storage)
    monkeypatch.setenv("CODEC_NOTEBOOK_OUT", os.path.relpath(out, REPO))

    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    NotebookClient(nb, kernel_name="python3", timeout=300,
                   resources={"metadata": {"path": str(NOTEBOOKS[0].parent)}}).execute()  # as `jupyter execute`

    shown = "\n".join(o.get("data", {}).get("text/markdown", "") for c in nb.cells for o in c.get("outputs", []))
    assert "| phase_1/version_0 |" in shown and "| phase_b/version_0 |" in shown
    assert "| 0 | complete | zscore | 0 | 1 |" in shown
    for folder in (out / "runs", out / "sweep" / "tiny"):
        pngs = list(folder.glob("*.png"))
        assert pngs and all(p.stat().st_size > 1000 for p in pngs)
    assert "<audio" in (out / "listen.html").read_text()
