"""One self-contained HTML report of a study, with plotly charts.

The Pareto front (correctness against active p99 CPU, coloured by p95 latency,
infeasible trials faded), parameter importance per objective, the CPU timeline
and latency distribution of each front trial, and a table of the front.
"""

from __future__ import annotations

import html
import warnings
from pathlib import Path
from typing import Any

from sweep.measure.metrics import METRICS
from sweep.records import StudyMeta
from sweep.results.display import budget_cell, config_summary, objective_cell, sample_text
from sweep.results.front import constant_reference, no_better_than, pareto_front, rows, trial_series
from sweep.results.timeline import (
    _PHASE_COLOUR,
    cpu_budgets,
    fg_label,
    fg_points,
    phase_spans,
    seconds,
    share_of_machine,
)
from sweep.study.fleet import describe_class


def _front_chart(study: Any) -> Any:
    import plotly.graph_objects as go

    complete = [r for r in rows(study) if r["state"] == "COMPLETE" and r["reused_from"] is None
                and r["promotes"] is None]
    front, _ = pareto_front(study)
    on_front = {r["number"] for r in front}
    fig = go.Figure()
    for label, keep, opacity in (("meets every budget", True, 1.0), ("over budget", False, 0.3)):
        pts = [r for r in complete if r["feasible"] == keep]
        if not pts:
            continue
        fig.add_trace(go.Scatter(
            x=[r["figures"]["cpu_active_p99_share_pct"] for r in pts],
            y=[r["figures"]["correctness"] for r in pts],
            mode="markers", name=label, opacity=opacity,
            marker=dict(size=[16 if r["number"] in on_front else 9 for r in pts],
                        color=[r["figures"].get("latency_p95_s") for r in pts], colorscale="Viridis",
                        showscale=keep or not any(r["feasible"] for r in complete),
                        colorbar=dict(title="p95 latency (s)"), line=dict(width=1, color="black")),
            text=[f"trial {r['number']}<br>{config_summary(r['config'])}" for r in pts], hoverinfo="text+x+y",
        ))
    budgets = StudyMeta.of(study).budgets
    if "cpu_active_p99_share_pct" in budgets:
        fig.add_vline(x=budgets["cpu_active_p99_share_pct"]["max"], line_dash="dash", annotation_text="p99 CPU budget")
    if "correctness" in budgets:
        fig.add_hline(y=budgets["correctness"]["min"], line_dash="dash", annotation_text="correctness budget")
    fig.update_layout(title="Pareto front (larger markers are on the front)",
                      xaxis_title="active p99 CPU, % of the machine", yaxis_title="correctness", height=480)
    return fig


# Below this many complete trials an importance ranks noise: a space sweeps some 15 parameters, and
# an evaluator fitted to fewer than about two observations per parameter can put the thread count
# above the model for a figure threads cannot change (as 8 demo trials did). fANOVA's and
# PED-ANOVA's authors evaluate on hundreds; 30 is a floor, not a guarantee, so the spread is drawn too.
IMPORTANCE_MIN_TRIALS = 30
_RESAMPLES = 10


