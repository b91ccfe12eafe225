"""Verification: the interval, the pooling, the front moving on verified figures, and ``sweep verify``
end to end on a real SmolLM2 study."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import optuna
import pytest

from sweep.results.front import choose, front_moves, pareto_front
from sweep.verify import correctness_summary, wilson

from conftest import TINY_SPACE, database_away, sweep_cli, write_space

BUDGETS = {"cpu_active_p99_share_pct": {"max": 50.0}, "correctness": {"min": 0.5}}
OBJECTIVES = ["correctness", "cpu_active_p99_share_pct"]


def test_wilson_interval_hand_worked() -> None:
    assert wilson(0.5, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    # No item right out of 12 still leaves room for up to ~24%: never a [0, 0] interval.
    assert wilson(0.0, 12) == pytest.approx((0.0, 0.2425), abs=1e-4)
    assert wilson(1.0, 12) == pytest.approx((0.7575, 1.0), abs=1e-4)


def test_correctness_summary_by_kind() -> None:
    scores = {"a": ("verdict", 1.0), "b": ("verdict", 0.0), "c": ("mcq", 0.5), "d": ("mcq", 0.5)}
    s = correctness_summary(scores)
    assert s["all"]["mean"] == 0.5 and s["all"]["n"] == 4
    assert s["by_kind"]["verdict"]["mean"] == s["by_kind"]["mcq"]["mean"] == 0.5
    assert s["by_kind"]["verdict"]["ci"] == pytest.approx(list(wilson(0.5, 2)))  # scored 0 or 1: Wilson's
    lo, hi = s["all"]["ci"]  # partial credit: a bootstrap over the items, seeded
    assert 0.0 <= lo < 0.5 < hi <= 1.0 and s["all"]["ci"] == correctness_summary(scores)["all"]["ci"]


def test_a_mean_of_partial_credit_gets_a_bootstrap_interval_that_narrows_with_more_items() -> None:
    from sweep.measure.metrics import score_interval

    few, many = [0.5, 1.0, 0.0, 0.5] * 3, [0.5, 1.0, 0.0, 0.5] * 60
    assert score_interval(few)[1] - score_interval(few)[0] > score_interval(many)[1] - score_interval(many)[0]
    assert score_interval(many)[0] < 0.5 < score_interval(many)[1]
    assert score_interval([1.0, 0.0] * 5) == wilson(0.5, 10)


def _synthetic_study() -> optuna.Study:
    """Three trials on two objectives; trial 1 dominates trial 2; trial 0 trades CPU for correctness."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("objectives", OBJECTIVES)
    study.set_user_attr("budgets", BUDGETS)
    study.set_user_attr("settings", {"prompts": 10})
    for correctness, cpu in [(0.9, 45.0), (0.7, 30.0), (0.6, 40.0)]:
        figures = {"correctness": correctness, "cpu_active_p99_share_pct": cpu}
        study.add_trial(optuna.trial.create_trial(
            values=[correctness, cpu], user_attrs={**figures, "config": {}, "violations": [],
                                                   "constraint_values": [cpu - 50, 0.5 - correctness]}))
    return study


def test_verified_figures_move_a_trial_off_the_front_and_change_the_pick() -> None:
    study = _synthetic_study()
    assert [r["number"] for r in pareto_front(study)[0]] == [0, 1]
    assert choose(study)["number"] == 0
    # On the whole set trial 0 is far less correct than the subset said.
    study.set_user_attr("verified:0", {"n_items": 82, "repeats": 2, "correctness_ci": [0.45, 0.66], "failed": None,
                                       "detail": "", "at": "now", "by_kind": {},
                                       "figures": {"correctness": 0.55, "cpu_active_p99_share_pct": 46.0}})
    assert [r["number"] for r in pareto_front(study)[0]] == [1]
    assert [r["number"] for r in pareto_front(study, prefer_verified=False)[0]] == [0, 1]
    assert front_moves(study) == ["trial 0 leaves the front: on verified figures it is dominated by trial 1, 2"]
    assert choose(study)["number"] == 1


