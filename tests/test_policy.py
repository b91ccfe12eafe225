"""The morning answer: correctness shown with its interval and items, a constant answer's row beside
the front, a policy whose floor (correctness by default) is never traded against the other budgets,
and importances drawn only where there are trials enough."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from sweep.measure.metrics import constraint_values
from sweep.results.front import choose, constant_reference, no_better_than, pareto_front, why_chosen

from conftest import TINY_SPACE, sweep_cli, write_space

BUDGETS = {"latency_p95_s": {"max": 2.5}, "latency_p99_p50_ratio": {"max": 2.0},
           "cpu_active_p99_share_pct": {"max": 50.0}, "correctness": {"min": 0.8}}
OBJECTIVES = ["correctness", "cpu_active_p99_share_pct", "latency_p95_s"]


def _study(trials: list[dict[str, float]], floor: list[str] | None = None) -> optuna.Study:
    """The demo's morning, in miniature: trials with figures, judged against the seed's budgets."""
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    study.set_user_attr("objectives", OBJECTIVES)
    study.set_user_attr("budgets", BUDGETS)
    study.set_user_attr("settings", {"prompts": 10})
    study.set_user_attr("task_set", "tasks-v2")
    if floor is not None:
        study.set_user_attr("floor", floor)
    for f in trials:
        cv = constraint_values(f, BUDGETS)
        study.add_trial(optuna.trial.create_trial(
            values=[f[m] for m in OBJECTIVES],
            user_attrs={**f, "config": {}, "constraint_values": cv,
                        "violations": [n for n, c in zip(BUDGETS, cv) if c > 0]}))
    return study


# Trial 0: SmolLM2 at chance, just over two budgets by a hair; trial 1: the 1.5B model, correct but slow.
SMOL = {"correctness": 0.50, "correctness_ci_low": 0.24, "correctness_ci_high": 0.76, "correctness_n": 10,
        "cpu_active_p99_share_pct": 50.02, "latency_p95_s": 0.4, "latency_p99_p50_ratio": 2.02}
QWEN = {"correctness": 0.80, "correctness_ci_low": 0.49, "correctness_ci_high": 0.94, "correctness_n": 10,
        "cpu_active_p99_share_pct": 98.0, "latency_p95_s": 3.17, "latency_p99_p50_ratio": 1.3}


def test_the_floor_is_never_traded_for_a_hair_of_the_other_budgets() -> None:
    study = _study([SMOL, QWEN])
    pick = choose(study, allow_infeasible=True)
    assert pick["number"] == 1  # a study without a recorded floor floors correctness where it is budgeted
    assert "meets the floor (correctness >= 0.8)" in why_chosen(study, pick)
    # Without a floor the old policy sums relative overshoots and picks the model at chance.
    assert choose(_study([SMOL, QWEN], floor=[]), allow_infeasible=True)["number"] == 0


def test_among_trials_that_all_break_the_floor_the_closest_to_it_comes_first() -> None:
    weak = {**QWEN, "correctness": 0.70}
    study = _study([SMOL, weak, {**SMOL, "correctness": 0.65, "latency_p95_s": 9.0}])
    pick = choose(study, allow_infeasible=True)
    assert pick["number"] == 1
    assert why_chosen(study, pick).startswith("no trial meets the floor (correctness >= 0.8); it comes closest")
    feasible = _study([SMOL, {**QWEN, "latency_p95_s": 2.0, "cpu_active_p99_share_pct": 45.0}])
    assert why_chosen(feasible, choose(feasible)).startswith("it meets every budget")


def test_the_front_shows_each_correctness_with_its_interval_beside_a_constant_answer() -> None:
    from sweep.results.display import front_table

    from sweep.correctness.tasks import best_constants, load_tasks, stratified_subset

    study = _study([SMOL, QWEN])
    constant = constant_reference(study)
    same_items = best_constants(stratified_subset(load_tasks("tasks-v2"), 10))
    assert constant == {10: sum(sum(s) for _, s in same_items.values()) / 10}
    front, _ = pareto_front(study)
    table = front_table(front, OBJECTIVES, constant)
    assert "0.50 [0.24, 0.76] n=10" in table and "0.80 [0.49, 0.94] n=10" in table
    assert table.splitlines()[-1].startswith("const") and f"{constant[10]:.2f} n=10" in table
    # On 10 items a constant chosen knowing the answers scores 0.70: both intervals reach down to it.
    assert all(no_better_than(r, constant) for r in front)
    assert table.count("no better than a constant answer") == len(front)
    assert not no_better_than({"figures": {**QWEN, "correctness_ci_low": 0.75}}, constant)


def test_a_floor_names_a_budget_of_the_space(tmp_path: Path) -> None:
    body = TINY_SPACE + "policy:\n  floor: [fg_cpu_slowdown]\n"
    proc = sweep_cli("run", str(write_space(tmp_path / "s.yaml", body)))
    assert proc.returncode == 2 and "policy.floor[0]" in proc.stderr and "'fg_cpu_slowdown'" in proc.stderr


def test_importances_wait_for_enough_trials_and_then_show_their_spread() -> None:
    from sweep.results.report import IMPORTANCE_MIN_TRIALS, _importance_charts

    def study_of(n: int) -> optuna.Study:
        study = optuna.create_study(directions=["maximize"])
        study.set_user_attr("objectives", ["correctness"])
        study.set_user_attr("budgets", {})
        study.set_user_attr("settings", {})
        dist = {"model": optuna.distributions.CategoricalDistribution(["a", "b"]),
                "n_threads": optuna.distributions.IntDistribution(1, 4)}
        for i in range(n):
            model, threads = "ab"[i % 2], 1 + i % 4
            study.add_trial(optuna.trial.create_trial(params={"model": model, "n_threads": threads}, distributions=dist,
                                                      values=[0.8 if model == "b" else 0.2 + 0.01 * (i % 3)]))
        return study

    few = _importance_charts(study_of(8))
    assert isinstance(few, str) and "not yet meaningful: 8 complete trials" in few
    (chart,) = _importance_charts(study_of(IMPORTANCE_MIN_TRIALS + 2))
    bar = chart.data[0]
    assert list(bar.y)[-1] == "model"  # the model decides correctness; the thread count does not
    assert bar.error_x.array is not None and len(bar.error_x.array) == 2


@pytest.mark.parametrize("space", ["demo", "invisible", "endpoint-security"])
def test_the_shipped_spaces_floor_correctness(space: str) -> None:
    import yaml

    from conftest import REPO

    spec = yaml.safe_load((REPO / "search_spaces" / f"{space}.yaml").read_text())
    assert spec["policy"]["floor"] == ["correctness"] and "correctness" in spec["constraints"]
