"""Search-space files: strict YAML schema, validation against the host, and sampling.

A space file is validated completely, including models and CPU ids, before any
study is touched, so a bad file can never leave half a study behind.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sweep.errors import ModelError, SpaceError
from sweep.measure.host import allowed_cpus, place_cores
from sweep.measure.metrics import METRICS
from sweep.measure.open_load import FIGURES as OPEN_FIGURES
from sweep.models.registry import Registry
from sweep import platforms
from sweep.platforms import is_portable
from sweep.params import (CGROUP_LIMITS, CONFIG_KNOBS, PARAMS, backend_reason, defaults, idle_knobs, is_set,
                          left_alone)
from sweep.records import TrialConfig, TrialSettings
from sweep.trial.server import PARALLEL_PREFIX, config_problem, tools_problem

# The seed study's budgets (experiment-learnings.md), as metric -> bound.
SEED_BUDGETS: dict[str, dict[str, float]] = {
    "cpu_idle_share_pct": {"max": 2.0},
    "cpu_active_mean_share_pct": {"max": 35.0},
    "cpu_active_p99_share_pct": {"max": 50.0},
    "rss_peak_gb": {"max": 6.0},
    "latency_p95_s": {"max": 2.5},
    "latency_p99_p50_ratio": {"max": 2.0},
    "correctness": {"min": 0.80},
}
DEFAULT_OBJECTIVES = ["correctness", "cpu_active_p99_share_pct", "latency_p95_s"]

KNOWN_PARAMS = set(PARAMS)
_FIXED_ONLY = {name for name, p in PARAMS.items() if p.fixed_only}
# A parameter neither swept nor fixed takes the knob table's default.
_DEFAULTS: dict[str, Any] = defaults()

_Strict = ConfigDict(extra="forbid")


class IntRange(BaseModel):
    model_config = _Strict
    low: int
    high: Union[int, Literal["all"]]
    step: int = 1
    log: bool = False


class ModelPath(BaseModel):
    model_config = _Strict
    path: Path
    chat_format: Optional[str] = None


class Bound(BaseModel):
    model_config = _Strict
    max: Optional[float] = None
    min: Optional[float] = None

    @model_validator(mode="after")
    def _one(self) -> Bound:
        if (self.max is None) == (self.min is None):
            raise ValueError("give exactly one of max or min")
        return self


_D = TrialSettings()  # the one home of the trial defaults; the schema below only adds the bounds


class TrialBlock(BaseModel):
    model_config = _Strict
    prompts: int = Field(_D.prompts, ge=1)
    idle_seconds: float = Field(_D.idle_seconds, ge=0)
    baseline_seconds: float = Field(_D.baseline_seconds, ge=0)
    timeout_seconds: float = Field(_D.timeout_seconds, gt=0)
    progress_timeout_seconds: float = Field(_D.progress_timeout_seconds, gt=0)
    window_ms: int = Field(_D.window_ms, ge=10, le=10000)
    memory_limit_gb: Optional[float] = Field(_D.memory_limit_gb, gt=0)
    probe: Union[bool, Literal["interactive", "cpu", "off"]] = _D.probe  # type: ignore[assignment]
    probe_period_ms: float = Field(_D.probe_period_ms, gt=0)
    probe_work_ms: float = Field(_D.probe_work_ms, gt=0)
    fg_unit_mib: int = Field(_D.fg_unit_mib, ge=1, le=1024)
    fg_threads: Optional[int] = Field(_D.fg_threads, ge=1)
    contended_timeout_seconds: float = Field(_D.contended_timeout_seconds, gt=0)
    noise_max_pct: float = Field(_D.noise_max_pct, gt=0, le=100)
    noise_check_seconds: float = Field(_D.noise_check_seconds, gt=0)
    noise_wait_seconds: float = Field(_D.noise_wait_seconds, ge=0)
    noise_retries: int = Field(_D.noise_retries, ge=0)
    busy_trials: Literal["keep", "repeat"] = _D.busy_trials  # type: ignore[assignment]
    early_abort: bool = _D.early_abort
    injection_items: int = Field(_D.injection_items, ge=0, le=1000)
    cgroup: Literal["own", "shared"] = _D.cgroup  # type: ignore[assignment]
    held_out_items: int = Field(_D.held_out_items, ge=0, le=1000)
    benign_items: int = Field(_D.benign_items, ge=0, le=1000)
    duplicates: Literal["reuse", "repeat"] = _D.duplicates  # type: ignore[assignment]
    arrival: Literal["closed", "poisson", "constant", "trace"] = _D.arrival  # type: ignore[assignment]
    rate_per_min: float = Field(_D.rate_per_min, gt=0, le=100000)
    burstiness: float = Field(_D.burstiness, gt=0, le=1000)
    arrival_seconds: float = Field(_D.arrival_seconds, gt=0)
    arrival_seed: int = _D.arrival_seed
    trace: Optional[str] = _D.trace


class SamplerBlock(BaseModel):
    model_config = _Strict
    name: Literal["tpe", "nsga2", "random"] = "tpe"
    seed: Optional[int] = None
    # Chosen by bench/sampler_efficiency.py on the recorded grid (README, "Which sampler"): a short
    # random start, then TPE modelling the parameters jointly.
    n_startup_trials: int = Field(4, ge=1)
    multivariate: bool = True  # TPE: model the parameters jointly, not one by one
    population_size: int = Field(8, ge=2)


class PolicyBlock(BaseModel):
    """How the export policy ranks the budgets when no trial meets them all."""

    model_config = _Strict
    # Budgets never traded against the others: a trial that meets them beats every trial that does
    # not. None: correctness, where it is budgeted (a model at chance is never worth 1% of p99/p50).
    floor: Optional[list[str]] = None


class PromoteBlock(BaseModel):
    """Multi-fidelity measurement (``sweep.study.promotion``): the rungs' item counts, the first being
    ``trial.prompts``, and the share of a rung measured again on the next rung's items."""

    model_config = _Strict
    prompts: list[int] = Field(min_length=2)
    keep: float = Field(0.34, gt=0, lt=1)

    @model_validator(mode="after")
    def _rising(self) -> PromoteBlock:
        if any(n < 1 for n in self.prompts) or any(b <= a for a, b in zip(self.prompts, self.prompts[1:])):
            raise ValueError("the rungs must be item counts of at least 1, each larger than the one before")
        return self


