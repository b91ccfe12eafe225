"""The HTML report, opened in headless Chromium: every chart renders."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import TINY_SPACE, sweep_cli, write_space

pytestmark = pytest.mark.slow  # every test here runs a real model, server or sweep


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--virtual-time-budget=10000"]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, three_trials: dict) -> Path:
    work = tmp_path_factory.mktemp("report")
    env = {"SWEEP_STORAGE": f"sqlite:///{work / 'studies.db'}"}
    assert three_trials["run"].returncode == 0, three_trials["run"].stderr
    shutil.copy(three_trials["db"], work / "studies.db")  # the session's real 3-trial sweep, and one more trial
    assert sweep_cli("run", str(write_space(work / "s.yaml", TINY_SPACE)), "--study", "e2e", "--trials", "4",
                     "--quiet", env=env).returncode == 0
    out = work / "report.html"
    proc = sweep_cli("report", "--study", "e2e", "-o", str(out), env=env)
    assert proc.returncode == 0, proc.stderr
    return out


def test_report_is_self_contained(report: Path) -> None:
    text = report.read_text()
    assert "<script src=\"http" not in text  # plotly.js is embedded: the file works offline
    assert "Pareto front" in text and "CPU timeline" in text and "latency of each request" in text


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_report_charts_render_in_chromium(report: Path, tmp_path: Path) -> None:
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", report.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    text = report.read_text()
    n_charts = text.count('class="plotly-graph-div"')
    assert n_charts >= 3  # the front, a front trial's timeline, the latencies
    assert "Parameter importance is not yet meaningful" in text  # a note, not bars, from 4 trials
    assert dom.count('class="main-svg"') >= n_charts  # plotly drew an SVG for every chart
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile2'}", "--window-size=1280,2000",
                    f"--screenshot={shot}", report.as_uri()], capture_output=True, timeout=120)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
