"""The records that cross process and storage boundaries: frozen, typed, versioned.

A record that is stored or sent has ``to_dict``/``from_dict``; ``from_dict`` refuses a
record of another schema version rather than guessing. (``Outcome`` never leaves the
orchestrator whole: its parts are stored as figures, series and answers.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from sweep.errors import SweepError
from sweep.params import NEW_KEYS, PARAMS

SCHEMA_VERSION = 1
SchedPolicy = Literal["normal", "batch", "idle"]


def _check_version(kind: str, data: dict[str, Any]) -> None:
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise SweepError(f"{kind} record has schema version {version!r}; this sweep reads version {SCHEMA_VERSION}")


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names - {"schema_version"})
    if unknown:
        raise SweepError(f"{cls.__name__} record has unknown keys: {', '.join(unknown)}")
    return {k: v for k, v in data.items() if k in names}


def _default(name: str) -> Any:
    """A knob's default, from the knob table (never written twice)."""
    return PARAMS[name].default


@dataclass(frozen=True)
class TrialConfig:
    """Everything the worker needs to run one configuration."""

    model: str
    quant: str
    model_path: str
    chat_format: str | None
    n_threads: int
    n_threads_batch: int
    n_batch: int
    n_ubatch: int
    n_ctx: int
    cpus: tuple[int, ...] | None = None  # CPU affinity; None leaves it as inherited
    # The knobs, in the table's order; what each means, its bounds and its default: sweep.params.PARAMS.
    nice: int = _default("nice")
    sched_policy: SchedPolicy = _default("sched_policy")
    omp_wait_policy: Literal["passive", "active"] | None = _default("omp_wait_policy")
    gomp_spincount: int | None = _default("gomp_spincount")
    max_tokens: int = _default("max_tokens")
    temperature: float = _default("temperature")
    pace_tps: float | None = _default("pace_tps")
    pace_duty: float | None = _default("pace_duty")
    shots: int = _default("shots")
    output: Literal["free", "grammar", "json"] = _default("output")
    prefix_cache: Literal["off", "shared"] = _default("prefix_cache")
    input_guard: Literal["none", "escape", "delimit", "sandwich", "floor", "detect", "union", "differential",
                         "layered"] = _default("input_guard")
    ioc_hints: Literal["none", "regex"] = _default("ioc_hints")
    context: Literal["none", "attack-catalog"] = _default("context")
    context_k: int = _default("context_k")
    backend: Literal["python", "server"] = _default("backend")
    poll: int | None = _default("poll")
    poll_batch: int | None = _default("poll_batch")
    prio: int | None = _default("prio")
    prio_batch: int | None = _default("prio_batch")
    parallel: int | None = _default("parallel")
    cpu_strict: int | None = _default("cpu_strict")
    cpu_quota_pct: float | None = _default("cpu_quota_pct")
    cpu_period_ms: float = _default("cpu_period_ms")
    cpu_weight: int | Literal["idle"] | None = _default("cpu_weight")
    memory_high_gb: float | None = _default("memory_high_gb")
    memory_max_gb: float | None = _default("memory_max_gb")
    seed: int = 1234

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cpus"] = list(self.cpus) if self.cpus is not None else None
        # Keys added since the first records are left out at their defaults, so a record (and what
        # finds duplicates by it) is what it was before they existed.
        for name in NEW_KEYS:
            if d[name] == PARAMS[name].default:
                del d[name]
        return {"schema_version": SCHEMA_VERSION, **d}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialConfig:
        _check_version("TrialConfig", data)
        kw = _known(cls, data)
        if kw.get("cpus") is not None:
            kw["cpus"] = tuple(kw["cpus"])
        return cls(**kw)

    def environment(self) -> dict[str, str]:
        """Variables the worker needs before ``llama_cpp`` is imported (OpenMP reads them at load)."""
        from sweep.trial.knobs import environment

        return environment(self.to_dict())

    def llama_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``llama_cpp.Llama``: the knobs the table applies through the bindings
        (both thread counts always explicit), and what is fixed here."""
        kw: dict[str, Any] = {name: getattr(self, name) for name, p in PARAMS.items() if p.applied == "bindings"}
        kw.update(model_path=self.model_path, n_gpu_layers=0, seed=self.seed, verbose=False)
        if self.chat_format:
            kw["chat_format"] = self.chat_format
        return kw


PROBES = ("interactive", "cpu", "off")


@dataclass(frozen=True)
class TrialSettings:
    """How a trial is run and measured, shared by every trial of a study."""

    prompts: int = 12
    idle_seconds: float = 5.0
    baseline_seconds: float = 1.0
    timeout_seconds: float = 300.0  # overall cap on the worker's life
    progress_timeout_seconds: float = 120.0  # the longest silence allowed between two worker messages
    window_ms: int = 100
    memory_limit_gb: float | None = None  # the runner kills the worker above this RSS
    # The foreground workload that stands in for the user: "interactive" (a light probe that
    # wakes every probe_period_ms), "cpu" (a CPU-bound build on every CPU; the model answers a
    # second, contended pass under it) or "off". Studies from before this field held a bool.
    probe: str = "interactive"
    probe_period_ms: float = 50.0
    probe_work_ms: float = 2.0
    fg_unit_mib: int = 16  # "cpu": the fixed unit of work, SHA-256 over this many MiB
    fg_threads: int | None = None  # "cpu": threads of the workload; None = every CPU the host has
    # "cpu": the contended pass is cut after this long; its unanswered prompts then count as
    # lower bounds (a polite model can starve under a CPU-bound user for minutes).
    contended_timeout_seconds: float = 60.0
    noise_max_pct: float = 30.0  # the noise guard waits while the machine is busier than this
    noise_check_seconds: float = 1.0  # with probe: cpu only; otherwise the baseline window is the noise check
    noise_wait_seconds: float = 10.0
    noise_retries: int = 3
    busy_trials: str = "keep"  # a trial measured while others loaded the machine: "keep" it (flagged) or "repeat" it
    early_abort: bool = True  # stop a trial once its latency p95 is provably over budget
    # Prompt injection: after its answers, the trial asks this many attacker-written variants of
    # verdict and IOC items (injection-v3's tuned styles, the two kinds in turn, a verdict item
    # first) and their clean originals, for the injection figures; 0: not measured.
    injection_items: int = 0
    # "own": the model runs in a cgroup of its own at normal weight, as its systemd unit will, and the
    # foreground in a sibling one, as a user's session is; "shared": both in the orchestrator's cgroup,
    # as a script started from the user's terminal runs (sweep.trial.cgroups.NORMAL_WEIGHT).
    cgroup: str = "own"
    held_out_items: int = 0  # as many variants of the held-out families (never tuned to), apart
    benign_items: int = 0  # as many benign lines with administrators' comments: the false-escalation side
    duplicates: str = "reuse"  # a configuration measured before: "reuse" its figures or "repeat" it
    # Open load (sweep.trial.arrivals): after the answers, events arrive at a rate for arrival_seconds
    # and are answered in arrival order, waiting behind each other; "closed": no such phase.
    arrival: str = "closed"  # closed, poisson, constant or trace
    rate_per_min: float = 6.0  # the mean arrival rate
    burstiness: float = 1.0  # the gamma shape of the gaps (1: poisson), as vLLM's --burstiness
    arrival_seconds: float = 60.0  # the open-loop phase's length
    arrival_seed: int = 0  # every trial of a study sees the same schedule
    trace: str | None = None  # arrival: trace: a JSONL file of {"t": seconds[, "item": id]}

    def __post_init__(self) -> None:
        if isinstance(self.probe, bool):
            object.__setattr__(self, "probe", "interactive" if self.probe else "off")
        if self.probe not in PROBES:
            raise SweepError(f"trial settings: probe {self.probe!r} is not one of {', '.join(PROBES)}")

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialSettings:
        _check_version("TrialSettings", data)
        return cls(**_known(cls, data))


@dataclass(frozen=True)
class Outcome:
    """What one trial produced: figures when it ran, a reason when it did not.

    ``figures`` maps metric names (see ``sweep.measure.metrics.METRICS``) to numbers;
    ``series`` is the monitor's window-by-window record; ``answers`` holds what
    the model said to each task.
    """

    ok: bool
    reason: str | None = None  # machine-readable failure reason
    detail: str = ""
    stderr_tail: str = ""
    figures: dict[str, float] = field(default_factory=dict)
    by_kind: dict[str, float] = field(default_factory=dict)
    answers: list[dict[str, Any]] = field(default_factory=list)
    series: dict[str, Any] = field(default_factory=dict)
    knobs: dict[str, Any] = field(default_factory=dict)
    wall_seconds: float = 0.0


@dataclass
class Progress:
    """What a display needs while a sweep runs: after each trial, at each phase, while waiting."""

    done: int
    target: int
    trial_number: int | None
    config: TrialConfig | None
    outcome: Outcome | None
    feasible: bool
    elapsed_s: float
    reused_from: int | None = None
    phase: str | None = None  # the trial in flight's phase, as the worker reports it
    done_this_run: int = 0  # trials finished by this run (for the ETA)
    study: Any = None
    waiting: str | None = None  # why no trial runs now (the measurement lock, another host's trials)
    promotes: tuple[int, int] | None = None  # a promotion trial's original and its items


META_VERSION = 1


@dataclass(frozen=True)
class StudyMeta:
    """What a study was made from and is judged against, as stored in its user attributes.

    Every module reads a study's objectives, budgets and settings through this one record.
    A study from before ``meta_version`` existed is version 1; a setting added to sweep since
    takes its default.
    """

    objectives: list[str]
    budgets: dict[str, dict[str, float]]
    settings: TrialSettings
    space_file: str = "?"
    space_fingerprint: str | None = None
    task_set: str = "tasks-v1"
    sweep_version: str = "?"
    models: dict[str, str] = field(default_factory=dict)
    host: dict[str, Any] = field(default_factory=dict)  # the host that created the study
    hardware_class: dict[str, Any] | None = None
    floor: list[str] | None = None  # the policy's floor budgets; None (a study from before): correctness

    def floors(self) -> list[str]:
        """The budgets the export policy never trades against the others."""
        if self.floor is not None:
            return [name for name in self.floor if name in self.budgets]
        return ["correctness"] if "correctness" in self.budgets else []

    @classmethod
    def of(cls, study: Any) -> StudyMeta:
        a = study.user_attrs
        version = a.get("meta_version", META_VERSION)
        if version != META_VERSION:
            raise SweepError(f"study {study.study_name!r} has metadata version {version!r}; this sweep reads "
                             f"version {META_VERSION}")
        if "objectives" not in a or "budgets" not in a:
            raise SweepError(f"study {study.study_name!r} was not made by sweep (it has no objectives and budgets)")
        stored = a.get("settings") or {}
        # Trials were measured in sweep's own cgroup before trial.cgroup existed: such a study stays
        # "shared", so that a continued one is never measured the other way under the same name.
        settings = {**TrialSettings().to_dict(), "cgroup": "shared", **stored,
                    "schema_version": SCHEMA_VERSION}
        names = {f.name for f in fields(cls)} - {"settings"}
        return cls(settings=TrialSettings.from_dict(settings), **{k: a[k] for k in names if k in a})

    def to_attrs(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["settings"] = self.settings.to_dict()
        return {"meta_version": META_VERSION, **out}


VERIFIED_PREFIX = "verified:"  # study user attribute "verified:<trial number>" holds a verification


def verifications(study: Any) -> dict[int, dict[str, Any]]:
    """Every stored verification of the study, by trial number."""
    return {int(k[len(VERIFIED_PREFIX):]): v for k, v in study.user_attrs.items() if k.startswith(VERIFIED_PREFIX)}