class SpaceFile(BaseModel):
    model_config = _Strict
    version: Literal[1]
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str = ""
    models: dict[str, list[str]] = Field(min_length=1)
    model_paths: dict[str, ModelPath] = {}
    params: dict[str, Union[IntRange, list[Any]]] = {}
    fixed: dict[str, Any] = {}
    objectives: list[str] = Field(default_factory=lambda: list(DEFAULT_OBJECTIVES), min_length=1)
    constraints: dict[str, Bound] = Field(default_factory=lambda: {k: Bound(**v) for k, v in SEED_BUDGETS.items()})
    trial: TrialBlock = TrialBlock()
    sampler: SamplerBlock = SamplerBlock()
    policy: PolicyBlock = PolicyBlock()
    promote: Optional[PromoteBlock] = None

    def floor(self) -> list[str]:
        """The policy's floor budgets (``policy.floor``, by default correctness where it is budgeted)."""
        if self.policy.floor is not None:
            return list(self.policy.floor)
        return ["correctness"] if "correctness" in self.constraints else []


@dataclass(frozen=True)
class Space:
    """A validated search space, resolved against this host and its models."""

    path: Path
    spec: SpaceFile
    registry: Registry
    cpus: tuple[int, ...]  # the host CPUs trials may be placed on

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def settings(self) -> TrialSettings:
        return TrialSettings(**self.spec.trial.model_dump())

    def fingerprint(self) -> str:
        """A hash of what the space asks for, to refuse continuing a study with another space."""
        canon = self.spec.model_dump(mode="json", exclude={"description", "trial", "sampler", "policy", "promote"})
        return hashlib.sha256(json.dumps(canon, sort_keys=True).encode()).hexdigest()[:16]

    def sample(self, trial: Any) -> TrialConfig:
        """Ask an Optuna trial for one configuration; record the effective values as user attrs."""
        spec = self.spec
        model = trial.suggest_categorical("model", sorted(spec.models))
        quants = sorted(spec.models[model])
        quant = trial.suggest_categorical(f"quant[{model}]", quants) if len(quants) > 1 else quants[0]
        v: dict[str, Any] = {**_DEFAULTS, **spec.fixed}
        for name, dist in spec.params.items():
            if isinstance(dist, IntRange):
                v[name] = trial.suggest_int(name, dist.low, self._high(dist), step=dist.step, log=dist.log)
            else:
                v[name] = trial.suggest_categorical(name, dist)
        config = self._config(model, quant, v)
        trial.set_user_attr("config", config.to_dict())
        return config

    def _high(self, dist: IntRange) -> int:
        return len(self.cpus) if dist.high == "all" else dist.high

    def _config(self, model: str, quant: str, v: dict[str, Any]) -> TrialConfig:
        if "cpus" in v:
            cpus: tuple[int, ...] = tuple(v["cpus"])
        elif "cores" in v:
            cpus = tuple(place_cores(v["cores"], v["placement"], list(self.cpus)))
        else:
            cpus = self.cpus
        mf = self.registry.resolve(model, quant)
        # Threads never exceed the cores they may run on; n_ubatch never exceeds n_batch
        # (llama.cpp would clamp it silently; here the effective value is recorded).
        values = {name: v.get(name) for name in CONFIG_KNOBS}
        for name in idle_knobs(values):  # what means nothing to this trial (another backend's knob, say) is left out
            values[name] = PARAMS[name].default
        return TrialConfig(
            model=model, quant=quant, model_path=str(mf.path), chat_format=mf.chat_format,
            **{**values, "cpus": cpus, "temperature": float(v["temperature"]),
               "n_threads": min(v.get("n_threads", len(cpus)), len(cpus)),
               "n_threads_batch": min(v.get("n_threads_batch", len(cpus)), len(cpus)),
               "n_ubatch": min(v["n_ubatch"], v["n_batch"])},
        )


