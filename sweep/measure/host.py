"""Facts about the machine a sweep runs on, and CPU placement against it."""

from __future__ import annotations

import os
import platform
import socket
from typing import Any, Literal

from sweep.platforms import is_portable, portable

Placement = Literal["first", "last", "spread"]


def allowed_cpus() -> list[int]:
    """The CPU ids this process may run on, sorted (psutil's on the portable path: macOS and Windows
    have no ``sched_getaffinity``)."""
    return portable.allowed_cpus() if is_portable() else sorted(os.sched_getaffinity(0))


def machine_cpus() -> int:
    """Logical CPUs of the whole machine: the denominator of every "share of the machine"."""
    return os.cpu_count() or 1


def place_cores(count: int, placement: Placement, cpus: list[int] | None = None) -> list[int]:
    """Choose ``count`` CPU ids from the allowed set.

    ``first`` takes the lowest ids, ``last`` the highest (away from core 0, where
    interrupts and most user programs tend to land), ``spread`` takes evenly
    spaced ids.
    """
    cpus = allowed_cpus() if cpus is None else cpus
    if not 1 <= count <= len(cpus):
        raise ValueError(f"cannot place {count} cores on {len(cpus)} allowed CPUs")
    if placement == "first":
        return cpus[:count]
    if placement == "last":
        return cpus[-count:]
    step = len(cpus) / count
    return [cpus[int(i * step)] for i in range(count)]


def cpu_model() -> str:
    """The CPU's name: Linux's /proc/cpuinfo where it exists (on either path), else what Python's
    ``platform`` knows (on macOS only the architecture, such as ``arm``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total_gb() -> float:
    """The machine's memory in GiB: /proc/meminfo on the Linux path, psutil's total on the portable
    one (on Linux psutil reads the same MemTotal line)."""
    if is_portable():
        return portable.mem_total_bytes() / 1024 ** 3
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return 0.0


def host_info() -> dict[str, Any]:
    """Metadata stored beside every measurement, so figures keep their context."""
    return {
        "hostname": os.environ.get("SWEEP_HOST_ID") or socket.gethostname(),
        "cpu_model": cpu_model(),
        "logical_cpus": machine_cpus(),
        "allowed_cpus": allowed_cpus(),
        "mem_total_gb": round(mem_total_gb(), 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
