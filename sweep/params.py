"""The knob table: every parameter a search space may sweep or fix, described once.

Each entry gives the knob's type and bounds, its default, the backends that take it, what a value
other than the default needs of the operating system (``needs``: so which measurement paths take
it), whether it may be swept or only fixed, where it takes effect (``applied``), how a trial's
one-line summary shows it (``shown``) and, for knobs added after the first records, that a record
leaves it out at its default. The space (validation, defaults, sampling), the records, the server backend's own
knobs, the refusals and ``display.config_summary`` all read this table; a test holds
``records.TrialConfig`` to it.

Adding a knob: one entry here, its ``TrialConfig`` field, and the code that applies it at the place
``applied`` names (``knobs`` for the OS, ``server.server_args`` for llama.cpp's flags,
``prompts`` for the prompt, ``records.TrialConfig.llama_kwargs`` for the bindings). Which backends
take it (``backends``) and which knob it needs set (``only_with``) are read by one rule,
``idle_knobs``, for the space, a trial's config and a config given to ``sweep trial``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Union

Kind = Literal["int", "float", "choice", "cpus", "number", "weight"]
Applied = Literal["bindings", "os", "env", "prompt", "space", "server", "sampling", "worker", "cgroup"]


class _Derived:
    """No fixed default: derived from the host or other knobs (threads: the CPUs a trial may use)."""

    def __repr__(self) -> str:
        return "DERIVED"


DERIVED: Any = _Derived()


@dataclass(frozen=True)
class Param:
    kind: Kind
    default: Any
    applied: Applied
    help: str
    low: Union[float, None] = None
    high: Union[float, Callable[[], int], None] = None  # a callable: bounds known only at run time
    choices: tuple[str, ...] = ()
    nullable: bool = False  # null is a value: leave it to llama.cpp / no pacing / unset
    fixed_only: bool = False  # may be set under fixed, never swept
    backends: tuple[str, ...] = ("python", "server")
    recorded_at_default: bool = True  # False: added after the first records, left out at its default
    why: str = ""  # the refusal of an out-of-bounds value, with {value}
    check: Union[Callable[[Any], Union[str, None]], None] = None  # bounds that low and high cannot say
    shown: str = ""  # how a trial's one-line summary names a value other than the default (a format of {})
    needs: tuple[str, ...] = ()  # what a value other than the default needs of the OS (sweep.platforms.CAPABILITIES)
    only_with: str = ""  # the knob that must be set (away from its default) for this one to mean anything
    backend_why: str = ""  # why a backend outside ``backends`` cannot take it (default: "a <backends> knob")

    def upper(self) -> float | None:
        return self.high() if callable(self.high) else self.high

    def problem(self, value: Any) -> str | None:
        """Why ``value`` cannot be this knob's, or None."""
        if value is None and self.nullable:
            return None
        if self.kind == "choice":
            return None if value in self.choices else f"{value!r} is not one of {', '.join(self.choices)}"
        if self.kind == "weight" and value == "idle":
            return None
        if self.kind in ("int", "weight") and (not isinstance(value, int) or isinstance(value, bool)):
            if self.kind == "weight":
                return self.why.format(value=value, high=self.upper())
            return f"expected a whole number, got {value!r}"
        if self.kind in ("float", "number") and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            return self.why.format(value=value) if self.why else f"expected a number, got {value!r}"
        if self.check:
            return self.check(value)
        high = self.upper()
        if (self.low is not None and value < self.low) or (high is not None and value > high):
            return self.why.format(value=value, high=high) if self.why else \
                f"must be at least {self.low:g}, got {value}"
        return None


def _max_shots() -> int:
    from sweep.correctness.prompts import max_shots

    return max_shots()


_POLICIES = ("normal", "batch", "idle")
_AFFINITY = ("affinity",)
_SERVER = ("server",)
_PYTHON = ("python",)
_NO_PACING = "llama-server cannot pace decoding (it streams as fast as it computes)"
_NULL_LLAMA = " (or null for llama.cpp's default), got {value!r}"
_PACE = "expected a number above 0 (or null for no pacing), got {value!r}"


def _pace(value: float) -> str | None:
    return _PACE.format(value=value) if value <= 0 else None


def _duty(value: float) -> str | None:
    return _pace(value) or (f"a duty cycle is a fraction in (0, 1], got {value}" if value > 1 else None)

