"""Study-level behaviour: early abort, duplicate configurations, constraints."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from sweep.measure.metrics import provably_over
from sweep.results.front import MISSING_FIGURE, constraint_values

from conftest import TINY_SPACE, sweep_cli, write_space

# The sweeps here are about what becomes of a measurement, not the model: fake workers (sweep.testing).
pytestmark = pytest.mark.usefixtures("fake_worker")

ONE_CONFIG = TINY_SPACE.replace('''params:
  n_threads: {low: 1, high: all}
  n_batch: [64, 512]
  nice: [0, 19]
''', "")


def test_provably_over_needs_enough_slow_prompts() -> None:
    # 9 prompts: the p95 sits between the 8th and 9th sorted values, so 2 slow ones decide it.
    assert not provably_over([3.0], 9, 2.5)
    assert provably_over([3.0, 0.1, 3.0], 9, 2.5)
    # 24 prompts: 3 are needed.
    assert not provably_over([3.0, 3.0], 24, 2.5)
    assert provably_over([3.0, 3.0, 3.0], 24, 2.5)


def test_constraint_values_follow_optunas_sign_convention() -> None:
    budgets = {"latency_p95_s": {"max": 2.5}, "correctness": {"min": 0.8}, "rss_peak_gb": {"max": 6}}
    assert constraint_values({"latency_p95_s": 2.0, "correctness": 0.9}, budgets) == pytest.approx(
        [-0.5, -0.1, MISSING_FIGURE])


def user_attrs(db: Path, number: int) -> dict:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT a.key, a.value_json FROM trials t JOIN trial_user_attributes a "
                            "ON a.trial_id = t.trial_id WHERE t.number = ?", (number,)).fetchall()
    return {k: json.loads(v) for k, v in rows}


@pytest.mark.slow
def test_early_abort_records_a_complete_infeasible_trial(isolated: Path) -> None:
    body = ONE_CONFIG.replace("prompts: 3", "prompts: 6") + "constraints:\n  latency_p95_s: {max: 0.001}\n"
    proc = sweep_cli("run", str(write_space(isolated / "s.yaml", body)), "--trials", "1")
    assert proc.returncode == 0, proc.stderr
    assert "stopped early" in proc.stdout
    a = user_attrs(isolated / "studies.db", 0)
    assert a["early_abort"] == 1
    assert 2 <= a["n_answered"] < 6  # 2 slow prompts prove a p95 of 6 over budget (no answer takes 1 ms)
    assert a["latency_p95_s"] > 0.001 and a["violations"] == ["latency_p95_s"]


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["reuse", "repeat"])
def test_duplicate_configuration_is_never_silently_measured_twice(policy: str, isolated: Path) -> None:
    body = ONE_CONFIG.replace("  noise_retries: 0\n", f"  noise_retries: 0\n  duplicates: {policy}\n")
    proc = sweep_cli("run", str(write_space(isolated / "s.yaml", body)), "--trials", "2")
    assert proc.returncode == 0, proc.stderr
    first, second = user_attrs(isolated / "studies.db", 0), user_attrs(isolated / "studies.db", 1)
    assert first["config"] == second["config"]
    if policy == "reuse":
        assert second["reused_from"] == 0 and "repeat_of" not in second
        assert second["latency_p95_s"] == first["latency_p95_s"]
        assert "wall_seconds" not in second  # nothing ran
    else:
        assert second["repeat_of"] == 0 and "reused_from" not in second
        assert second["wall_seconds"] > 0


@pytest.mark.slow
def test_a_configuration_measured_on_the_other_path_is_measured_again_not_reused(isolated: Path) -> None:
    """Two measurement paths joined in one study (``--hardware-class``): the one configuration is
    measured once on each, and reused only from a trial of its own path, whose path it names."""
    import optuna

    space = write_space(isolated / "s.yaml", ONE_CONFIG.replace("  noise_retries: 0\n",
                                                               "  noise_retries: 0\n  duplicates: reuse\n"))
    linux, portable = {"SWEEP_PLATFORM": "linux"}, {"SWEEP_PLATFORM": "portable"}
    assert sweep_cli("run", str(space), "--trials", "1", env=linux).returncode == 0
    storage = f"sqlite:///{isolated / 'studies.db'}"
    name = optuna.load_study(study_name="tiny", storage=storage).user_attrs["hardware_class"]["name"]
    proc = sweep_cli("run", str(space), "--trials", "3", "--hardware-class", name, env=portable)
    assert proc.returncode == 0, proc.stderr
    trials = optuna.load_study(study_name="tiny", storage=storage).trials
    assert [t.user_attrs["platform"]["platform"] for t in trials] == ["linux", "portable", "portable"]
    assert trials[0].user_attrs["config"] == trials[1].user_attrs["config"] == trials[2].user_attrs["config"]
    assert "reused_from" not in trials[1].user_attrs and trials[1].user_attrs["wall_seconds"] > 0  # measured
    assert trials[2].user_attrs["reused_from"] == 1  # from the portable trial, not the Linux one