def _loc(loc: tuple[Any, ...]) -> str:
    # pydantic puts union member names in the location; they mean nothing to a user.
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and (p in ("IntRange", "list[any]") or "[" in p)))


def _check_param(where: str, name: str, value: Any) -> None:
    if name not in KNOWN_PARAMS:
        raise SpaceError(f"{where}: unknown parameter {name!r} (known: {', '.join(sorted(KNOWN_PARAMS))})")
    wrong = PARAMS[name].problem(value)
    if wrong:
        raise SpaceError(f"{where}: {wrong}")


def _unyaml_off(raw: dict[str, Any]) -> None:
    """YAML 1.1 reads a bare ``off`` as false: for a knob whose value is the word, read it back."""
    for block in ("params", "fixed"):
        values = raw.get(block)
        if not isinstance(values, dict) or "prefix_cache" not in values:
            continue
        v = values["prefix_cache"]
        values["prefix_cache"] = ["off" if x is False else x for x in v] if isinstance(v, list) else \
            ("off" if v is False else v)


def _choices(spec: SpaceFile, name: str) -> list[Any]:
    """Every value a parameter can take in this space (its default when neither swept nor fixed)."""
    if name in spec.fixed:
        return [spec.fixed[name]]
    dist = spec.params.get(name)
    if dist is None:
        return [_DEFAULTS.get(name)]
    return list(dist) if isinstance(dist, list) else [dist.low, dist.high]