PARAMS: dict[str, Param] = {
    # The model's compute (llama-cpp-python's Llama(...) and llama-server's flags alike).
    "n_threads": Param("int", DERIVED, "bindings", "decode threads (default: every CPU the trial may use)", low=1),
    "n_threads_batch": Param("int", DERIVED, "bindings", "prefill threads (llama-cpp-python's default is every "
                             "core: always explicit here)", low=1),
    "n_batch": Param("int", 512, "bindings", "logical batch: a long prompt is prefilled in chunks of this", low=1),
    "n_ubatch": Param("int", 512, "bindings", "physical batch (clamped to n_batch)", low=1),
    "n_ctx": Param("int", 1024, "bindings", "context size", low=1),
    # Where and how politely it runs (sweep.trial.knobs: applied before llama_cpp loads, read back from /proc).
    "cores": Param("int", DERIVED, "sampling", "how many CPUs the trial is pinned to", low=1, needs=_AFFINITY),
    "placement": Param("choice", "first", "sampling", "which CPUs: the first, the last or spread",
                       choices=("first", "last", "spread"), needs=_AFFINITY),
    "cpus": Param("cpus", DERIVED, "os", "CPU affinity, as CPU ids", fixed_only=True, needs=_AFFINITY),
    "nice": Param("int", 0, "os", "nice of every thread, and of the session's autogroup", low=0, high=19,
                  why="nice must be 0..19 (raising priority needs root and is never polite), got {value}"),
    "sched_policy": Param("choice", "normal", "os", "scheduling policy", choices=_POLICIES, needs=("sched_policy",)),
    "omp_wait_policy": Param("choice", None, "env", "OpenMP's spin: OMP_WAIT_POLICY", choices=("passive", "active"),
                             nullable=True, shown="omp={}"),
    "gomp_spincount": Param("int", None, "env", "GNU OpenMP's spin count: GOMP_SPINCOUNT", low=0, nullable=True,
                            shown="spin={}"),
    # How it answers.
    "max_tokens": Param("int", 48, "worker", "the longest answer", low=1),
    "temperature": Param("number", 0.0, "worker", "sampling temperature", low=0, fixed_only=True,
                         why="expected a number >= 0, got {value!r}"),
    "pace_tps": Param("float", None, "worker", "decode pacing: at most this many tokens per second",
                      nullable=True, backends=_PYTHON, backend_why=_NO_PACING, why=_PACE, check=_pace,
                      shown="cap={:g}tok/s"),
    "pace_duty": Param("float", None, "worker", "decode pacing: compute at most this share of decode time",
                       nullable=True, backends=_PYTHON, backend_why=_NO_PACING, why=_PACE, check=_duty,
                       shown="duty={:g}"),
    # Prompt strategy (sweep.correctness.prompts).
    "shots": Param("int", 0, "prompt", "worked examples before each question", low=0, high=_max_shots,
                   why="the worked-example pool has {high} examples of each kind; shots must be 0..{high}, "
                       "got {value}"),
    "output": Param("choice", "free", "prompt", "free text, or the answer's form forced by a grammar or JSON schema",
                    choices=("free", "grammar", "json")),
    "prefix_cache": Param("choice", "off", "worker", "shared: each kind's fixed prefix prefilled once, at load",
                          choices=("off", "shared"), shown="prefix={}"),
    "input_guard": Param("choice", "none", "prompt", "how attacker-written input is kept from steering the answer: "
                         "in the prompt (escape, delimit, sandwich), or by checks outside the model that can only "
                         "raise a verdict (floor, detect, union, differential; layered is all four, over escape)",
                         choices=("none", "escape", "delimit", "sandwich", "floor", "detect", "union", "differential",
                                  "layered"), recorded_at_default=False,
                         shown="guard={}"),
    "ioc_hints": Param("choice", "none", "prompt", "IOC items: the regex's candidates shown to the model to keep, "
                       "drop or complete", choices=("none", "regex"), recorded_at_default=False, shown="hints={}"),
    "context": Param("choice", "none", "prompt", "ATT&CK items: the catalog's most similar techniques (BM25) in the "
                     "prompt", choices=("none", "attack-catalog"), recorded_at_default=False, shown="context={}"),
    "context_k": Param("int", 5, "prompt", "how many techniques the catalog gives", low=1, high=20,
                       recorded_at_default=False, why="context_k must be 1..20 techniques, got {value}", shown="k={}",
                       only_with="context"),
    # Which program computes.
    "backend": Param("choice", "python", "worker", "llama-cpp-python in the worker, or llama-server",
                     choices=("python", "server"), recorded_at_default=False, shown="backend={}"),
    # llama.cpp's own threadpool knobs (llama-server's flags; sweep.trial.server.server_args).
    "poll": Param("int", None, "server", "--poll: a busy-wait level", low=0, high=100, nullable=True,
                  backends=_SERVER, recorded_at_default=False, why="poll must be a busy-wait level 0..100" + _NULL_LLAMA,
                  shown="poll={}"),
    "poll_batch": Param("int", None, "server", "--poll-batch (default: as poll)", low=0, high=100, nullable=True,
                        backends=_SERVER, recorded_at_default=False, only_with="poll",
                        why="poll_batch must be a busy-wait level 0..100" + _NULL_LLAMA, shown="poll_batch={}"),
    "prio": Param("int", None, "server", "--prio: -1 low, 0 normal", low=-1, high=0, nullable=True, backends=_SERVER,
                  recorded_at_default=False,
                  why="prio must be -1 (low) or 0 (normal); llama.cpp's higher levels are SCHED_FIFO, never polite"
                      + _NULL_LLAMA, shown="prio={}", needs=("thread_readback",)),
    "prio_batch": Param("int", None, "server", "--prio-batch: 0 normal", low=0, high=0, nullable=True,
                        backends=_SERVER, recorded_at_default=False,
                        why="prio_batch must be 0 (normal): llama.cpp has no low level for it, and its higher "
                            "levels are SCHED_FIFO" + _NULL_LLAMA, shown="prio_batch={}", needs=("thread_readback",)),
    "parallel": Param("int", None, "server", "--parallel: request slots; under open load (trial.arrival), that many "
                      "events answered at once, batched continuously", low=1, high=8, nullable=True, backends=_SERVER,
                      recorded_at_default=False, why="parallel must be 1..8 slots" + _NULL_LLAMA, shown="parallel={}"),
    "cpu_strict": Param("int", None, "server", "--cpu-strict: 1 pins each thread to one CPU of the mask", low=0,
                        high=1, nullable=True, backends=_SERVER, recorded_at_default=False,
                        why="cpu_strict must be 0 or 1" + _NULL_LLAMA, shown="cpu_strict={}"),
}

