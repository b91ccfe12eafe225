"""A trial's CPU timeline, with its phases and budget lines: on the terminal or as a PNG.

The terminal chart keeps each column's *maximum*, so a one-window spike is
never averaged away by downsampling.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

_PHASE_CHAR = {"baseline": "B", "start": "S", "load": "L", "idle": "I", "active": "A", "prefill": "P", "decode": "D",
               "between": "b", "injection": "J", "open": "O", "contended": "C", "done": "E", "transition": "|"}
_PHASE_COLOUR = {"baseline": "#dddddd", "start": "#fcf3cf", "load": "#f4d03f", "idle": "#aed6f1", "active": "#f5b7b1",
                 "prefill": "#ec7063", "decode": "#f1948a", "between": "#fadbd8", "injection": "#f9e79f",
                 "open": "#a9dfbf", "contended": "#d2b4de", "done": "#dddddd"}
FG_LABEL = {"cpu": "CPU-bound foreground: time per unit", "interactive": "interactive probe: time per wake-up"}
_FG_STEPS = [(1.05, "."), (1.25, "-"), (1.5, "+"), (float("inf"), "#")]


def fg_label(series: dict[str, Any]) -> str:
    """What the series' foreground row shows: the probe's wake-ups or the CPU-bound workload's units."""
    return FG_LABEL.get(series.get("fg_kind", ""), "foreground")


def fg_points(series: dict[str, Any]) -> tuple[list[float], list[float]]:
    """The foreground's time per unit (ms) in the windows where a unit ended, on ``seconds``' clock."""
    pairs = [(t, v) for t, v in zip(seconds(series), series.get("fg_unit_ms") or []) if v is not None]
    return [t for t, _ in pairs], [v for _, v in pairs]


def fg_baseline_ms(series: dict[str, Any]) -> float | None:
    """The foreground's median time per unit in the baseline windows: what 1.0x is."""
    from sweep.measure.metrics import percentile

    base = [v for p, v in zip(series["phase"], series.get("fg_unit_ms") or []) if p == "baseline" and v is not None]
    return percentile(base, 50) if base else None


def share_of_machine(series: dict[str, Any]) -> list[float]:
    return [v / series["ncpu"] for v in series["tree_core_pct"]]


def seconds(series: dict[str, Any]) -> list[float]:
    """Each window's end, in seconds from the start of the first window."""
    if not series["t"]:
        return []
    t0 = series["t"][0] - series["dt"][0]
    return [t - t0 for t in series["t"]]


def phase_spans(series: dict[str, Any]) -> list[tuple[str, float, float]]:
    """Runs of windows with one phase, as (phase, start s, end s)."""
    ts, phases = seconds(series), series["phase"]
    spans, start = [], 0.0
    for i, phase in enumerate(phases):
        if i + 1 == len(ts) or phases[i + 1] != phase:
            spans.append((phase, start, ts[i]))
            start = ts[i]
    return spans


def mark_spans(series: dict[str, Any]) -> list[tuple[str, float, float]]:
    """The major phases from the worker's marks, as (phase, start s, end s) on ``seconds``' clock.

    Unlike ``phase_spans`` this holds every phase, even one shorter than a window.
    """
    if not series["t"]:
        return []
    t0 = series["t"][0] - series["dt"][0]
    marks = sorted(series.get("marks", {}).items(), key=lambda kv: kv[1])
    starts = [("baseline", t0)] + marks
    ends = [t for _, t in marks] + [series["t"][-1]]
    return [(name, a - t0, b - t0) for (name, a), b in zip(starts, ends)]


def column_phases(series: dict[str, Any], per: int) -> list[str]:
    """The phase drawn under each column of ``per`` windows: the most common window tag.

    A column of windows that straddle a change of major phase (``transition``) takes the major
    phase from the worker's marks that filled most of it, and a major phase shorter than a window
    (a load from the page cache takes a tenth of a second) still gets the column it overlaps most,
    so every phase the worker went through is drawn.
    """
    phases, ends = series["phase"], seconds(series)
    starts = [t - dt for t, dt in zip(ends, series["dt"])]
    cols = list(range(0, len(phases), per))
    drawn = [Counter(phases[i:i + per]).most_common(1)[0][0] for i in cols]
    spans = [s for s in mark_spans(series) if s[2] > s[1]] if series.get("marks") else []

    def overlap(col: int, span: tuple[str, float, float]) -> float:
        a, b = starts[cols[col]], ends[min(cols[col] + per, len(ends)) - 1]
        return float(max(0.0, min(b, span[2]) - max(a, span[1])))

    open_cols = [c for c, p in enumerate(drawn) if p == "transition"]
    for c in open_cols:
        best = max(spans, key=lambda s: overlap(c, s), default=None)
        if best is not None and overlap(c, best) > 0:
            drawn[c] = best[0]
    for span in spans:
        if span[0] in drawn:
            continue
        spare = [c for c in open_cols if drawn.count(drawn[c]) > 1 and overlap(c, span) > 0]
        if spare:
            drawn[max(spare, key=lambda c: overlap(c, span))] = span[0]
    return drawn


