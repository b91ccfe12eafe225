"""The capacity of a configuration: the highest arrival rate at which its budgets hold under open load.

``find_capacity`` runs the configuration as a trial with an open-loop phase (``sweep.trial.arrivals``)
at one rate after another, in the manner of guidellm's goodput sweep: from ``low`` events a minute,
doubling until a budget breaks (or ``high``), then bisecting (geometrically) between the last rate
that held and the first that did not.

The budgets that depend on the rate are the open-loop figures. A space's closed-loop budgets read
naturally on them: a latency p95 budget becomes a response p95 budget (the wait behind other
events included), the active CPU mean and p99 become the duty cycle's, the foreground's p95 ratio
becomes the one during the phase. A rate never holds when the trial fails or is ``saturated``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from sweep.correctness.tasks import Task
from sweep.records import Outcome, TrialConfig, TrialSettings

# A closed-loop budget -> the open-loop figure it becomes under arrivals.
OPEN_EQUIVALENT = {"latency_p95_s": "response_p95_s", "latency_p99_s": "response_p99_s",
                   "cpu_active_mean_share_pct": "cpu_mean_share_pct", "cpu_active_p99_share_pct": "cpu_p99_share_pct",
                   "fg_p95_ratio": "fg_open_p95_ratio"}


def open_budgets(budgets: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """The budgets a capacity is judged on: each closed-loop budget's open-loop equivalent, and any
    open-loop budget as given (it wins over a translated one)."""
    from sweep.measure.open_load import FIGURES

    def bound(v: dict[str, float]) -> dict[str, float]:
        return {b: float(v[b]) for b in ("max", "min") if b in v}

    out = {OPEN_EQUIVALENT[k]: bound(v) for k, v in budgets.items() if k in OPEN_EQUIVALENT}
    out.update({k: bound(v) for k, v in budgets.items() if k in FIGURES})
    return out


@dataclass
class Step:
    rate_per_min: float
    outcome: Outcome
    broken: list[str]  # the budgets this rate broke (with "saturated" and a failure named as such)

    @property
    def holds(self) -> bool:
        return not self.broken


@dataclass
class Capacity:
    budgets: dict[str, dict[str, float]]
    steps: list[Step] = field(default_factory=list)

    @property
    def best(self) -> Step | None:
        """The highest rate that held, or None."""
        held = [s for s in self.steps if s.holds]
        return max(held, key=lambda s: s.rate_per_min) if held else None


def judge(outcome: Outcome, budgets: dict[str, dict[str, float]]) -> list[str]:
    """What a rate broke: a failure, saturation, each budget over its bound or not measured."""
    if not outcome.ok:
        return [f"failed ({outcome.reason})"]
    f = outcome.figures
    broken = ["saturated"] if f.get("saturated") else []
    for name, bound in budgets.items():
        value = f.get(name, math.nan)
        if math.isnan(value) or ("max" in bound and value > bound["max"]) or ("min" in bound and value < bound["min"]):
            broken.append(name)
    return broken


def find_capacity(config: TrialConfig, settings: TrialSettings, tasks: list[Task],
                  budgets: dict[str, dict[str, float]], low: float = 1.0, high: float = 600.0, steps: int = 4,
                  on_step: Callable[[Step], None] | None = None, **run: Any) -> Capacity:
    """The configuration's capacity against ``budgets`` (open-loop figures, as ``open_budgets`` gives them).

    ``settings`` give the arrival process (``arrival``, ``burstiness``, ``arrival_seconds``,
    ``arrival_seed``; closed means poisson here); ``run`` goes to ``run_trial`` (``lock``, ``on_wait``).
    """
    from sweep.trial.runner import run_trial

    arrival = settings.arrival if settings.arrival in ("poisson", "constant") else "poisson"
    result = Capacity(budgets)

    def measure(rate: float) -> Step:
        s = replace(settings, arrival=arrival, rate_per_min=rate, early_abort=False)
        step = Step(rate, run_trial(config, s, tasks, **run), [])
        step.broken = judge(step.outcome, budgets)
        result.steps.append(step)
        if on_step:
            on_step(step)
        return step

    rate = low
    if not measure(rate).holds:
        return result
    good, bad = rate, math.inf
    while bad == math.inf and rate < high:
        rate = min(rate * 2, high)
        if measure(rate).holds:
            good = rate
        else:
            bad = rate
    for _ in range(steps if bad < math.inf else 0):
        mid = math.sqrt(good * bad)
        if measure(mid).holds:
            good = mid
        else:
            bad = mid
    return result


def png_curve(result: Capacity, path: Any, title: str) -> Any:
    """The capacity curve: response p95 and CPU mean against the rate, each budget dashed, the
    capacity marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted((s for s in result.steps if s.outcome.ok), key=lambda s: s.rate_per_min)
    rates = [s.rate_per_min for s in steps]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(rates, [s.outcome.figures.get("response_p95_s", math.nan) for s in steps], "o-", color="#1f618d",
            label="response p95 (s)")
    ax.set_xscale("log")
    ax.set_xlabel("arrival rate (events/min)")
    ax.set_ylabel("response p95 (s)", color="#1f618d")
    if "response_p95_s" in result.budgets and "max" in result.budgets["response_p95_s"]:
        ax.axhline(result.budgets["response_p95_s"]["max"], ls="--", color="#1f618d", lw=0.9)
    cpu = ax.twinx()
    cpu.plot(rates, [s.outcome.figures.get("cpu_mean_share_pct", math.nan) for s in steps], "s-", color="#922b21",
             label="CPU mean (% of machine)")
    cpu.set_ylabel("CPU mean over the phase (% of machine)", color="#922b21")
    if "cpu_mean_share_pct" in result.budgets and "max" in result.budgets["cpu_mean_share_pct"]:
        cpu.axhline(result.budgets["cpu_mean_share_pct"]["max"], ls="--", color="#922b21", lw=0.9)
    for s in steps:
        if not s.holds:
            ax.annotate("x", (s.rate_per_min, s.outcome.figures.get("response_p95_s", 0)), color="#c0392b",
                        ha="center", va="bottom")
    if result.best:
        ax.axvline(result.best.rate_per_min, color="#1e8449", lw=1.2)
        ax.text(result.best.rate_per_min, 0.98, f" capacity {result.best.rate_per_min:.3g}/min", color="#1e8449",
                va="top", fontsize=8, transform=ax.get_xaxis_transform())
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
