"""Progress while a sweep runs: a live panel on a terminal, plain lines in a log.

Both show trials done of asked, elapsed time and ETA, the trial in flight, the
last trial's figures, how many trials meet every budget, and the export
policy's best so far.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from sweep.errors import ExportError
from sweep.records import Progress
from sweep.results.display import config_summary, figures_summary, progress_line


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _eta(p: Progress) -> str:
    if p.done_this_run == 0:
        return "?"
    return _clock(p.elapsed_s / p.done_this_run * max(p.target - p.done, 0))


def _standing(study: Any) -> tuple[int, str]:
    from sweep.results.front import choose, rows

    finished = rows(study)
    feasible = sum(r["feasible"] for r in finished)
    try:
        pick = choose(study, allow_infeasible=True)
    except ExportError:
        return feasible, "none yet"
    tag = "" if pick["feasible"] else " (closest; over budget)"
    return feasible, f"trial {pick['number']}{tag}: {figures_summary(pick['figures'])}"


class PlainProgress:
    """One line when a trial starts and one when it ends: readable in an overnight log."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out

    def __call__(self, p: Progress) -> None:
        if p.waiting:
            print(f"[{p.done}/{p.target}] {p.waiting}", file=self.out, flush=True)
            return
        if p.outcome is None and p.phase != "starting":
            return  # phase changes would flood a log
        line = progress_line(p)
        if p.outcome is not None:
            feasible, best = _standing(p.study)
            line += f"\n    elapsed {_clock(p.elapsed_s)}, ETA {_eta(p)} | meet every budget: {feasible} | best: {best}"
        print(line, file=self.out, flush=True)

    def close(self) -> None:
        pass


class LiveProgress:
    """A panel redrawn in place, with the phase of the trial in flight."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console()
        self.live = Live(console=self.console, refresh_per_second=4, transient=False)
        self.live.start()
        self.last, self.standing = "", (0, "none yet")
        self.current: Progress | None = None
        self.t0 = time.monotonic()

    def __call__(self, p: Progress) -> None:
        from rich.table import Table

        if p.outcome is not None:
            self.console.print(progress_line(p))
            self.last = progress_line(p)
            self.standing = _standing(p.study)
        self.current = p
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="bold")
        grid.add_column()
        grid.add_row("trials", f"{p.done}/{p.target}   elapsed {_clock(p.elapsed_s)}   ETA {_eta(p)}")
        if p.waiting:
            grid.add_row("now", p.waiting)
        elif p.outcome is None:
            grid.add_row("now", f"trial {p.trial_number}: {config_summary(p.config.to_dict() if p.config else None)}")
            grid.add_row("phase", p.phase or "")
        grid.add_row("feasible", str(self.standing[0]))
        grid.add_row("best", self.standing[1])
        self.live.update(grid)

    def close(self) -> None:
        self.live.stop()


def make_progress(quiet: bool, out: TextIO = sys.stdout) -> Any:
    """None for --quiet, a live panel on a terminal, plain lines otherwise."""
    if quiet:
        return None
    return LiveProgress() if out.isatty() else PlainProgress(out)
