"""The open-loop phase's figures (``sweep.trial.arrivals``): what a deployed service's users feel.

- **Response** runs from an event's arrival to its answer, its wait behind other events
  included; **service** is the answer's own time (what the closed pass's ``latency_*`` measure).
- An event that arrived but was not answered when the phase ended counts with the time it had
  waited so far: a lower bound, so the response percentiles are lower bounds too
  (``response_lower_bound``).
- The **queue** is the events arrived and not yet answered (the one being answered included), as
  each arrival finds it.
- **Saturated**: the arrivals outrun the answers. The phase ended early because
  ``arrivals.QUEUE_CAP`` events waited, or the queue its last third of arrivals found is longer, by
  ``GROWTH`` events or more, than the one its first third found.
- The CPU figures cover the whole phase, idle gaps included: the duty cycle a service costs.
"""

from __future__ import annotations

import math
from typing import Any

from sweep.measure.metrics import percentile

# Every figure the phase gives (a budget or an objective on one needs trial.arrival other than closed).
FIGURES = ("response_p50_s", "response_p95_s", "response_p99_s", "response_lower_bound", "queue_wait_p95_s",
           "queue_max", "service_p95_s", "cpu_mean_share_pct", "cpu_p99_share_pct", "cpu_s_per_answer", "saturated",
           "open_events", "open_answered", "fg_open_p95_ratio")
GROWTH = 2.0  # events: how much longer the queue must grow through the phase to call it saturated


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def open_figures(schedule: list[tuple[float, int]], answers: list[dict[str, Any]], start: float, end: float,
                 arrival_seconds: float, windows: list[Any], ncpu: int,
                 probe: list[tuple[float, float]] | None = None, probe_base: list[float] | None = None) -> dict[str, float]:
    """The figures of an open-loop phase that ran from ``start`` to ``end`` (monotonic seconds).

    Args:
        schedule: the phase's events, as (seconds from its start, item index).
        answers: the phase's answers (``prompt`` messages of pass ``open``), each with its
            ``event``, ``arrival`` and ``start``.
        windows: the monitor's windows tagged ``open``.
        probe, probe_base: the interactive probe's (time, latency) samples, and its latencies
            before the worker started; the foreground's figures, where a probe ran.
    """
    done = {a["event"]: a for a in answers}
    arrived = [(k, start + t) for k, (t, _) in enumerate(schedule) if start + t < end]
    responses, waits, ends = [], [], []
    for k, arrival in arrived:
        a = done.get(k)
        if a is None:
            responses.append(end - arrival)  # still waiting at the end: a lower bound
            continue
        finish = a["start"] + a["latency_s"]
        responses.append(finish - a["arrival"])
        waits.append(a["start"] - a["arrival"])
        ends.append(finish)
    queue = [sum(t <= at for _, t in arrived) - sum(e <= at for e in ends) for _, at in arrived]
    f: dict[str, float] = {"open_events": float(len(arrived)), "open_answered": float(len(answers))}
    if responses:
        for q in (50, 95, 99):
            f[f"response_p{q}_s"] = percentile(responses, q)
        f["response_lower_bound"] = float(len(arrived) > len(answers))
    if waits:
        f["queue_wait_p95_s"] = percentile(waits, 95)
    if answers:
        f["service_p95_s"] = percentile([a["latency_s"] for a in answers], 95)
    if queue:
        third = max(len(queue) // 3, 1)
        grew = _mean(queue[-third:]) - _mean(queue[:third])
        f["queue_max"] = float(max(queue))
        cut = end - start < arrival_seconds - 1e-3
        f["saturated"] = float(cut or (len(queue) >= 3 and grew >= GROWTH))
    if windows:
        cores = [w.core_pct for w in windows]
        f["cpu_mean_share_pct"] = _mean(cores) / ncpu
        f["cpu_p99_share_pct"] = percentile(cores, 99) / ncpu
        if answers:
            f["cpu_s_per_answer"] = sum(w.core_pct / 100 * (w.t1 - w.t0) for w in windows) / len(answers)
    if probe and probe_base:
        during = [lat for t, lat in probe if start <= t and t + lat <= end]
        if during:
            f["fg_open_p95_ratio"] = percentile(during, 95) / percentile(probe_base, 95)
    return {k: v for k, v in f.items() if not (isinstance(v, float) and math.isnan(v))}
