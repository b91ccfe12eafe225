"""Phase tagging, percentiles and probe figures on synthetic data whose answer is known."""

from __future__ import annotations

import pytest

from sweep.measure.metrics import percentile, probe_figures, series_figures, tag_windows
from sweep.measure.monitor import Series, Window


def series(edges: list[float], core_pct: float = 50.0) -> Series:
    s = Series(window_s=0.1, ncpu=2)
    for a, b in zip(edges, edges[1:]):
        s.windows.append(Window(a, b, core_pct / 100 * (b - a), [0.5, 0.5]))
    return s


EVENTS = [
    {"type": "phase", "phase": "load", "t": 1.0},
    {"type": "phase", "phase": "idle", "t": 2.0},
    {"type": "phase", "phase": "active", "t": 3.0},
    {"type": "phase", "phase": "prefill", "t": 3.0},
    {"type": "phase", "phase": "decode", "t": 3.25},
    {"type": "phase", "phase": "between", "t": 3.75},
    {"type": "phase", "phase": "done", "t": 3.8},
]


def test_windows_take_the_finest_phase_that_wholly_contains_them() -> None:
    s = series([0.0, 0.5, 0.95, 1.05, 1.5, 2.5, 3.0, 3.1, 3.2, 3.3, 3.4, 3.7, 3.9, 4.0])
    assert tag_windows(s, EVENTS) == [
        "baseline", "baseline", "transition", "load", "transition", "idle",
        "prefill", "prefill", "active",  # 3.2-3.3 spans prefill and decode
        "decode", "decode", "transition", "done",
    ]


def test_active_figures_exclude_load_and_transitions() -> None:
    s = series([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.1, 3.2, 3.3, 3.4, 3.5, 3.6, 3.7, 3.75])
    # Make load a burst: if load leaked into the active figures, the peak would show it.
    for w in s.windows[2:4]:
        w.tree_cpu_s = 2.0 * (w.t1 - w.t0)
    f, _ = series_figures(s, EVENTS, [], 0)
    assert f["n_windows_active"] == 8
    assert f["cpu_active_peak_core_pct"] == pytest.approx(50)
    assert f["cpu_active_peak_share_pct"] == pytest.approx(25)  # 50% of one core on 2 CPUs
    assert f["load_s"] == pytest.approx(1.0)


def test_percentile_interpolates_like_numpy() -> None:
    xs = [1, 2, 3, 4]
    assert percentile(xs, 50) == 2.5
    assert percentile(xs, 99) == pytest.approx(3.97)
    assert percentile([7], 99) == 7


def test_probe_figures_compare_answering_with_baseline() -> None:
    samples = [(0.1 * i, 0.002) for i in range(10)]  # before load: 2 ms
    samples += [(3.0 + 0.05 * i, 0.004) for i in range(10)]  # while answering: 4 ms
    f = probe_figures(samples, EVENTS)
    assert f["fg_p95_ratio"] == pytest.approx(2.0)
    assert f["n_fg_baseline"] == 10 and f["n_fg_active"] == 10
