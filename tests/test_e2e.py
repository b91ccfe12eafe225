"""End to end through the real CLI: a real sweep on SmolLM2, the front, the export, the export
run back through ``sweep trial``, continuing a study, and optuna-dashboard reading the result."""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import TINY_SPACE, sweep_cli, write_space

pytestmark = pytest.mark.portable  # make test runs these on both measurement paths


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory, three_trials: dict) -> dict:
    """The session's real 3-trial sweep (its output, and a copy of its study), shared by the tests
    of this module, which continue it."""
    work = tmp_path_factory.mktemp("e2e")
    space = write_space(work / "tiny.yaml", TINY_SPACE)
    if three_trials["run"].returncode == 0:
        shutil.copy(three_trials["db"], work / "studies.db")
    env = {"SWEEP_STORAGE": f"sqlite:///{work / 'studies.db'}"}
    return {"work": work, "space": space, "env": env, "run": three_trials["run"]}


def finished_trials(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT number, state FROM trials ORDER BY number").fetchall()


@pytest.mark.slow
def test_sweep_runs_three_real_trials(swept: dict) -> None:
    proc = swept["run"]
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("] trial ") >= 6  # a start line and a result line per trial
    assert "3 finished trials" in proc.stdout
    assert proc.stdout.count("ETA") == 3 and "meet every budget: " in proc.stdout and "best: trial" in proc.stdout
    assert "Pareto front" in proc.stdout
    assert "Export policy's pick: trial" in proc.stdout
    assert finished_trials(swept["work"] / "studies.db") == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "COMPLETE")]



@pytest.mark.slow
def test_each_trial_names_the_measurement_path_that_measured_it(swept: dict) -> None:
    """The same tests run on both paths (``make test``'s second pass sets SWEEP_PLATFORM=portable):
    here each trial says which one measured it, so a pass that silently fell back proves nothing."""
    import optuna

    from sweep import platforms

    study = optuna.load_study(study_name="e2e", storage=swept["env"]["SWEEP_STORAGE"])
    assert {t.user_attrs["platform"]["platform"] for t in study.trials} == {platforms.name()}
    assert study.user_attrs["hardware_class"]["fingerprint"].get("measurement_path") == \
        (None if platforms.name() == "linux" else "portable")

@pytest.mark.slow
def test_pareto_json_lists_measured_trials(swept: dict) -> None:
    proc = sweep_cli("pareto", "--study", "e2e", "--json", env=swept["env"])
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["objectives"] == ["correctness", "cpu_active_p99_share_pct", "latency_p95_s"]
    assert data["front"]
    for row in data["front"]:
        f = row["figures"]
        assert 0 <= f["correctness"] <= 1
        assert f["latency_p95_s"] > 0 and f["n_windows_active"] >= 1 and f["window_ms"] == 100