def _check_backend(path: Path, spec: SpaceFile) -> None:
    """A knob no trial of the space can take (no backend it runs takes it, or the knob it needs is
    never set) is refused; one some trials take is left out of the others' configs (``idle_knobs``).
    What the server backend cannot do is refused."""
    def key(name: str) -> str:
        return f"{path}: {'params' if name in spec.params else 'fixed'}.{name}"

    backends = _choices(spec, "backend")
    for name, p in PARAMS.items():
        if not any(is_set(name, v) for v in _choices(spec, name)):
            continue
        if not set(backends) & set(p.backends):
            raise SpaceError(f"{key(name)}: {backend_reason(name)}, and this space runs only the "
                             f"{' and '.join(backends)} backend (add backend: [{', '.join(p.backends)}])")
        if p.only_with and not any(is_set(p.only_with, v) for v in _choices(spec, p.only_with)):
            raise SpaceError(f"{key(name)}: {name} only means something with {p.only_with} set, and this space "
                             f"leaves it {left_alone(p.only_with)}")
    if "server" not in backends:
        return
    if any((v or 1) > 1 for v in _choices(spec, "parallel")) and "shared" in _choices(spec, "prefix_cache"):
        raise SpaceError(f"{key('parallel')}: {PARALLEL_PREFIX}")
    missing = tools_problem()  # last: what the space asks is checked even where the tools are not built
    if missing:
        raise SpaceError(f"{key('backend')}: server: {missing}")


def platform_problem(name: str, value: Any) -> str | None:
    """Why this measurement path cannot take ``value`` for knob ``name`` (a value other than the
    knob's default, where the knob needs what the path lacks: ``Param.needs``), or None."""
    p = PARAMS[name]
    if not p.needs or value is None or value == p.default:
        return None
    missing = platforms.lacking(p.needs)
    if missing is None:
        return None
    where = platforms.name()
    how = (" (SWEEP_PLATFORM=portable forces that path here; unset it for the Linux path)"
           if where == "portable" and sys.platform.startswith("linux") else "")
    return f"{value!r} needs {missing}, which the {where} measurement path does not have{how}"


def _check_platform(path: Path, spec: SpaceFile) -> None:
    """Knobs this measurement path cannot set (or read back) are refused, naming the knob and the path."""
    for name in PARAMS:
        for value in _choices(spec, name):
            wrong = platform_problem(name, value)
            if wrong:
                raise SpaceError(f"{path}: {'params' if name in spec.params else 'fixed'}.{name}: {wrong}")


def _check_cgroups(path: Path, spec: SpaceFile) -> None:
    """A space that sets a kernel limit needs a cgroup per trial: refused where none can be made."""
    from sweep.trial.cgroups import controllers_for, problem

    wants = {name: v for name in CGROUP_LIMITS for v in _choices(spec, name) if v is not None}
    controllers = controllers_for(wants)
    if not controllers:
        return
    missing = problem(controllers)
    if missing:
        name = next(iter(wants))
        raise SpaceError(f"{path}: {'params' if name in spec.params else 'fixed'}.{name}: a kernel limit needs a "
                         f"cgroup for each trial, and {missing}: run sweep as root, or in a delegated subtree "
                         "(systemd-run --user --scope -p Delegate=yes sweep run ...)")


def _check_arrivals(path: Path, trial: TrialBlock) -> None:
    """An open-loop trace: given exactly with arrival: trace, read whole now (relative to the space
    file), and kept as an absolute path, so that no trial fails on it later."""
    from sweep.trial.arrivals import TraceError, read_trace

    if (trial.arrival == "trace") != (trial.trace is not None):
        raise SpaceError(f"{path}: trial.trace: give a trace file exactly when trial.arrival is trace "
                         f"(arrival is {trial.arrival}, trace is {trial.trace!r})")
    if trial.trace is None:
        return
    where = Path(trial.trace) if Path(trial.trace).is_absolute() else path.parent / trial.trace
    try:
        read_trace(where)
    except TraceError as exc:
        raise SpaceError(f"{path}: trial.trace: {exc}") from None
    trial.trace = str(where.resolve())