def _importance_charts(study: Any) -> list[Any] | str:
    """Each objective's parameter importances with their spread over bootstrap resamples of the
    trials, or why none are drawn yet."""
    import random

    import optuna
    import plotly.graph_objects as go

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.values]
    if len(complete) < IMPORTANCE_MIN_TRIALS:
        return (f"Parameter importance is not yet meaningful: {len(complete)} complete trials, fewer than "
                f"{IMPORTANCE_MIN_TRIALS} (about two per swept parameter), so any ranking would be fitted to noise.")
    rng = random.Random(0)
    samples = [complete] + [rng.choices(complete, k=len(complete)) for _ in range(_RESAMPLES)]
    charts = []
    for i, name in enumerate(StudyMeta.of(study).objectives):
        # Optuna's default evaluator (PED-ANOVA) ranks what leads to *low* target values.
        sign = -1.0 if METRICS[name].direction == "maximize" else 1.0

        def target(t: optuna.trial.FrozenTrial, i: int = i, s: float = sign) -> float:
            value: float = t.values[i]  # FrozenTrial.values is a bare property(), so Any to mypy
            return s * value

        runs: list[dict[str, float]] = []
        for trials in samples:
            resampled = optuna.create_study(directions=study.directions)
            resampled.add_trials(trials)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    runs.append(optuna.importance.get_param_importances(resampled, target=target))
            except (RuntimeError, ValueError) as exc:
                if not runs:
                    return f"Parameter importance needs more complete trials with varied parameters ({exc})."
        names = sorted(runs[0], key=lambda k: runs[0][k])
        spread = {k: sorted(r.get(k, 0.0) for r in runs[1:]) or [runs[0][k]] for k in names}
        lows = [runs[0][k] - spread[k][0] for k in names]
        highs = [spread[k][-1] - runs[0][k] for k in names]
        charts.append(go.Figure(go.Bar(x=[runs[0][k] for k in names], y=names, orientation="h",
                                       error_x=dict(type="data", symmetric=False, array=highs, arrayminus=lows)))
                      .update_layout(title=f"parameter importance for {METRICS[name].direction.replace('ize', 'izing')} "
                                           f"{name} (Optuna's default evaluator; bars: the range over "
                                           f"{len(runs) - 1} bootstrap resamples of the trials)",
                                     height=120 + 22 * len(names), yaxis=dict(tickmode="linear")))
    return charts


def _timeline_chart(series: dict[str, Any], budgets: dict[str, Any], title: str) -> Any:
    import plotly.graph_objects as go

    ts = seconds(series)
    fig = go.Figure()
    for phase, start, end in phase_spans(series):
        fig.add_vrect(x0=start, x1=end, fillcolor=_PHASE_COLOUR.get(phase, "white"), opacity=0.35, line_width=0)
    fig.add_trace(go.Scatter(x=ts, y=share_of_machine(series), line_shape="hv", name="LLM (worker tree)"))
    fig.add_trace(go.Scatter(x=ts, y=series["system_pct"], line_shape="hv", name="whole machine", opacity=0.6))
    for name, limit in cpu_budgets(budgets).items():
        fig.add_hline(y=limit, line_dash="dash", annotation_text=f"{name} ≤ {limit:g}%")
    fts, fms = fg_points(series)
    if fts:  # the user's side, on its own axis
        fig.add_trace(go.Scatter(x=fts, y=fms, mode="markers", marker_size=4, yaxis="y2",
                                 name=fg_label(series) + " (ms)"))
        fig.update_layout(yaxis2=dict(title="foreground ms per unit", overlaying="y", side="right", rangemode="tozero"))
    fig.update_layout(title=f"{title}: CPU timeline (W = {series['window_s'] * 1000:.0f} ms; shaded by phase)",
                      xaxis_title="seconds", yaxis_title="% of machine", yaxis_range=[0, 105], height=360)
    return fig


def _open_chart(series: dict[str, Any], title: str) -> Any:
    """The open-loop phase of a trial: each event's arrival and answer (its wait, then its service),
    and the queue, on the CPU timeline's clock (sweep.measure.open_load)."""
    import plotly.graph_objects as go

    events = series.get("open") or []
    if not events:
        return None
    t0 = series["t"][0] - series["dt"][0]
    fig = go.Figure()
    for k, e in enumerate(events):
        a = e["arrival"] - t0
        if "start" in e:
            fig.add_trace(go.Scatter(x=[a, e["start"] - t0], y=[k, k], mode="lines", line=dict(color="#e67e22", width=3),
                                     showlegend=k == 0, name="waiting"))
            fig.add_trace(go.Scatter(x=[e["start"] - t0, e["end"] - t0], y=[k, k], mode="lines",
                                     line=dict(color="#1f618d", width=3), showlegend=k == 0, name="answering"))
        else:
            fig.add_trace(go.Scatter(x=[a], y=[k], mode="markers", marker=dict(symbol="x", color="#c0392b"),
                                     showlegend=False, name="never answered"))
    ends = sorted(e["end"] - t0 for e in events if "end" in e)
    arrivals = [e["arrival"] - t0 for e in events]
    times = sorted(set(arrivals + ends))
    queue = [sum(a <= t for a in arrivals) - sum(x <= t for x in ends) for t in times]
    fig.add_trace(go.Scatter(x=times, y=queue, line_shape="hv", yaxis="y2", name="queue (events)",
                             line=dict(color="#7d3c98")))
    return fig.update_layout(title=f"{title}: open load: each event from its arrival (waiting, then answered)",
                             xaxis_title="seconds (the CPU timeline's clock)", yaxis_title="event",
                             yaxis2=dict(title="queue", overlaying="y", side="right", rangemode="tozero"), height=360)