# Kernel limits on the trial's whole process tree, in a cgroup of its own (sweep.trial.cgroups).
_CG: dict[str, Any] = dict(nullable=True, recorded_at_default=False, needs=("cgroups",))
PARAMS.update({
    "cpu_quota_pct": Param("float", None, "cgroup", "a hard CPU cap, in % of the whole machine, over each period "
                           "(cpu.max; CPUQuota=)", low=0.5, high=100, why="cpu_quota_pct must be a share of the "
                           "machine in (0, 100] (or null for no cap), got {value!r}", **_CG, shown="quota={:g}%"),
    "cpu_period_ms": Param("number", 100, "cgroup", "the period the quota is counted over (cpu.max; CPUQuotaPeriodSec=)",
                           low=1, high=1000, recorded_at_default=False, only_with="cpu_quota_pct",
                           why="cpu_period_ms must be 1..1000 ms (the kernel's bounds), got {value!r}",
                           shown="period={:g}ms"),
    "cpu_weight": Param("weight", None, "cgroup", "the cgroup's CPU weight 1..10000 (100 normal), or idle "
                        "(cpu.weight / cpu.idle; CPUWeight=)", low=1, high=10000,
                        why="cpu_weight must be 1..10000 or idle (or null), got {value!r}", **_CG, shown="weight={}"),
    "memory_high_gb": Param("float", None, "cgroup", "memory above this is reclaimed hard (memory.high; MemoryHigh=)",
                            low=0.01, why="memory_high_gb must be a size in GB above 0 (or null), got {value!r}", **_CG,
                            shown="mem_high={:g}GB"),
    "memory_max_gb": Param("float", None, "cgroup", "the kernel's OOM killer ends the trial above this "
                           "(memory.max; MemoryMax=)", low=0.01,
                           why="memory_max_gb must be a size in GB above 0 (or null), got {value!r}", **_CG,
                           shown="mem_max={:g}GB"),
})
CGROUP_KNOBS = tuple(name for name, p in PARAMS.items() if p.applied == "cgroup")
# The knobs that limit by themselves (a period is not a limit without a quota).
CGROUP_LIMITS = tuple(name for name in CGROUP_KNOBS if not PARAMS[name].only_with)

SERVER_ONLY = tuple(name for name, p in PARAMS.items() if p.backends == _SERVER)
CONFIG_KNOBS = tuple(name for name, p in PARAMS.items() if p.applied != "sampling")  # TrialConfig's fields
NEW_KEYS = tuple(name for name, p in PARAMS.items() if not p.recorded_at_default)


def defaults() -> dict[str, Any]:
    """Each knob's value when a space neither sweeps nor fixes it (derived ones are absent)."""
    return {name: p.default for name, p in PARAMS.items() if p.default is not DERIVED}


def is_set(name: str, value: Any) -> bool:
    """Whether ``value`` sets knob ``name`` away from what it is when left alone."""
    return value is not None and value != PARAMS[name].default


def idle_knobs(values: dict[str, Any]) -> dict[str, str]:
    """The knobs ``values`` sets that the rest of ``values`` makes meaningless, each with why: one
    its backend cannot take, or one whose ``only_with`` knob is left alone."""
    backend = values.get("backend") or PARAMS["backend"].default
    idle = {}
    for name, p in PARAMS.items():
        if not is_set(name, values.get(name)):
            continue
        if backend not in p.backends:
            idle[name] = f"{backend_reason(name)}, and backend is {backend}"
        elif p.only_with and not is_set(p.only_with, values.get(p.only_with)):
            idle[name] = f"{name} only means something with {p.only_with} set, which is left {left_alone(p.only_with)}"
    return idle


def left_alone(name: str) -> str:
    """How knob ``name`` reads when left at its default: ``unset``, or ``at none``."""
    default = PARAMS[name].default
    return "unset" if default is None else f"at {default}"


_PROGRAMS = {"python": "llama-cpp-python", "server": "llama-server"}


def backend_reason(name: str) -> str:
    """Why a backend outside knob ``name``'s ``backends`` cannot take it."""
    p = PARAMS[name]
    return p.backend_why or f"{name} is a {' or '.join(_PROGRAMS[b] for b in p.backends)} knob"
