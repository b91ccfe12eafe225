"""What sweep asks of the operating system to watch a trial, behind one small interface.

Two implementations:

- ``linux``: ``/proc``, read directly (per-thread CPU in nanoseconds from ``schedstat``, RSS
  split into anonymous and file-backed pages, CPU pressure from PSI). The measurement sweep has
  always made; its figures are calibrated (docs/measuring.md).
- ``portable``: psutil and the standard library, the path for macOS, Windows and the BSDs.
  ``SWEEP_PLATFORM=portable`` forces it on Linux, which is how it is proven here. What psutil
  cannot give is reported as missing (``None``), never as zero: PSI, and the split of RSS where
  the OS has none.

The process control follows the same path: on ``linux`` the knobs are set per thread and read back
from ``/proc`` (``sweep.trial.knobs``), a child dies with its parent by ``PR_SET_PDEATHSIG``, the
foreground is paused with ``SIGSTOP`` and the lock is ``flock``; on ``portable`` the knobs are
psutil's (affinity and nice, read back per process), a thread watches the parent, psutil suspends
and resumes, and the lock is portalocker's (``flock`` on POSIX, so the two paths exclude each
other). Knobs a path cannot set are refused by the knob table (``Param.needs``).
docs/platforms.md says what each OS has, and what is planned.
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


def is_portable() -> bool:
    """Whether the portable path is in use (see ``name``)."""
    return name() == "portable"


# What a knob may need of the operating system (``sweep.params.Param.needs``), in words.
CAPABILITIES = {
    "affinity": "CPU affinity",
    "sched_policy": "Linux's scheduling policies (SCHED_BATCH, SCHED_IDLE)",
    "thread_readback": "a per-thread read-back of nice and policy",
    "cgroups": "cgroups",
}


def capabilities(which: str | None = None) -> frozenset[str]:
    """What the measurement path ``which`` (default: the one in use) can set and read back."""
    which = which or name()
    if which == "linux":
        return frozenset(CAPABILITIES)
    from sweep.platforms.portable import has_affinity

    return frozenset({"affinity"} if has_affinity() else set())


def lacking(needs: tuple[str, ...], which: str | None = None) -> str | None:
    """The first of ``needs`` the path lacks, in words, or None."""
    have = capabilities(which)
    return next((CAPABILITIES[n] for n in needs if n not in have), None)


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