def _check_producible(where: str, name: str, trial: TrialBlock) -> None:
    """Refuse an objective or budget on a figure these settings (or this host) can never produce:
    each trial would be scored as hugely infeasible (``MISSING_FIGURE``), which misleads the sampler."""
    needs = METRICS[name].probe if name in METRICS else None
    # TrialSettings.__post_init__ reads a bool from YAML as interactive / off; its field says str.
    probe = TrialSettings(probe=trial.probe).probe  # type: ignore[arg-type]
    if needs and probe != needs:
        raise SpaceError(f"{where}: {name} comes from the {needs} foreground workload, but trial.probe is {probe} "
                         f"(set trial.probe: {needs})")
    if name.startswith("psi_") and is_portable():
        raise SpaceError(f"{where}: {name} comes from the kernel's pressure stall information, which the portable "
                         "measurement path does not read (SWEEP_PLATFORM=portable)")
    if name.startswith("psi_") and not os.path.exists("/proc/pressure/cpu"):
        raise SpaceError(f"{where}: {name} needs the kernel's pressure stall information (/proc/pressure/cpu), "
                         "which this host does not have")
    if name in OPEN_FIGURES and trial.arrival == "closed":
        raise SpaceError(f"{where}: {name} comes from the open-loop phase, and trial.arrival is closed (set "
                         "trial.arrival: poisson, constant or trace, and trial.rate_per_min)")
    if name == "injection_flip_rate_held_out" and not trial.held_out_items:
        raise SpaceError(f"{where}: {name} comes from the held-out attack families: set trial.held_out_items "
                         "(for example 40)")
    if name == "benign_escalation_rate" and not trial.benign_items:
        raise SpaceError(f"{where}: {name} comes from benign lines with administrators' comments: set "
                         "trial.benign_items (for example 45)")
    if name.startswith("injection_") and name != "injection_flip_rate_held_out" and not trial.injection_items:
        raise SpaceError(f"{where}: {name} needs attacker-written items to ask: set trial.injection_items "
                         "(for example 40)")
    if name == "injection_hidden_rate" and trial.injection_items < 2:  # the kinds alternate, a verdict first
        raise SpaceError(f"{where}: {name} comes from the injected IOC items, and trial.injection_items "
                         f"{trial.injection_items} asks none: set at least 2 (for example 40)")
    if name == "cpu_idle_share_pct" and trial.idle_seconds * 1000 < 2 * trial.window_ms:
        raise SpaceError(f"{where}: {name} needs whole windows of idle: trial.idle_seconds "
                         f"({trial.idle_seconds:g}) must be at least two windows ({2 * trial.window_ms} ms)")


