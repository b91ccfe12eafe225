"""notebooks/explore_study.ipynb runs top to bottom on a study made by a real sweep."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO

pytestmark = pytest.mark.slow  # every test here runs real sweeps, servers or calibrated loads


def test_notebook_executes_on_a_real_study(isolated: Path, three_trials: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    assert three_trials["run"].returncode == 0, three_trials["run"].stderr
    shutil.copy(three_trials["db"], isolated / "studies.db")  # the session's real 3-trial sweep
    monkeypatch.setenv("SWEEP_STUDY", "e2e")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(REPO / "notebooks" / "explore_study.ipynb", as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(isolated)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "cpu_active_p99_share_pct" in text  # the front table
    summary = outputs[-1]["data"]["text/plain"]  # the phases from the worker's marks
    for phase in ("baseline", "load", "idle", "active", "done"):
        assert phase in summary