def _latency_chart(front_answers: dict[int, list[dict[str, Any]]]) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    for number, answers in front_answers.items():
        fig.add_trace(go.Box(y=[a["latency_s"] for a in answers], name=f"trial {number}", boxpoints="all"))
    return fig.update_layout(title="latency of each request, front trials", yaxis_title="seconds", height=380)


def _front_table(front: list[dict[str, Any]], objectives: list[str], constant: dict[int, float] | None) -> str:
    head = "".join(f"<th>{html.escape(m)} ({html.escape(METRICS[m].unit)})</th>" for m in objectives)
    body = []
    for r in front:
        cells = "".join(f"<td>{html.escape(objective_cell(r['figures'], m))}</td>" for m in objectives)
        ok = budget_cell(r) + (" [no better than a constant answer]" if no_better_than(r, constant) else "")
        body.append(f"<tr><td>{r['number']}</td>{cells}<td>{html.escape(ok)}</td><td>{html.escape(sample_text(r))}</td>"
                    f"<td><code>{html.escape(config_summary(r['config']))}</code></td></tr>")
    for n, score in sorted((constant or {}).items()) if "correctness" in objectives else ():
        cells = "".join(f"<td>{score:.2f} n={n}</td>" if m == "correctness" else "<td></td>" for m in objectives)
        body.append(f"<tr><td>const</td>{cells}<td>{n} items</td><td>the best constant answer of each kind, on "
                    "those items (chosen knowing the answers): the bar a model must clear</td></tr>")
    return (f"<table><tr><th>trial</th>{head}<th>budgets</th><th>figures from</th><th>configuration</th></tr>"
            f"{''.join(body)}</table>")


def write_report(study: Any, storage_url: str, path: Path) -> Path:
    """Write the report to ``path`` (plotly.js is embedded: the file works offline)."""
    import plotly.io as pio

    front, feasible = pareto_front(study)
    budgets = StudyMeta.of(study).budgets
    parts: list[str] = [_front_chart(study)]
    importance = _importance_charts(study)
    parts += importance if isinstance(importance, list) else [f"<p>{html.escape(importance)}</p>"]
    answers: dict[int, list[dict[str, Any]]] = {}
    for r in front:
        stored = trial_series(study, r["number"], storage_url)
        if stored and stored["series"].get("t"):
            parts.append(_timeline_chart(stored["series"], budgets, f"trial {r['number']}"))
            opened = _open_chart(stored["series"], f"trial {r['number']}")
            if opened is not None:
                parts.append(opened)
            answers[r["number"]] = stored["answers"]
    if answers:
        parts.append(_latency_chart(answers))
    first = True
    chunks = []
    for part in parts:
        if isinstance(part, str):
            chunks.append(part)
            continue
        chunks.append(pio.to_html(part, full_html=False, include_plotlyjs=first))
        first = False
    measured_on = html.escape(describe_class(study))
    note = "" if feasible else "<p><b>No trial meets every budget</b>; the front shown ignores the budgets.</p>"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>sweep report: {html.escape(study.study_name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px}}</style></head><body>
<h1>sweep report: study {html.escape(study.study_name)}</h1>
<p>{len(rows(study))} finished trials, measured on {measured_on}.</p>
{note}<h2>The front</h2>{_front_table(front, StudyMeta.of(study).objectives, constant_reference(study))}
{''.join(chunks)}
</body></html>"""
    path.write_text(page)
    return path
