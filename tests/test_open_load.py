"""Open load (sweep.trial.arrivals, sweep.measure.open_load, sweep capacity): events at a rate,
answered in arrival order; the physics on SmolLM2, not fixed numbers."""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path

import pytest

from sweep.correctness.tasks import load_tasks, stratified_subset
from sweep.measure.open_load import open_figures
from sweep.records import TrialSettings
from sweep.trial.arrivals import TraceError, schedule

from conftest import TINY_SPACE, sweep_cli, write_space

IDS = ["a01", "c01", "i01", "v01"]


def test_a_schedule_is_fixed_by_its_settings_and_has_the_asked_rate_and_burstiness() -> None:
    s = TrialSettings(arrival="poisson", rate_per_min=60, arrival_seconds=3000, arrival_seed=5)
    events = schedule(s, IDS)
    assert events == schedule(s, IDS) and events != schedule(replace(s, arrival_seed=6), IDS)
    gaps = [b[0] - a[0] for a, b in zip(events, events[1:])]
    assert 0.9 < statistics.mean(gaps) < 1.1  # 60 a minute: one a second on average
    assert 0.85 < statistics.stdev(gaps) / statistics.mean(gaps) < 1.15  # a Poisson process: CV 1
    bursty = [b[0] - a[0] for a, b in zip(*(lambda e: (e, e[1:]))(schedule(replace(s, burstiness=0.25), IDS)))]
    assert statistics.stdev(bursty) / statistics.mean(bursty) > 1.5  # gamma shape 1/4: CV 2
    constant = schedule(replace(s, arrival="constant", arrival_seconds=10), IDS)
    assert [t for t, _ in constant] == [float(k) for k in range(10)]
    assert [i for _, i in constant] == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]  # the items in their order, again


def test_a_trace_gives_the_times_and_items_and_a_bad_line_is_named(tmp_path: Path) -> None:
    trace = tmp_path / "events.jsonl"
    trace.write_text('{"t": 0.5, "item": "v01"}\n\n{"t": 0.0}\n{"t": 99}\n')
    s = TrialSettings(arrival="trace", trace=str(trace), arrival_seconds=60)
    assert schedule(s, IDS) == [(0.0, 0), (0.5, 3)]  # in time order; past the phase's end dropped
    trace.write_text('{"t": 1}\n{"t": -2}\n')
    with pytest.raises(TraceError, match=r"events.jsonl:2: expected"):
        schedule(s, IDS)
    trace.write_text('{"t": 1, "item": "zz9"}\n')
    with pytest.raises(TraceError, match="item 'zz9' is not among the trial's items"):
        schedule(s, IDS)


def test_a_queue_that_outgrows_the_answers_is_saturated_and_its_responses_are_lower_bounds() -> None:
    # Arrivals every second, answers taking 2 s each: the queue grows by one every two seconds.
    events = [(float(k), 0) for k in range(12)]
    answers, t = [], 100.0
    for k in range(6):
        answers.append({"event": k, "arrival": 100.0 + k, "start": t, "latency_s": 2.0})
        t += 2.0
    f = open_figures(events, answers, 100.0, 112.0, 12.0, [], 2)
    assert f["saturated"] == 1.0 and f["response_lower_bound"] == 1.0
    assert f["open_events"] == 12 and f["open_answered"] == 6 and f["queue_max"] >= 5
    assert f["service_p95_s"] == pytest.approx(2.0) and f["response_p95_s"] > 6.0
    # The same answers at one event every 3 s: no wait, the response is the service time.
    slow = [(3.0 * k, 0) for k in range(4)]
    calm = [{"event": k, "arrival": 100.0 + 3 * k, "start": 100.0 + 3 * k, "latency_s": 2.0} for k in range(4)]
    g = open_figures(slow, calm, 100.0, 112.0, 12.0, [], 2)
    assert g["saturated"] == 0.0 and g["response_lower_bound"] == 0.0 and g["queue_max"] == 1
    assert g["response_p95_s"] == pytest.approx(2.0) and g["queue_wait_p95_s"] == pytest.approx(0.0)


def _open_trial(model: Path, rate: float, seconds: float = 15.0) -> dict[str, float]:
    from sweep.testing import config as smollm2
    from sweep.trial.runner import run_trial

    config = smollm2(cpus=(0,))
    settings = TrialSettings(prompts=4, idle_seconds=0.5, baseline_seconds=0.3, noise_retries=0, timeout_seconds=120,
                             arrival="constant", rate_per_min=rate, arrival_seconds=seconds)
    out = run_trial(config, settings, stratified_subset(load_tasks(), 4), lock=False)
    assert out.ok, (out.reason, out.detail)
    return out.figures


