"""Open load: when events arrive, and which item each one asks.

A trial with ``arrival`` other than ``closed`` has an open-loop phase after its answers: events
arrive for ``arrival_seconds`` on a schedule and are answered one at a time in arrival order, so
an event that arrives while another is answered waits (its response time is its wait plus its
answer). The schedule is fixed by the settings alone, so every trial of a study meets the same one:

- ``constant``: one event every ``60 / rate_per_min`` seconds, the first at 0;
- ``poisson``: gaps drawn from a gamma distribution of mean ``60 / rate_per_min`` and shape
  ``burstiness`` (1 is a Poisson process; below 1 burstier, above 1 more regular), as vLLM's
  ``--burstiness``, seeded by ``arrival_seed``;
- ``trace``: the times (seconds from the phase's start) of a JSONL file, one object per line,
  ``{"t": 12.5}`` or ``{"t": 12.5, "item": "v07"}`` to ask a given item of the trial's subset.

Events without an item ask the trial's items in their fixed order, again from the first when
they run out. Events past ``arrival_seconds`` are not part of the phase.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from sweep.errors import SweepError

# The phase ends early once this many events wait: the arrivals outrun the answers (the trial is
# ``saturated``), and waiting longer only makes the lower bounds on its response times longer.
QUEUE_CAP = 16


class TraceError(SweepError):
    """A trace file that cannot be read as arrival times: its path and line say where."""


def read_trace(path: str | Path) -> list[dict[str, Any]]:
    """The events of a trace file, in time order.

    Raises:
        TraceError: the file is missing, or a line is not ``{"t": seconds >= 0[, "item": id]}``.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"{path}: cannot read the trace ({getattr(exc, 'strerror', None) or exc})") from None
    events = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            e = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TraceError(f"{path}:{n}: not JSON ({exc.msg})") from None
        t = e.get("t") if isinstance(e, dict) else None
        if not isinstance(t, (int, float)) or isinstance(t, bool) or t < 0 or set(e) - {"t", "item"} or \
                not isinstance(e.get("item", ""), str):
            raise TraceError(f"{path}:{n}: expected {{\"t\": seconds >= 0}} with an optional \"item\" id")
        events.append({"t": float(t), **({"item": e["item"]} if "item" in e else {})})
    if not events:
        raise TraceError(f"{path}: the trace holds no event")
    return sorted(events, key=lambda e: e["t"])


def schedule(settings: Any, item_ids: list[str]) -> list[tuple[float, int]]:
    """The open-loop phase's events as (seconds from the phase's start, index into the items).

    Raises:
        TraceError: the trace cannot be read, or names an item the trial does not ask.
    """
    s = settings
    mean_gap = 60.0 / s.rate_per_min
    if s.arrival == "trace":
        where = {item: i for i, item in enumerate(item_ids)}
        out = []
        for k, e in enumerate(read_trace(s.trace)):
            if e["t"] >= s.arrival_seconds:
                break
            if "item" in e and e["item"] not in where:
                raise TraceError(f"{s.trace}: item {e['item']!r} is not among the trial's items")
            out.append((e["t"], where[e["item"]] if "item" in e else k % len(item_ids)))
        return out
    rng = random.Random(s.arrival_seed)
    times, t = [], 0.0
    while t < s.arrival_seconds:
        times.append(t)
        t += mean_gap if s.arrival == "constant" else rng.gammavariate(s.burstiness, mean_gap / s.burstiness)
    return [(t, k % len(item_ids)) for k, t in enumerate(times)]
