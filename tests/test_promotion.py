"""Promotion (sweep.study.promotion): the best of each rung measured again on more items, inside the
run, claimed once across orchestrators; every reader takes a configuration's largest sample."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sweep.measure.metrics import constraint_values
from sweep.results.front import choose, pareto_front, rows
from sweep.study.promotion import due, rungs
from sweep.study.writer import finished_count

from conftest import TINY_SPACE, sweep_cli, write_space

BUDGETS = {"latency_p95_s": {"max": 2.5}, "correctness": {"min": 0.8}}
OBJECTIVES = ["correctness", "latency_p95_s"]
DIST = {"shots": optuna.distributions.CategoricalDistribution([0, 1, 2, 3, 4, 5, 6, 7])}


def _figs(correctness: float, latency: float, n: int = 10, low: float | None = None,
          high: float | None = None) -> dict[str, float]:
    return {"correctness": correctness, "latency_p95_s": latency, "correctness_n": n,
            "correctness_ci_low": correctness - 0.3 if low is None else low,
            "correctness_ci_high": min(1.0, correctness + 0.2) if high is None else high}


def _study() -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("objectives", OBJECTIVES)
    study.set_user_attr("budgets", BUDGETS)
    study.set_user_attr("settings", {"prompts": 10})
    study.set_user_attr("task_set", "tasks-v2")
    return study


def _add(study: optuna.Study, shots: int, f: dict[str, float] | None, state: TrialState = TrialState.COMPLETE,
         **attrs: object) -> int:
    """A trial of configuration ``shots``; with ``promotes`` etc. in ``attrs``, a promotion of it."""
    user = {"config": {"shots": shots}, **attrs}
    values = None
    if f is not None and state == TrialState.COMPLETE:
        cv = constraint_values(f, BUDGETS)
        user.update(f, constraint_values=cv, violations=[n for n, c in zip(BUDGETS, cv) if c > 0])
        values = [f[m] for m in OBJECTIVES]
    study.add_trial(optuna.trial.create_trial(state=state, values=values, params={"shots": shots},
                                              distributions=DIST, user_attrs=user))
    return study.trials[-1].number


def test_rungs_are_cut_to_the_task_set_and_keep_rising() -> None:
    assert rungs([10, 40, 246], 246) == [10, 40, 246]
    assert rungs([10, 40, 246], 30) == [10, 30]
    assert rungs([10, 40, 246], 8) == [8]


def test_every_reader_takes_a_configurations_largest_sample_and_a_promotion_is_no_candidate() -> None:
    study = _study()
    lucky = _add(study, 0, _figs(0.9, 1.0))  # 9 of 10: looks feasible on its first items
    steady = _add(study, 1, _figs(0.8, 2.0))
    _add(study, 0, _figs(0.6, 1.1, n=40), promotes=lucky, rung=1, items=40)  # on 40 items it is not
    _add(study, 1, _figs(0.85, 2.1, n=40), promotes=steady, rung=1, items=40)
    by_number = {r["number"]: r for r in rows(study)}
    assert by_number[lucky]["figures"]["correctness"] == 0.6 and by_number[lucky]["figures"]["correctness_n"] == 40
    assert by_number[lucky]["sweep_figures"]["correctness"] == 0.9 and not by_number[lucky]["feasible"]
    assert by_number[lucky]["promoted"] == {"trial": 2, "rung": 1, "n_items": 40, "failed": None}
    front, feasible = pareto_front(study)
    assert feasible and [r["number"] for r in front] == [steady]  # promotion rows are never on the front
    assert choose(study)["number"] == steady
    assert finished_count(study) == 2  # promotions do not count towards --trials


def test_a_promotion_that_fails_on_more_items_takes_its_configuration_off_the_front() -> None:
    study = _study()
    fast = _add(study, 0, _figs(0.9, 1.0))
    other = _add(study, 1, _figs(0.8, 2.0))
    _add(study, 0, None, TrialState.FAIL, promotes=fast, rung=1, items=40, fail_reason="timeout")
    r = {r["number"]: r for r in rows(study)}[fast]
    assert not r["feasible"] and "promotion (timeout)" in r["violations"]
    assert [r["number"] for r in pareto_front(study)[0]] == [other]
    # A promotion the orchestrator lost measured nothing of the configuration: it is ignored, and due again.
    study2 = _study()
    first = _add(study2, 0, _figs(0.9, 1.0))
    _add(study2, 1, _figs(0.5, 2.0))
    _add(study2, 2, _figs(0.4, 2.0))
    _add(study2, 0, None, TrialState.FAIL, promotes=first, rung=1, items=40, fail_reason="orchestrator_lost")
    assert {r["number"]: r for r in rows(study2)}[first]["promoted"] is None
    assert due(study2, [10, 40], 0.34, finishing=False) == (first, 1)


def test_the_best_share_of_a_rung_is_due_once_and_the_pick_before_the_run_ends() -> None:
    study = _study()
    # Six configurations: two whose intervals reach the floor (0.8), four that cannot.
    a = _add(study, 0, _figs(0.6, 0.5, high=0.85))
    b = _add(study, 1, _figs(0.7, 3.0, high=0.9))
    for shots, c in ((2, 0.5), (3, 0.4), (4, 0.3), (5, 0.2)):
        _add(study, shots, _figs(c, 0.1, high=c + 0.15))  # faster, but their intervals miss the floor
    # floor(6 x 0.34) = 2: both non-dominated, b first by the policy's order (correctness first)
    assert due(study, [10, 40], 0.34, finishing=False) == (b, 1)
    _add(study, 1, None, TrialState.RUNNING, promotes=b, rung=1, items=40)  # claimed by an orchestrator
    assert due(study, [10, 40], 0.34, finishing=False) == (a, 1)
    _add(study, 0, _figs(0.72, 3.1, n=40), promotes=a, rung=1, items=40)
    assert due(study, [10, 40], 0.34, finishing=False) is None
    # With a third rung, a rung of one member promotes nobody (floor(1 x 0.34) = 0)...
    assert due(study, [10, 40, 246], 0.34, finishing=False) is None
    # ... but once the run has its trials, the policy's pick is promoted while it rests on its first items.
    study2 = _study()
    pick = _add(study2, 0, _figs(0.7, 1.0))
    _add(study2, 1, _figs(0.5, 1.0))
    assert due(study2, [10, 40], 0.34, finishing=False) is None
    assert due(study2, [10, 40], 0.34, finishing=True) == (pick, 1)
    # A pick on 40 items, lucky, beside a rival on all 246: the pick goes as deep before the run ends.
    study3 = _study()
    lucky, steady = _add(study3, 0, _figs(0.6, 1.0)), _add(study3, 1, _figs(0.7, 1.0))
    _add(study3, 0, _figs(0.57, 1.0, n=40), promotes=lucky, rung=1, items=40)
    _add(study3, 1, _figs(0.62, 1.0, n=40), promotes=steady, rung=1, items=40)
    _add(study3, 1, _figs(0.52, 1.0, n=246), promotes=steady, rung=2, items=246)
    assert choose(study3, allow_infeasible=True)["number"] == lucky
    assert due(study3, [10, 40, 246], 0.34, finishing=False) is None
    assert due(study3, [10, 40, 246], 0.34, finishing=True) == (lucky, 2)


@pytest.mark.parametrize("block, wrong", [("promote:\n  prompts: [5, 40]\n", "the first rung (5) must be"),
                                          ("promote:\n  prompts: [3, 3]\n", "each larger than the one before"),
                                          ("promote:\n  prompts: [3, 9]\n  keep: 1.5\n", "keep")])
def test_a_bad_promote_block_is_refused_with_its_key(tmp_path: Path, block: str, wrong: str) -> None:
    proc = sweep_cli("run", str(write_space(tmp_path / "s.yaml", TINY_SPACE + block)), "--trials", "1",
                     env={"SWEEP_STORAGE": f"sqlite:///{tmp_path / 'db.sqlite'}"})
    assert proc.returncode == 2 and "promote" in proc.stderr and wrong in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "db.sqlite").exists() or not sqlite3.connect(tmp_path / "db.sqlite").execute(
        "select name from sqlite_master where name = 'trials'").fetchall()


PROMOTING = TINY_SPACE.replace("  nice: [0, 19]\n", "  nice: [0, 19]\n  shots: [0, 3]\n") + \
    "promote:\n  prompts: [3, 6]\n  keep: 0.5\n"


@pytest.mark.slow  # two real orchestrators, each with its fake workers
def test_two_orchestrators_promote_each_configuration_once_and_record_it(tmp_path: Path) -> None:
    """Two real orchestrators on one study: each promotion is made once, measured on its rung's items
    and recorded; the run holds its trials plus the promotions, and the pick rests on the larger sample.
    The claims and the records are the point, not the model: the trials run on the fake backend
    (sweep.testing), through the real runner, monitor, orchestrator, spool and database."""
    space = write_space(tmp_path / "s.yaml", PROMOTING)
    env = {**os.environ, "SWEEP_STORAGE": f"sqlite:///{tmp_path / 'db.sqlite'}", "SWEEP_SPOOL_DIR": str(tmp_path / "spool"),
           "SWEEP_TEST_WORKER": "fake"}
    first = sweep_cli("run", str(space), "--study", "p", "--trials", "1", "--quiet", env=env)
    assert first.returncode == 0, first.stderr  # the study exists before two orchestrators race on it
    procs = [subprocess.Popen([sys.executable, "-m", "sweep", "run", str(space), "--study", "p", "--trials", "5",
                               "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err
    study = optuna.load_study(study_name="p", storage=env["SWEEP_STORAGE"])
    trials = study.get_trials(deepcopy=False)
    promotions = [t for t in trials if "promotes" in t.user_attrs]
    claims = [(t.user_attrs["promotes"], t.user_attrs["rung"]) for t in promotions]
    assert promotions and len(claims) == len(set(claims))  # no configuration promoted twice to a rung
    assert all(t.state == TrialState.COMPLETE and t.user_attrs["correctness_n"] == 6 for t in promotions)
    assert finished_count(study) == 5 and not [t for t in trials if t.state == TrialState.RUNNING]
    pick = choose(study, allow_infeasible=True)
    assert pick["promoted"] is not None and pick["figures"]["correctness_n"] == 6
    assert not list((tmp_path / "spool").glob("**/*.json"))  # every record reached the database