def test_a_failed_verification_is_never_feasible() -> None:
    study = _synthetic_study()
    study.set_user_attr("verified:1", {"n_items": 82, "repeats": 2, "correctness_ci": None, "failed": "crashed",
                                       "detail": "SIGSEGV", "at": "now", "by_kind": {}, "figures": {}})
    assert [r["number"] for r in pareto_front(study)[0]] == [0, 2]
    assert front_moves(study) == ["trial 1 leaves the front: its verification failed (crashed)",
                                  "trial 2 joins the front (not verified): on the verified figures no trial dominates it any more"]
    assert choose(study)["number"] == 0


def test_a_reused_copy_of_a_trial_whose_verification_failed_is_never_picked() -> None:
    study = _synthetic_study()
    best = study.get_trials()[0]  # the pick, and then reused by a later trial of the same configuration
    study.add_trial(optuna.trial.create_trial(values=list(best.values),
                                              user_attrs={**best.user_attrs, "reused_from": 0}))
    study.set_user_attr("verified:0", {"n_items": 82, "repeats": 2, "correctness_ci": None, "failed": "crashed",
                                       "detail": "SIGSEGV", "at": "now", "by_kind": {}, "figures": {}})
    assert choose(study)["number"] == 1  # neither trial 0 nor its copy, trial 3


SMALL_TASKS = 10


@pytest.fixture(scope="module")
def verified(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, smollm2_path: Path) -> dict:
    """A real 2-trial SmolLM2 study on a copy of the model, then ``sweep verify`` on 10 tasks x 2 runs."""
    work = tmp_path_factory.mktemp("verify")
    model = work / "copy.gguf"
    shutil.copy(smollm2_path, model)
    body = TINY_SPACE.replace("models:\n  smollm2-135m: [Q4_1]",
                              f"model_paths:\n  copy: {{path: {model}}}\nmodels:\n  copy: [Q4_1]")
    body = body.replace("nice: [0, 19]", "nice: [0, 19]\n  output: [grammar]")
    space = write_space(work / "s.yaml", body)
    tasks = work / "tasks.jsonl"
    bundled = (Path(__file__).parent.parent / "sweep" / "data" / "tasks-v1.jsonl").read_text().splitlines()
    from sweep.correctness.tasks import load_tasks, stratified_subset

    keep = {t.id for t in stratified_subset(load_tasks(), SMALL_TASKS)}
    tasks.write_text("\n".join(line for line in bundled if json.loads(line)["id"] in keep) + "\n")
    env = {"SWEEP_STORAGE": f"sqlite:///{work / 'studies.db'}"}
    run = sweep_cli("run", str(space), "--study", "v", "--trials", "2", "--quiet", env=env)
    assert run.returncode == 0, run.stderr
    proc = sweep_cli("verify", "--study", "v", "--tasks", str(tasks), "--repeats", "2", env=env)
    return {"work": work, "env": env, "proc": proc, "tasks": tasks, "model": model, "db": work / "studies.db"}


def _study(db: Path) -> optuna.Study:
    return optuna.load_study(study_name="v", storage=f"sqlite:///{db}")


