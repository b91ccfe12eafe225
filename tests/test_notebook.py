"""notebooks/explore_study.ipynb runs top to bottom on a study made by a real sweep."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO, TINY_SPACE, sweep_cli, write_space

pytestmark = pytest.mark.slow  # every test here runs real sweeps, servers or calibrated loads


def test_notebook_executes_on_a_real_study(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert sweep_cli("run", str(write_space(isolated / "s.yaml", TINY_SPACE)), "--study", "nb", "--trials", "3",
                     "--quiet").returncode == 0
    monkeypatch.setenv("SWEEP_STUDY", "nb")
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