@pytest.mark.slow
def test_open_load_physics_on_smollm2(smollm2_path: Path) -> None:
    """Far below capacity the response is the service time and the CPU a small duty cycle; far above,
    the queue grows and the trial is saturated; the CPU mean grows with the rate."""
    calm = _open_trial(smollm2_path, rate=6)  # an event every 10 s, each answered in well under a second
    assert calm["open_events"] == 2 and calm["open_answered"] == 2 and calm["saturated"] == 0
    assert calm["queue_wait_p95_s"] < 0.25 and calm["response_p95_s"] < calm["service_p95_s"] + 0.25
    assert calm["cpu_mean_share_pct"] < 0.5 * calm["cpu_active_mean_share_pct"]  # idle between events
    flood = _open_trial(smollm2_path, rate=600)  # ten a second
    assert flood["saturated"] == 1 and flood["queue_max"] >= 5 and flood["response_lower_bound"] == 1
    # The phase is cut once 16 events wait, 1.6 s of arrivals: the oldest of them has waited about that long.
    assert flood["response_p95_s"] > flood["service_p95_s"] + 0.5
    assert flood["cpu_mean_share_pct"] > 2 * calm["cpu_mean_share_pct"]


@pytest.mark.slow
def test_sweep_capacity_bisects_to_the_highest_rate_that_holds(tmp_path: Path, fake_worker: None) -> None:
    """The bisection, on the fake worker's steady 0.3 s answers (the real model's open load has
    tests of its own, above)."""
    from sweep.testing import config

    conf = tmp_path / "c.json"
    settings = TrialSettings(prompts=4, idle_seconds=0.3, baseline_seconds=0.2, noise_retries=0, timeout_seconds=120)
    conf.write_text(json.dumps({"config": config(cpus=(0,)).to_dict(), "settings": settings.to_dict()}))
    proc = sweep_cli("capacity", str(conf), "--budget", "queue_wait_p95_s=1.0", "--arrival", "constant",
                     "--seconds", "5", "--low", "15", "--high", "960", "--steps", "1", "--json", "--no-lock")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    steps = out["steps"]
    assert steps[0]["rate_per_min"] == 15 and steps[0]["holds"]  # one event every 4 s: no wait
    assert any(not s["holds"] for s in steps)  # 16 a second cannot be kept up with
    held = [s["rate_per_min"] for s in steps if s["holds"]]
    assert out["capacity_per_min"] == max(held) and all(s["rate_per_min"] > max(held) for s in steps if not s["holds"])
    assert "capacity:" in proc.stderr or "rate 15/min" in proc.stderr


def test_open_load_figures_need_arrivals_and_a_readable_trace(tmp_path: Path) -> None:
    body = TINY_SPACE + "constraints:\n  response_p95_s: {max: 2.5}\n"
    proc = sweep_cli("run", str(write_space(tmp_path / "s.yaml", body)))
    assert proc.returncode == 2 and "constraints.response_p95_s" in proc.stderr and "trial.arrival" in proc.stderr
    traced = TINY_SPACE.replace("trial:\n", "trial:\n  arrival: trace\n  trace: nowhere.jsonl\n")
    proc = sweep_cli("run", str(write_space(tmp_path / "t.yaml", traced)))
    assert proc.returncode == 2 and "trial.trace" in proc.stderr and "nowhere.jsonl" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_parallel_slots_answer_events_at_once_on_the_server(smollm2_path: Path, server_tools: Path) -> None:
    """llama-server with parallel 2: under arrivals faster than its answers, two events are answered
    at once (their answering times overlap); with one slot, never."""
    from sweep.testing import config as smollm2
    from sweep.trial.runner import run_trial

    def overlaps(parallel: int) -> int:
        config = smollm2(n_threads=2, n_threads_batch=2, backend="server", parallel=parallel)
        settings = TrialSettings(prompts=4, idle_seconds=0.3, baseline_seconds=0.2, noise_retries=0,
                                 timeout_seconds=120, arrival="constant", rate_per_min=240, arrival_seconds=8)
        out = run_trial(config, settings, stratified_subset(load_tasks(), 4), lock=False)
        assert out.ok, (out.reason, out.detail)
        spans = sorted((e["start"], e["end"]) for e in out.series["open"] if "start" in e)
        assert len(spans) >= 4
        return sum(b[0] < a[1] - 1e-3 for a, b in zip(spans, spans[1:]))

    assert overlaps(1) == 0
    assert overlaps(2) >= 1


def test_the_report_draws_each_event_and_the_queue_of_an_open_loop_phase() -> None:
    from sweep.results.report import _open_chart

    series = {"t": [100.1, 100.2], "dt": [0.1, 0.1],
              "open": [{"arrival": 101.0, "item": 0, "start": 101.0, "end": 102.0},
                       {"arrival": 101.5, "item": 1, "start": 102.0, "end": 103.0},
                       {"arrival": 102.5, "item": 2}]}  # never answered
    fig = _open_chart(series, "trial 3")
    names = [t.name for t in fig.data]
    assert names.count("waiting") == 2 and names.count("answering") == 2 and "never answered" in names
    queue = next(t for t in fig.data if t.name == "queue (events)")
    assert max(queue.y) == 2 and list(queue.x)[0] == pytest.approx(1.0)  # seconds on the timeline's clock
    assert _open_chart({"t": [1.0], "dt": [0.1]}, "trial 4") is None  # no phase, no chart