def cpu_budgets(budgets: dict[str, dict[str, float]]) -> dict[str, float]:
    """The CPU budgets that are upper bounds, by name: the lines a timeline draws."""
    return {name: b["max"] for name, b in budgets.items() if name.startswith("cpu_") and "max" in b}


def ascii_timeline(series: dict[str, Any], budgets: dict[str, dict[str, float]], width: int = 96,
                   height: int = 10) -> str:
    """The LLM's share of the machine per column (max over the windows in it), phases below."""
    values = share_of_machine(series)
    if not values:
        return "(no windows)"
    per = max(1, -(-len(values) // width))
    cols = [max(values[i:i + per]) for i in range(0, len(values), per)]
    col_phase = column_phases(series, per)
    top = max(100.0, max(cols))
    lines = {round(limit / top * height): f"{name} {limit:g}%" for name, limit in cpu_budgets(budgets).items()}
    rows = []
    for level in range(height, 0, -1):
        cut = level / height * top
        fill = "-" if level in lines else " "
        row = "".join("#" if v >= cut - top / height / 2 else fill for v in cols)
        label = f"{cut:5.0f}% |"
        rows.append(label + row + (f"  <- {lines[level]}" if level in lines else ""))
    rows.append("       +" + "-" * len(cols))
    rows.append("phase   " + "".join(_PHASE_CHAR.get(p, "?") for p in col_phase))
    base = fg_baseline_ms(series)
    if base:  # the user's side: how much slower the foreground ran, column by column (its worst window)
        units = series["fg_unit_ms"]
        marks = []
        for i in range(0, len(values), per):
            seen = [v for v in units[i:i + per] if v is not None]
            marks.append(next(c for limit, c in _FG_STEPS if max(seen) / base <= limit) if seen else " ")
        rows.append("fg      " + "".join(marks))
    w_ms = series["window_s"] * 1000
    rows.append(f"LLM CPU as % of the machine ({series['ncpu']} CPUs); W={w_ms:.0f} ms, {per} window(s) per column "
                "(max); B baseline L load I idle A active P prefill D decode b between J injection O open load "
                "C contended E done | transition")
    if base:
        rows.append(f"fg: {fg_label(series)} against its baseline "
                    f"({base:.1f} ms): . <=1.05x  - <=1.25x  + <=1.5x  # more (worst window per column)")
    return "\n".join(rows)


def png_timeline(series: dict[str, Any], budgets: dict[str, dict[str, float]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts = seconds(series)
    fig, ax = plt.subplots(figsize=(11, 4.2))
    for phase, start, end in phase_spans(series):
        ax.axvspan(start, end, color=_PHASE_COLOUR.get(phase, "white"), alpha=0.5, lw=0)
        if end - start > ts[-1] / 40:
            ax.text((start + end) / 2, 0.98, phase, ha="center", va="top", fontsize=7,
                    transform=ax.get_xaxis_transform())
    ax.step(ts, share_of_machine(series), where="post", label="LLM (worker tree)", color="#922b21", lw=1.4)
    ax.step(ts, series["system_pct"], where="post", label="whole machine", color="#566573", lw=0.9, alpha=0.8)
    for name, limit in cpu_budgets(budgets).items():
        ax.axhline(limit, ls="--", lw=0.9, color="#1f618d")
        ax.text(0.995, limit, f"{name} ≤ {limit:g}%", ha="right", va="bottom", fontsize=7,
                color="#1f618d", transform=ax.get_yaxis_transform())
    ax.set_xlabel("seconds")
    ax.set_ylabel(f"% of machine ({series['ncpu']} CPUs)")
    ax.set_ylim(0, 105)
    ax.set_title(f"{title}  (W = {series['window_s'] * 1000:.0f} ms)", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fts, fms = fg_points(series)
    if fts:
        fg = ax.twinx()
        fg.plot(fts, fms, ".", ms=3, color="#1e8449", label=fg_label(series))
        fg.set_ylabel("foreground ms per unit", color="#1e8449")
        fg.set_ylim(0, max(fms) * 1.1)
        fg.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