@pytest.mark.slow
def test_verify_stores_pooled_figures_with_an_interval(verified: dict) -> None:
    proc = verified["proc"]
    assert proc.returncode == 0, proc.stderr
    assert f"{SMALL_TASKS} x 2" in proc.stdout and "run 2/2" in proc.stderr
    study = _study(verified["db"])
    records = {k: v for k, v in study.user_attrs.items() if k.startswith("verified:")}
    assert records, proc.stdout
    note = "".join(str(v) for v in study._storage.get_study_system_attrs(study._study_id).values())
    assert "Verified on the whole task set" in note  # optuna-dashboard's note on the study
    from sweep.results.front import trial_by_number
    from sweep.study.storage import VERIFICATION, SeriesStore

    store = SeriesStore(f"sqlite:///{verified['db']}", write=False)
    for key, record in records.items():
        assert record["failed"] is None and (record["n_items"], record["repeats"]) == (SMALL_TASKS, 2)
        runs = store.get(trial_by_number(study, int(key.split(":")[1]))._trial_id, VERIFICATION)["runs"]
        assert len(runs) == 2 and all(len(r["answers"]) == SMALL_TASKS for r in runs)
        # Correctness: each item's score averaged over the runs, then over the items.
        per_item = {a["id"]: 0.0 for a in runs[0]["answers"]}
        for r in runs:
            for a in r["answers"]:
                per_item[a["id"]] += a["score"] / 2
        mean = sum(per_item.values()) / SMALL_TASKS
        assert record["figures"]["correctness"] == pytest.approx(mean)
        # The Wilson interval of that mean over the items, written out here rather than by the
        # function under test (whose maths test_wilson_interval_hand_worked checks by hand).
        z, n = 1.959964, SMALL_TASKS
        centre = (mean + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(mean * (1 - mean) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        assert record["correctness_ci"] == pytest.approx([max(0.0, centre - half), min(1.0, centre + half)])
        # Latency: the percentile over every answer of both runs, not a mean of the runs' own (numpy's).
        latencies = [a["latency_s"] for r in runs for a in r["answers"]]
        assert record["figures"]["latency_p95_s"] == pytest.approx(float(np.percentile(latencies, 95)))
        assert record["figures"]["n_windows_active"] == sum(r["figures"]["n_windows_active"] for r in runs)
        assert set(record["by_kind"]) == {"attack", "iocs", "mcq", "severity", "verdict"}


@pytest.mark.slow
def test_export_prefers_verified_figures(verified: dict) -> None:
    out = verified["work"] / "pick.json"
    proc = sweep_cli("export", "--study", "v", "-o", str(out), "--allow-infeasible", env=verified["env"])
    assert proc.returncode == 0, proc.stderr
    record = json.loads(out.read_text())
    verification = _study(verified["db"]).user_attrs.get(f"verified:{record['provenance']['trial']}")
    assert verification is not None  # the pick comes from the front, and the front was verified
    assert record["figures_from"].startswith(f"verification: {SMALL_TASKS} tasks x 2 runs")
    assert record["metrics"]["correctness"] == verification["figures"]["correctness"]
    assert record["budgets"]["correctness"]["value"] == verification["figures"]["correctness"]
    assert record["prompt_strategy"]["output"] == "grammar" and "iocs" in record["prompt_strategy"]["grammars"]


@pytest.mark.slow
def test_verify_again_skips_what_is_verified_and_refuses_bad_input(verified: dict) -> None:
    env = verified["env"]
    again = sweep_cli("verify", "--study", "v", "--tasks", str(verified["tasks"]), "--repeats", "2", env=env)
    assert again.returncode == 0 and "already verified" in again.stderr and "run 1/2" not in again.stderr
    before = verified["db"].read_bytes()
    bad = sweep_cli("verify", "--study", "v", "--trial", "99", env=env)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: study 'v' has no complete trial 99"
    verified["model"].unlink()
    gone = sweep_cli("verify", "--study", "v", "--tasks", str(verified["tasks"]), "--again", env=env)
    assert gone.returncode == 2 and "no longer exists; nothing was verified" in gone.stderr
    assert len(gone.stderr.strip().splitlines()) == 1
    assert verified["db"].read_bytes() == before


@pytest.mark.slow
def test_verify_without_the_lock_does_not_wait_for_it(smollm2_path: Path) -> None:
    import threading

    from sweep.correctness.tasks import load_tasks, stratified_subset
    from sweep.hostlock import measurement_lock
    from sweep.records import TrialConfig, TrialSettings
    from sweep.verify import verify_trial

    config = TrialConfig(model="smollm2-135m", quant="Q4_1", model_path=str(smollm2_path), chat_format=None,
                         n_threads=1, n_threads_batch=1, n_batch=512, n_ubatch=512, n_ctx=512, max_tokens=8)
    settings = TrialSettings(prompts=2, idle_seconds=0.2, baseline_seconds=0.1, noise_retries=0)
    done: list = []
    with measurement_lock("a test that holds the lock"):
        run = threading.Thread(target=lambda: done.append(verify_trial(config, settings, stratified_subset(
            load_tasks(), 2), 1, lock=False)), daemon=True)
        run.start()
        run.join(timeout=120)  # a bound on the test: before the fix it waited for the lock held here
    assert done, "verify_trial(lock=False) waited for the measurement lock"
    record, runs = done[0]
    assert record["measured_without_lock"] and runs[0].ok


def _swept_study(url: str, model: Path) -> optuna.Study:
    """A sweep study of one complete trial, as `sweep run` leaves one (nothing measured here)."""
    from optuna.distributions import IntDistribution

    from sweep.records import TrialConfig
    from sweep.study.storage import SeriesStore, open_optuna_storage

    SeriesStore(url)
    study = optuna.create_study(study_name="v", storage=open_optuna_storage(url), directions=["maximize", "minimize"])
    for key, value in {"objectives": OBJECTIVES, "budgets": BUDGETS, "settings": {"prompts": 10}}.items():
        study.set_user_attr(key, value)
    config = TrialConfig(model="m", quant="Q4_1", model_path=str(model), chat_format=None, n_threads=1,
                         n_threads_batch=1, n_batch=64, n_ubatch=64, n_ctx=512)
    study.add_trial(optuna.trial.create_trial(
        params={"n_threads": 1}, distributions={"n_threads": IntDistribution(1, 8)}, values=[0.9, 45.0],
        user_attrs={"correctness": 0.9, "cpu_active_p99_share_pct": 45.0, "config": config.to_dict(),
                    "violations": [], "constraint_values": [-5.0, -0.4]}))
    return study


@pytest.mark.parametrize("replayer", ["sweep db upgrade", "sweep verify", "sweep run"])
def test_a_verification_the_database_cannot_take_is_kept_in_the_spool_and_recorded_once(
        replayer: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The database goes away while a trial is verified (an hour of runs): the verification is kept in
    the spool, `sweep verify` stops as `sweep run` does (exit 5, the spool file named), and the next
    replay records it once, checked against its database, study and trial like a trial's record."""
    from sweep import verify
    from sweep.correctness.tasks import load_tasks, stratified_subset
    from sweep.records import Outcome
    from sweep.study import spool
    from sweep.study.storage import VERIFICATION, SeriesStore

    monkeypatch.setenv("SWEEP_SQLITE_BUSY_S", "0.2")
    monkeypatch.setenv("SWEEP_DB_RETRY_S", "1")
    url = os.environ["SWEEP_STORAGE"]
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    study = _swept_study(url, model)
    tasks = stratified_subset(load_tasks(), SMALL_TASKS)
    record = {"n_items": SMALL_TASKS, "repeats": 2, "failed": None, "detail": "", "at": "2026-01-01T00:00:00+00:00",
              "figures": {"correctness": 0.8, "cpu_active_p99_share_pct": 40.0}, "correctness_ci": [0.5, 0.95],
              "by_kind": {}}
    runs = [Outcome(ok=True, figures={"correctness": 0.8}, answers=[{"id": "a", "score": 0.8}])] * 2
    measured: list[int] = []

    with contextlib.ExitStack() as away:
        def verified_while_the_database_went_away(*args: object, **kwargs: object) -> tuple[dict, list[Outcome]]:
            assert not measured, "measured again: the spooled verification was not recorded first"
            measured.append(1)
            away.enter_context(database_away(url))
            return dict(record), runs

        monkeypatch.setattr(verify, "verify_trial", verified_while_the_database_went_away)
        with pytest.raises(spool.DatabaseUnavailable) as raised:
            verify.verify_study(study, url, tasks, repeats=2, trials=[0], task_set="mine")
    (path,) = sorted(Path(os.environ["SWEEP_SPOOL_DIR"]).glob("*.json"))
    message = str(raised.value)
    assert raised.value.exit_code == 5 and str(path) in message and "next sweep run records it" in message
    assert "verified:0" not in study.user_attrs
    if replayer == "sweep db upgrade":
        proc = sweep_cli("db", "upgrade")
        assert proc.returncode == 0 and "recorded 1 spooled measurement" in proc.stdout, proc.stderr
    elif replayer == "sweep verify":  # recorded first, so the trial counts as verified: nothing is run
        assert verify.verify_study(study, url, tasks, repeats=2, trials=[0]) == ([], [0])
    else:  # what run_study replays before it measures
        assert spool.replay(study, SeriesStore(url)) == 1
    assert not path.exists() and spool.replay(study, SeriesStore(url)) == 0
    again = optuna.load_study(study_name="v", storage=url)
    assert again.user_attrs["verified:0"] == {**record, "task_set": "mine"}
    stored = SeriesStore(url).get(again.trials[0]._trial_id, VERIFICATION)
    assert stored == {"runs": [{"ok": True, "reason": None, "figures": {"correctness": 0.8},
                                "answers": [{"id": "a", "score": 0.8}]}] * 2}
    note = "".join(str(v) for v in again._storage.get_study_system_attrs(again._study_id).values())
    assert "Verified on the whole task set" in note  # optuna-dashboard's note, written with it