@pytest.mark.slow
def test_export_runs_back_through_sweep_trial(swept: dict) -> None:
    out = swept["work"] / "best.json"
    env = swept["env"]
    pareto = json.loads(sweep_cli("pareto", "--study", "e2e", "--json", env=env).stdout)
    proc = sweep_cli("export", "--study", "e2e", "-o", str(out), env=env)
    if pareto["feasible_front"]:  # some trial meets every budget: the policy exports it as it is
        assert proc.returncode == 0, proc.stderr
    else:  # none does (the seed budgets are strict for a 135M model): refused unless asked
        assert proc.returncode == 2 and "Pass --allow-infeasible" in proc.stderr
        proc = sweep_cli("export", "--study", "e2e", "-o", str(out), "--allow-infeasible", env=env)
        assert proc.returncode == 0, proc.stderr
    record = json.loads(out.read_text())
    assert record["provenance"]["study"] == "e2e"
    assert record["llama_kwargs"]["n_threads_batch"] == record["config"]["n_threads_batch"]
    assert "--threads-batch" in record["llama_server"]
    assert set(record["budgets"]) >= {"correctness", "cpu_active_p99_share_pct"}
    rerun = sweep_cli("trial", str(out), "--json", "--prompts", "3", "--idle", "0.5", env=env)
    assert rerun.returncode == 0, rerun.stderr
    measured = json.loads(rerun.stdout)
    assert measured["ok"] and measured["figures"]["latency_p50_s"] > 0
    as_yaml = swept["work"] / "best.yaml"
    assert sweep_cli("export", "--study", "e2e", "-o", str(as_yaml), "--format", "yaml", "--allow-infeasible",
                     env=env).returncode == 0
    again = sweep_cli("trial", str(as_yaml), "--json", "--prompts", "2", "--idle", "0.5", env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["ok"]


@pytest.mark.slow
def test_rerun_continues_to_the_asked_count(swept: dict) -> None:
    db = swept["work"] / "studies.db"
    again = sweep_cli("run", str(swept["space"]), "--study", "e2e", "--trials", "3", "--quiet", env=swept["env"])
    assert again.returncode == 0, again.stderr
    assert len(finished_trials(db)) == 3  # already there: nothing more to run
    more = sweep_cli("run", str(swept["space"]), "--study", "e2e", "--trials", "4", "--quiet", env=swept["env"])
    assert more.returncode == 0, more.stderr
    assert len(finished_trials(db)) == 4
    assert "] trial " not in more.stdout  # --quiet prints only the summary


@pytest.mark.slow
def test_other_space_cannot_continue_the_study(swept: dict) -> None:
    other = write_space(swept["work"] / "other.yaml", TINY_SPACE.replace("nice: [0, 19]", "nice: [0, 5]"))
    proc = sweep_cli("run", str(other), "--study", "e2e", env=swept["env"])
    assert proc.returncode == 2
    assert "made from another search space" in proc.stderr


@pytest.mark.slow
def test_unknown_study_and_missing_database(swept: dict, tmp_path: Path) -> None:
    assert "no study named 'nope'" in sweep_cli("pareto", "--study", "nope", env=swept["env"]).stderr
    proc = sweep_cli("pareto", "--study", "e2e", "--storage", f"sqlite:///{tmp_path / 'none.db'}")
    assert proc.returncode == 2 and "no studies database" in proc.stderr
    assert not (tmp_path / "none.db").exists()


@pytest.mark.slow
def test_show_prints_figures_and_draws_the_timeline(swept: dict) -> None:
    png = swept["work"] / "t0.png"
    proc = sweep_cli("show", "0", "--study", "e2e", "--png", str(png), env=swept["env"])
    assert proc.returncode == 0, proc.stderr
    assert "cpu_active_p99_share_pct" in proc.stdout
    phase_row = next(line for line in proc.stdout.splitlines() if line.startswith("phase "))
    assert "L" in phase_row and "I" in phase_row  # load and idle are drawn
    fg_row = next(line for line in proc.stdout.splitlines() if line.startswith("fg "))
    assert fg_row[len("fg"):].strip() and "interactive probe" in proc.stdout  # the user's side, against its baseline
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_optuna_dashboard_reads_the_study(swept: dict) -> None:
    port = _free_port()
    url = swept["env"]["SWEEP_STORAGE"]
    dashboard = subprocess.Popen([str(Path(sys.executable).with_name("optuna-dashboard")), url, "--host", "127.0.0.1", "--port", str(port)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                studies = json.load(urllib.request.urlopen(f"{base}/api/studies", timeout=2))
                break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail("optuna-dashboard did not answer")
        (summary,) = [s for s in studies["study_summaries"] if s["study_name"] == "e2e"]
        detail = json.load(urllib.request.urlopen(f"{base}/api/studies/{summary['study_id']}", timeout=10))
        assert detail["objective_names"] == ["correctness", "cpu_active_p99_share_pct", "latency_p95_s"]
        assert "Budgets" in detail["note"]["body"] and "smollm2-135m:Q4_1" in detail["note"]["body"]
        complete = [t for t in detail["trials"] if t["state"] == "Complete"]
        assert complete
        for t in complete:
            attrs = {a["key"] for a in t["user_attrs"]}
            assert {"cpu_active_p99_share_pct", "latency_p99_s", "rss_peak_gb", "config"} <= attrs
            assert len(t["constraints"]) == 7  # the seed's seven budgets, so feasibility shows
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=10)


@pytest.mark.slow
def test_timeout_finishes_the_trial_in_flight_then_stops(tmp_path: Path) -> None:
    env = {"SWEEP_STORAGE": f"sqlite:///{tmp_path / 'studies.db'}"}
    space = write_space(tmp_path / "s.yaml", TINY_SPACE)
    proc = sweep_cli("run", str(space), "--trials", "3", "--timeout", "1s", "--quiet", env=env)
    assert proc.returncode == 0, proc.stderr
    assert finished_trials(tmp_path / "studies.db") == [(0, "COMPLETE")]  # a trial takes longer than 1 s


@pytest.mark.parametrize("text, seconds", [("8h", 28800), ("30m", 1800), ("1h30m", 5400), ("90s", 90), ("45", 45)])
def test_durations(text: str, seconds: float) -> None:
    from sweep.cli import parse_duration

    assert parse_duration(text) == seconds


def test_bad_duration_is_exit_2(tmp_path: Path) -> None:
    proc = sweep_cli("run", str(write_space(tmp_path / "s.yaml", TINY_SPACE)), "--timeout", "soon")
    assert proc.returncode == 2 and "not a duration" in proc.stderr
    assert not (tmp_path / "studies.db").exists()
