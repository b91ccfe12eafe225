"""The Linux measurement path: ``/proc``, read directly (the monitor's readers, moved here unchanged)."""

from __future__ import annotations

import os
import time
from typing import Any


class LinuxSampler:
    def machine(self) -> list[tuple[float, float]]:
        """(busy, total) ticks per core, from the per-core lines of ``/proc/stat``."""
        out: list[tuple[float, float]] = []
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("cpu") and line[3].isdigit():
                    v = [int(x) for x in line.split()[1:9]]
                    total = sum(v)
                    out.append((total - v[3] - v[4], total))  # idle and iowait are not busy
        return out

    def thread_ns(self, pid: int) -> dict[tuple[int, int], int]:
        """From ``/proc/<pid>/task/<tid>/schedstat``: nanoseconds, no 10 ms tick quantization."""
        out: dict[tuple[int, int], int] = {}
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            return out
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    out[(pid, int(tid))] = int(f.read().split()[0])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
        return out

    def children(self, pid: int) -> list[int]:
        kids: list[int] = []
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    kids.extend(int(x) for x in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            pass
        return kids

    def rss_kb(self, pid: int) -> tuple[int, int | None]:
        anon = file_ = 0
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        anon = int(line.split()[1])
                    elif line.startswith("RssFile:"):
                        file_ = int(line.split()[1])
        except OSError:  # gone (ProcessLookupError when it exits between open and read): nothing to add
            pass
        return anon, file_

    def psi_some_us(self) -> int | None:
        """``/proc/pressure/cpu``'s ``some total=``; None where the kernel has no PSI."""
        try:
            with open("/proc/pressure/cpu") as f:
                return int(f.readline().rsplit("total=", 1)[1])
        except (OSError, IndexError, ValueError):
            return None

    def describe(self) -> dict[str, Any]:
        return {"platform": "linux", "thread_cpu": "schedstat", "thread_cpu_resolution_s": 1e-9,
                "clock_resolution_s": time.get_clock_info("monotonic").resolution}
