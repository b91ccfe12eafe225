"""The terminal timeline draws every phase the worker went through, however short."""

from __future__ import annotations

from sweep.results.timeline import ascii_timeline, column_phases


def _series(tags: list[str], marks: dict[str, float], w: float = 0.25) -> dict:
    n = len(tags)
    return {"t": [100 + w * (i + 1) for i in range(n)], "dt": [w] * n, "phase": tags, "marks": marks,
            "tree_core_pct": [50.0] * n, "system_pct": [60.0] * n, "ncpu": 2, "window_s": w}


def test_a_load_shorter_than_a_window_is_still_drawn() -> None:
    # baseline 100.0-100.5, start 100.5-100.6, load 100.6-100.7 (a tenth of a second), idle 100.7-101.5
    tags = ["baseline", "baseline", "transition", "idle", "idle", "idle"]
    series = _series(tags, {"start": 100.5, "load": 100.6, "idle": 100.7})
    drawn = column_phases(series, 1)
    assert drawn[:2] == ["baseline", "baseline"] and drawn[3:] == ["idle"] * 3
    assert drawn[2] == "load"  # the window 100.50-100.75 holds start, load and idle: the load is the one not drawn
    phase_row = next(r for r in ascii_timeline(series, {}).splitlines() if r.startswith("phase "))
    assert phase_row.split()[1] == "BBLIII"


def test_a_transition_takes_the_phase_that_filled_most_of_it() -> None:
    tags = ["baseline", "transition", "transition", "idle"]
    series = _series(tags, {"load": 100.3, "idle": 100.95})  # load fills 100.30-100.95
    assert column_phases(series, 1) == ["baseline", "load", "load", "idle"]


def test_without_marks_a_transition_stays_a_transition() -> None:
    series = _series(["baseline", "transition", "idle"], {})
    assert column_phases(series, 1) == ["baseline", "transition", "idle"]
