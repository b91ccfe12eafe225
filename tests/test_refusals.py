"""Bad input and failed work found in review: one line each, a documented exit code (2: bad input,
3: the work ran but failed), and the study left as it was (its database's bytes)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import optuna
import pytest

from sweep.measure.host import allowed_cpus
from sweep.results.front import choose

from conftest import TINY_SPACE, sweep_cli, write_space

def _one_line(proc, code: int, *needles: str) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.slow
def test_other_trial_settings_cannot_continue_a_study(one_trial: Path, isolated: Path) -> None:
    db = isolated / "studies.db"
    shutil.copy(one_trial, db)
    space = write_space(isolated / "s.yaml", TINY_SPACE.replace("prompts: 3", "prompts: 4"))
    _one_line(sweep_cli("run", str(space), "--trials", "2"), 2, "other trial settings", "prompts 3 in the study, 4 here")
    assert db.read_bytes() == one_trial.read_bytes()


@pytest.mark.slow
def test_other_tasks_cannot_continue_a_study(one_trial: Path, isolated: Path) -> None:
    db = isolated / "studies.db"
    shutil.copy(one_trial, db)
    tasks = isolated / "mine.jsonl"
    bundled = (Path(__file__).parent.parent / "sweep" / "data" / "tasks-v1.jsonl").read_text().splitlines()
    tasks.write_text("\n".join(bundled[:20]) + "\n")
    space = write_space(isolated / "s.yaml", TINY_SPACE)
    _one_line(sweep_cli("run", str(space), "--trials", "2", "--tasks", str(tasks)), 2, "task set", "mine.jsonl")
    assert db.read_bytes() == one_trial.read_bytes()


def test_a_broken_gguf_is_listed_and_fails_only_the_space_that_uses_it(isolated: Path) -> None:
    from sweep.study.space import load_space

    models = isolated / "models"
    models.mkdir()
    (models / "broken.Q4_0.gguf").write_bytes(b"GGUF" + b"\x00" * 10)
    listing = sweep_cli("models", "list", "--models-dir", str(models))
    assert listing.returncode == 0, listing.stderr
    assert "BROKEN" in listing.stdout and "broken.Q4_0.gguf" in listing.stdout
    assert "smollm2-135m" in listing.stdout
    load_space(write_space(isolated / "ok.yaml", TINY_SPACE), models)  # another model still loads
    bad = write_space(isolated / "bad.yaml", TINY_SPACE.replace("smollm2-135m: [Q4_1]", "broken: [Q4_0]"))
    _one_line(sweep_cli("run", str(bad), "--models-dir", str(models)), 2, "bad.yaml", "broken.Q4_0.gguf")
    assert not (isolated / "studies.db").exists()


def _export(one_trial: Path, isolated: Path, fmt: str = "json") -> Path:
    shutil.copy(one_trial, isolated / "studies.db")
    out = isolated / f"e.{fmt}"
    proc = sweep_cli("export", "--study", "tiny", "-o", str(out), "--format", fmt, "--allow-infeasible")
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.slow
def test_a_study_measured_on_linux_is_not_continued_on_the_portable_path_unasked(one_trial: Path, isolated: Path) -> None:
    """The measurement path is part of the hardware class: the portable path's figures (psutil,
    in clock ticks) are not the Linux path's. Named, the class is joined, and each trial says
    how it was measured."""
    db = isolated / "studies.db"
    shutil.copy(one_trial, db)
    space = write_space(isolated / "s.yaml", TINY_SPACE)
    portable = {"SWEEP_PLATFORM": "portable"}
    _one_line(sweep_cli("run", str(space), "--trials", "2", env=portable), 2, "another hardware class",
              "measurement_path 'portable' here, None in the study")
    assert db.read_bytes() == one_trial.read_bytes()
    name = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}").user_attrs["hardware_class"]["name"]
    joined = sweep_cli("run", str(space), "--trials", "2", "--hardware-class", name, env=portable)
    assert joined.returncode == 0, joined.stderr
    first = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}").trials[0]
    assert first.user_attrs["platform"]["platform"] == "linux"
    # A study of its own on the portable path: its first trial is measured, never reused.
    assert sweep_cli("run", str(space), "--study", "tiny-portable", "--trials", "1", env=portable).returncode == 0
    study = optuna.load_study(study_name="tiny-portable", storage=f"sqlite:///{db}")
    assert study.user_attrs["hardware_class"]["fingerprint"]["measurement_path"] == "portable"
    (trial,) = study.trials
    assert trial.state.name == "COMPLETE", trial.user_attrs.get("fail_detail")
    import psutil

    assert trial.user_attrs["platform"]["platform"] == "portable"
    assert trial.user_attrs["platform"]["psutil"] == psutil.__version__
    assert trial.user_attrs["cpu_active_mean_core_pct"] > 0  # the portable path measured it
    assert math.isnan(trial.user_attrs.get("psi_cpu_some_active_peak_pct", math.nan))  # missing, not zero
    if Path("/proc/pressure/cpu").exists():  # where the kernel has PSI, the Linux path read it
        assert not math.isnan(first.user_attrs.get("psi_cpu_some_active_peak_pct", math.nan))


def test_an_unknown_measurement_path_is_bad_input(isolated: Path) -> None:
    _one_line(sweep_cli("models", "list", env={"SWEEP_PLATFORM": "macos"}), 2, "SWEEP_PLATFORM='macos'", "linux, portable")


@pytest.mark.slow
@pytest.mark.portable  # the CPUs a host has are read through psutil on the portable path
def test_sweep_trial_refuses_cpus_this_host_lacks(one_trial: Path, isolated: Path) -> None:
    out = _export(one_trial, isolated)
    record = json.loads(out.read_text())
    bad_cpu = max(allowed_cpus()) + 64
    record["config"]["cpus"] = [bad_cpu]
    out.write_text(json.dumps(record))
    _one_line(sweep_cli("trial", str(out)), 2, "config.cpus", f"CPU {bad_cpu} not available")


@pytest.mark.slow
def test_a_failed_trial_is_exit_3(one_trial: Path, isolated: Path, smollm2_path: Path) -> None:
    out = _export(one_trial, isolated)
    record = json.loads(out.read_text())
    cut = isolated / "cut.gguf"
    cut.write_bytes(smollm2_path.read_bytes()[:5_000_000])
    record["config"]["model_path"] = str(cut)
    out.write_text(json.dumps(record))
    proc = sweep_cli("trial", str(out), "--json", "--prompts", "1", "--idle", "0")
    _one_line(proc, 3, "trial failed: model_load_failed")
    assert json.loads(proc.stdout)["reason"] == "model_load_failed"


@pytest.mark.slow
def test_an_unwritable_output_is_exit_2(one_trial: Path, isolated: Path) -> None:
    shutil.copy(one_trial, isolated / "studies.db")
    target = isolated / "no-such-dir" / "e.json"
    _one_line(sweep_cli("export", "--study", "tiny", "-o", str(target), "--allow-infeasible"), 2, str(target),
              "No such file or directory")
    _one_line(sweep_cli("report", "--study", "tiny", "-o", str(target)), 2, str(target))


@pytest.mark.slow
def test_a_run_whose_every_trial_failed_is_exit_3_and_its_empty_front_too(isolated: Path, smollm2_path: Path) -> None:
    cut = isolated / "cut.gguf"
    cut.write_bytes(smollm2_path.read_bytes()[:5_000_000])
    body = TINY_SPACE.replace("models:\n  smollm2-135m: [Q4_1]", f"model_paths:\n  cut: {{path: {cut}}}\nmodels:\n  cut: [Q4_1]")
    proc = sweep_cli("run", str(write_space(isolated / "s.yaml", body)), "--trials", "2", "--quiet")
    assert proc.returncode == 3, proc.stderr
    assert "every trial this run measured failed (model_load_failed x2)" in proc.stderr.splitlines()[-1]
    _one_line(sweep_cli("pareto", "--study", "tiny"), 3, "no complete trial")
    as_json = sweep_cli("pareto", "--study", "tiny", "--json")
    assert as_json.returncode == 3 and json.loads(as_json.stdout)["front"] == []


def test_the_export_policy_follows_the_spaces_objectives() -> None:
    """Objectives latency first, correctness second: the feasible trial with the lowest latency wins,
    though another is more correct."""
    study = optuna.create_study(directions=["minimize", "maximize"])
    study.set_user_attr("objectives", ["latency_p95_s", "correctness"])
    study.set_user_attr("budgets", {"latency_p95_s": {"max": 3.0}})
    for latency, correctness in [(2.0, 0.9), (1.0, 0.5), (4.0, 1.0)]:
        study.add_trial(optuna.trial.create_trial(
            values=[latency, correctness],
            user_attrs={"latency_p95_s": latency, "correctness": correctness, "config": {},
                        "violations": [] if latency <= 3 else ["latency_p95_s"], "constraint_values": [latency - 3]}))
    assert choose(study)["number"] == 1


@pytest.mark.parametrize("url, needle", [
    ("postgresql+psycopg://sweep:hunter2@/sweep?host=/nonexistent", "cannot open the study storage"),
    ("foo://bar", "cannot open the study storage foo://bar"),
])
def test_an_unreachable_storage_is_one_line_without_its_password(url: str, needle: str) -> None:
    for args in (["pareto", "--study", "x"], ["fleet"], ["db", "upgrade"]):
        line = _one_line(sweep_cli(*args, "--storage", url), 2, needle)
        assert "hunter2" not in line
