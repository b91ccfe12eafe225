"""The foreground-slowdown probe: ``python -m sweep.measure.probe PERIOD_MS WORK_MS``.

Stands in for the user's own program. Every PERIOD_MS it does a fixed amount of
compute, sized at start-up to take WORK_MS on this machine, and prints
``<start monotonic> <latency seconds>`` per line. When the LLM takes the CPU
the user needs, these latencies grow; their ratio to a baseline taken before
the trial is the direct measure of "no perceptible slowdown".
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Callable

from sweep.procs import Reporter

if TYPE_CHECKING:
    from sweep.records import TrialSettings


def _work(n: int) -> int:
    acc = 0
    for i in range(n):
        acc += i * i % 7
    return acc


def loop_count(work_s: float) -> int:
    """Loop count that takes ``work_s``, from the fastest of several timings (least disturbed)."""
    n = 10_000
    best = min(_timed(n) for _ in range(5))
    return max(1, int(n * work_s / best))


def _timed(n: int) -> float:
    t0 = time.perf_counter()
    _work(n)
    return time.perf_counter() - t0


class Probe(Reporter[tuple[float, float]]):
    """The parent's side: the probe process, started at normal priority on any CPU, and the
    (start, latency) of each wake-up it reports."""

    def __init__(self, settings: TrialSettings, wrap: Callable[[list[str]], list[str]] | None = None) -> None:
        super().__init__("sweep.measure.probe", [str(settings.probe_period_ms), str(settings.probe_work_ms)], _parse,
                         wrap)


def _parse(line: str) -> tuple[float, float]:
    t, lat = line.split()
    return float(t), float(lat)


def main(argv: list[str]) -> int:
    from sweep.procs import die_with_parent

    die_with_parent()
    period, work = float(argv[0]) / 1000, float(argv[1]) / 1000
    n = loop_count(work)
    next_t = time.monotonic()
    out = sys.stdout
    while True:
        t0 = time.monotonic()
        _work(n)
        out.write(f"{t0:.6f} {time.monotonic() - t0:.6f}\n")
        out.flush()
        next_t += period
        delay = next_t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            next_t = time.monotonic()


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (BrokenPipeError, KeyboardInterrupt):
        sys.exit(0)