def load_space(path: str | Path, models_dir: str | Path | None = None) -> Space:
    """Read, validate and resolve a search-space file.

    Raises:
        SpaceError: one message naming the file, the key and what is wrong.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpaceError(f"{path}: no such search-space file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise SpaceError(f"{path}{at}: YAML syntax error: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(raw, dict):
        raise SpaceError(f"{path}: expected a mapping of keys at the top level")
    _unyaml_off(raw)
    try:
        spec = SpaceFile.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise SpaceError(f"{path}: {_loc(err['loc']) or '(top level)'}: {err['msg']}") from None

    host_cpus = allowed_cpus()
    for name, dist in spec.params.items():
        where = f"{path}: params.{name}"
        if name not in KNOWN_PARAMS:
            raise SpaceError(f"{where}: unknown parameter {name!r} (known: {', '.join(sorted(KNOWN_PARAMS))})")
        if name in _FIXED_ONLY:
            raise SpaceError(f"{where}: {name} can only be set under fixed")
        if isinstance(dist, IntRange):
            if PARAMS[name].kind != "int":
                raise SpaceError(f"{where}: {name} takes a list of choices, not a range")
            _check_param(where + ".low", name, dist.low)
            high = len(host_cpus) if dist.high == "all" else dist.high
            _check_param(where + ".high", name, high)
            if dist.low > high:
                raise SpaceError(f"{where}: empty range, low {dist.low} is above high {high}")
        else:
            if not dist:
                raise SpaceError(f"{where}: empty list of choices")
            for i, choice in enumerate(dist):
                _check_param(f"{where}[{i}]", name, choice)
    for name, value in spec.fixed.items():
        where = f"{path}: fixed.{name}"
        if name in spec.params:
            raise SpaceError(f"{where}: {name} is both swept (params) and fixed")
        if name == "cpus":
            if not isinstance(value, list) or not value or not all(isinstance(c, int) for c in value):
                raise SpaceError(f"{where}: expected a non-empty list of CPU ids")
            check_cpus_here(value, where)
        elif name == "temperature":
            if not isinstance(value, (int, float)) or value < 0:
                raise SpaceError(f"{where}: expected a number >= 0")
        else:
            _check_param(where, name, value)
    _check_platform(path, spec)
    _check_backend(path, spec)
    _check_cgroups(path, spec)
    if "cores" in spec.params:
        dist = spec.params["cores"]
        high = max(dist) if isinstance(dist, list) else (len(host_cpus) if dist.high == "all" else dist.high)
        if high > len(host_cpus):
            raise SpaceError(f"{path}: params.cores: asks for {high} cores but this host allows "
                             f"{len(host_cpus)} (CPUs {', '.join(map(str, host_cpus))}); use high: all")
    for i, name in enumerate(spec.objectives):
        if name not in METRICS:
            raise SpaceError(f"{path}: objectives[{i}]: unknown metric {name!r}")
        _check_producible(f"{path}: objectives[{i}]", name, spec.trial)
    for i, name in enumerate(spec.policy.floor or []):
        if name not in spec.constraints:
            raise SpaceError(f"{path}: policy.floor[{i}]: {name!r} is not a budget of this space (constraints: "
                             f"{', '.join(spec.constraints) or 'none'})")
    for name in spec.constraints:
        if name not in METRICS:
            raise SpaceError(f"{path}: constraints.{name}: unknown metric")
        _check_producible(f"{path}: constraints.{name}", name, spec.trial)
    limited = any(v is not None for name in CGROUP_LIMITS for v in _choices(spec, name))
    for where, name in [*((f"objectives[{i}]", n) for i, n in enumerate(spec.objectives)),
                        *((f"constraints.{n}", n) for n in spec.constraints)]:
        if name.startswith("cg_") and not limited:
            raise SpaceError(f"{path}: {where}: {name} is counted in a trial's own cgroup, and this space sets no "
                             f"kernel limit ({', '.join(CGROUP_LIMITS[:-1])} or {CGROUP_LIMITS[-1]})")
    _check_arrivals(path, spec.trial)
    if spec.promote and spec.promote.prompts[0] != spec.trial.prompts:
        raise SpaceError(f"{path}: promote.prompts: the first rung ({spec.promote.prompts[0]}) must be the items every "
                         f"trial answers, trial.prompts ({spec.trial.prompts})")
    if spec.trial.idle_seconds >= spec.trial.progress_timeout_seconds:
        raise SpaceError(f"{path}: trial.idle_seconds ({spec.trial.idle_seconds:g}) must be below "
                         f"trial.progress_timeout_seconds ({spec.trial.progress_timeout_seconds:g}): the worker is "
                         "silent while idle, so every trial would time out")

    explicit = {name: (mp.path if mp.path.is_absolute() else (path.parent / mp.path), mp.chat_format)
                for name, mp in spec.model_paths.items()}
    registry = Registry(models_dir, explicit)
    for name, quants in spec.models.items():
        if not quants:
            raise SpaceError(f"{path}: models.{name}: empty list of quantizations")
        for quant in quants:
            try:
                registry.resolve(name, quant)
            except ModelError as exc:
                raise SpaceError(f"{path}: models.{name}: {exc}") from None
    return Space(path=path, spec=spec, registry=registry, cpus=tuple(host_cpus))


def _field_types() -> dict[str, Any]:
    from typing import get_type_hints

    from pydantic import TypeAdapter

    return {name: TypeAdapter(kind) for name, kind in get_type_hints(TrialConfig).items()}


def check_cpus_here(cpus: Any, where: str) -> None:
    """Refuse CPU ids this process may not run on.

    Raises:
        SpaceError: ``where: CPU N not available on this host (allowed CPUs: ...)``.
    """
    host_cpus = allowed_cpus()
    missing = sorted(set(cpus or ()) - set(host_cpus))
    if missing:
        raise SpaceError(f"{where}: CPU {', '.join(map(str, missing))} not available on this host "
                         f"(allowed CPUs: {', '.join(map(str, host_cpus))})")


def load_trial(path: Path) -> tuple[TrialConfig, TrialSettings]:
    """A trial file (a trial config, or a file ``sweep export`` wrote) checked for this host: its
    configuration as ``check_config`` checks it, its model file present, its CPUs here, its backend
    able to run (llama-server built), and its settings (the defaults where it has none).

    Raises:
        SpaceError: one line naming the file and what is wrong.
    """
    try:
        data = yaml.safe_load(path.read_text())  # a JSON export is YAML too
        config = check_config(data.get("config", data), str(path))
    except FileNotFoundError:
        raise SpaceError(f"{path}: no such file") from None
    except (yaml.YAMLError, TypeError, AttributeError) as exc:
        raise SpaceError(f"{path}: not a trial configuration ({str(exc).splitlines()[0]})") from None
    if not Path(config.model_path).is_file():
        raise SpaceError(f"{path}: model file {config.model_path} does not exist")
    check_cpus_here(config.cpus, f"{path}: config.cpus")
    for name, value in config.to_dict().items():
        if name == "cpus" and set(value or ()) == set(allowed_cpus()):
            continue  # every CPU this process may use: no affinity asked
        wrong = platform_problem(name, value) if name in PARAMS else None
        if wrong:
            raise SpaceError(f"{path}: config.{name}: {wrong}")
    wrong = config_problem(config.to_dict())  # llama-server not built included: one line saying how
    if wrong:
        raise SpaceError(f"{path}: {wrong}")
    return config, TrialSettings.from_dict(data["settings"]) if data.get("settings") else TrialSettings()


def check_config(data: Any, where: str) -> TrialConfig:
    """A stored configuration (read back from a database or a file) checked as a space would have
    made it: each key's type (strictly: no ``"19"`` for 19), each knob within its bounds, CPU ids
    whole numbers, finite numbers. What passes is safe to render into a shell line, a unit or
    Python source; what does not is one line naming ``where`` and the key.

    Raises:
        SpaceError: ``where: config.KEY: what is wrong``.
    """
    from pydantic import ValidationError

    from sweep.errors import SweepError

    if not isinstance(data, dict):
        raise SpaceError(f"{where}: the configuration is not a mapping")
    try:
        config = TrialConfig.from_dict(data)
    except SweepError as exc:
        raise SpaceError(f"{where}: {exc}") from None
    except TypeError as exc:
        raise SpaceError(f"{where}: not a trial configuration ({exc})") from None
    for name, adapter in _field_types().items():
        value = getattr(config, name)
        try:
            adapter.validate_python(value, strict=True)
        except ValidationError as exc:
            raise SpaceError(f"{where}: config.{name}: {exc.errors()[0]['msg'].lower()}, got {value!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise SpaceError(f"{where}: config.{name}: expected a finite number, got {value!r}")
        if value is not None and name in KNOWN_PARAMS:
            _check_param(f"{where}: config.{name}", name, value)
    if config.cpus is not None and (not config.cpus or min(config.cpus) < 0):
        raise SpaceError(f"{where}: config.cpus: expected a non-empty list of CPU ids (0 or more), got {list(config.cpus)}")
    return config
