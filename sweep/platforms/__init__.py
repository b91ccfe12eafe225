"""What sweep asks of the operating system to watch a trial, behind one small interface.

Two implementations:

- ``linux``: ``/proc``, read directly (per-thread CPU in nanoseconds from ``schedstat``, RSS
  split into anonymous and file-backed pages, CPU pressure from PSI). The measurement sweep has
  always made; its figures are calibrated (docs/measuring.md).
- ``portable``: psutil and the standard library, the path for macOS, Windows and the BSDs.
  ``SWEEP_PLATFORM=portable`` forces it on Linux, which is how it is proven here. What psutil
  cannot give is reported as missing (``None``), never as zero: PSI, and the split of RSS where
  the OS has none.

The knobs, the measurement lock and the worker's process control are still Linux's own
(docs/platforms.md says what each OS has, and what is planned).
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Protocol

from sweep.errors import SweepError

NAMES = ("linux", "portable")


class Sampler(Protocol):
    """Counters the monitor turns into rates; every call is cheap and never blocks."""

    def machine(self) -> list[tuple[float, float]]:
        """(busy, total) CPU time per logical CPU since boot, in any one unit."""

    def thread_ns(self, pid: int) -> dict[tuple[int, int], int]:
        """CPU nanoseconds of each thread of ``pid``, keyed (pid, thread id); {} once it is gone."""

    def children(self, pid: int) -> list[int]:
        """The direct children of ``pid``; [] once it is gone."""

    def rss_kb(self, pid: int) -> tuple[int, int | None]:
        """Anonymous and file-backed resident KiB of ``pid`` ((0, 0) once it is gone; file-backed None: not known here)."""

    def psi_some_us(self) -> int | None:
        """Cumulative microseconds in which some task waited for a CPU, or None where the OS has no PSI."""

    def describe(self) -> dict[str, Any]:
        """What a trial records of its measurement path."""


def name() -> str:
    """The measurement path in use: ``SWEEP_PLATFORM``, else ``linux`` on Linux and ``portable`` elsewhere.

    Raises:
        SweepError: an unknown name, or ``linux`` on another OS.
    """
    wanted = os.environ.get("SWEEP_PLATFORM", "").strip() or ("linux" if sys.platform.startswith("linux") else "portable")
    if wanted not in NAMES:
        raise SweepError(f"SWEEP_PLATFORM={wanted!r}: not a measurement path (known: {', '.join(NAMES)})")
    if wanted == "linux" and not sys.platform.startswith("linux"):
        raise SweepError(f"SWEEP_PLATFORM=linux: this is {sys.platform}, which has no /proc to read; use portable")
    return wanted


def sampler() -> Sampler:
    """The sampler of the measurement path in use (see ``name``)."""
    return _sampler(name())


@functools.cache
def _sampler(which: str) -> Sampler:
    if which == "linux":
        from sweep.platforms.linux import LinuxSampler

        return LinuxSampler()
    from sweep.platforms.portable import PortableSampler

    return PortableSampler()
