"""A trial's outcome from an Observation: figures, failure classification and scoring as pure
functions, each checked here without a model, a worker or a clock."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import pytest

from sweep.correctness.tasks import Task
from sweep.measure.monitor import Series, Window
from sweep.records import TrialConfig, TrialSettings
from sweep.trial.outcome import Observation, classify, figures, outcome_of, score

SETTINGS = TrialSettings(prompts=2, noise_max_pct=30, memory_limit_gb=1.0)
TASKS = [Task(id="v1", kind="verdict", input="powershell -enc ...", expected="malicious", source="test"),
         Task(id="v2", kind="verdict", input="ls -la", expected="benign", source="test")]
ME = os.getpid()


def _config(**kw: Any) -> TrialConfig:
    base = dict(model="m", quant="Q4_0", model_path="/nonexistent.gguf", chat_format=None, n_threads=1,
                n_threads_batch=1, n_batch=64, n_ubatch=64, n_ctx=512, max_tokens=8)
    return TrialConfig(**{**base, **kw})


def _msg(kind: str, **kw: Any) -> dict[str, Any]:
    return {"v": 1, "type": kind, **kw}


def _observation(answers: tuple[str, ...] = ("malicious", "malicious"), **kw: Any) -> Observation:
    """A worker that loaded at t=1.1, idled until 2.0, answered two prompts by 3.0 and ended: with
    windows inside the phases, the LLM at 100% of a core while it answered, the machine at 60%."""
    phases = [("load", 1.0), ("imported", 1.1), ("idle", 1.2), ("active", 2.0), ("done", 3.0)]
    messages: list[dict[str, Any]] = [{"type": "phase", "phase": "start", "t": 0.9}]
    messages += [_msg("phase", phase=p, t=t) for p, t in phases[:4]]
    messages += [_msg("prompt", index=i, answer=a, latency_s=0.4 + 0.1 * i, decode_s=0.3, completion_chunks=3)
                 for i, a in enumerate(answers)]
    messages += [_msg("knobs", threads=[{"tid": ME, "cpus": "0-1", "nice": 0, "policy": "normal"}]),
                 _msg("phase", phase="done", t=3.0), _msg("result")]
    windows = [Window(t0, t1, tree_cpu_s=(t1 - t0) if t0 >= 2.0 else 0.0, core_busy=[0.6, 0.6], rss_anon_kb=100_000)
               for t0, t1 in ((1.2, 1.6), (1.6, 2.0), (2.0, 2.5), (2.5, 3.0))]
    base = dict(config=_config(), messages=tuple(messages), protocol_errors=(), series=Series(0.5, 2, windows),
                returncode=0, maxrss_kb=120_000, stderr_tail="", started=0.0, ended=3.2)
    return Observation(**{**base, **kw})  # type: ignore[arg-type]


def test_figures_are_computed_from_the_observation_alone() -> None:
    figs, tags = figures(_observation(), SETTINGS)
    assert tags == ["idle", "idle", "active", "active"]
    assert figs["latency_p50_s"] == pytest.approx(0.45)
    assert figs["pre_trial_s"] == pytest.approx(0.9) and figs["spawn_import_s"] == pytest.approx(0.2)
    assert figs["model_load_s"] == pytest.approx(0.1)
    # Others' load while it answered: the machine's 60% less the LLM's 50% of the machine.
    assert figs["other_cpu_active_pct"] == pytest.approx(10.0) and figs["machine_busy_active"] == 0.0
    assert figs["memory_limit_sampled"] == 1.0  # no cgroup: the memory limit is sampled


def test_a_clean_run_is_scored_and_a_failure_is_named() -> None:
    obs = _observation()
    out = outcome_of(obs, SETTINGS, TASKS)
    assert out.ok and out.figures["correctness"] == pytest.approx(0.5) and out.by_kind == {"verdict": 0.5}
    assert out.series["phase"] == ["idle", "idle", "active", "active"]
    figs, _ = figures(obs, SETTINGS)
    assert classify(obs, figs, SETTINGS, len(TASKS)) is None
    cases = [
        (dict(killed_for="no_progress", returncode=-9), ("timeout", "no progress for 120 s")),
        (dict(returncode=-11), ("crashed", "worker killed by SIGSEGV")),
        (dict(returncode=3), ("crashed", "worker exited with status 3")),
        (dict(maxrss_kb=2 * 1024**2), ("memory_budget", "peak RSS 2.00 GB (the kernel's high-water mark) went "
                                                         "over 1 GB between two samples")),
        (dict(messages=obs.messages[:-1]), ("protocol", "result missing (2/2 answers)")),
        (dict(cgroup=True, cgroup_figures={"cg_oom_kills": 1.0}),
         ("memory_budget", "the cgroup's OOM killer ended 1 process(es) of the trial at memory_max_gb 0.5 "
                           "(the kernel's count)")),
    ]
    for change, expected in cases:
        changed = replace(obs, **change)
        if "cgroup" in change:
            changed = replace(changed, config=_config(memory_max_gb=0.5))
        f, _ = figures(changed, SETTINGS)
        assert classify(changed, f, SETTINGS, len(TASKS)) == expected, change


def test_a_knob_the_worker_did_not_get_is_a_failure() -> None:
    obs = replace(_observation(), config=_config(nice=19))
    figs, _ = figures(obs, SETTINGS)
    reason, detail = classify(obs, figs, SETTINGS, len(TASKS))  # type: ignore[misc]
    assert reason == "knob_not_applied" and f"thread {ME} has nice 0, not 19" in detail


def test_an_early_abort_scores_the_answers_it_has() -> None:
    obs = _observation(answers=("malicious",), killed_for="early_abort", returncode=-9)
    figs, _ = figures(obs, SETTINGS)
    assert classify(obs, figs, SETTINGS, len(TASKS)) is None
    answers, by_kind, records = score(obs, TASKS, figs)
    assert len(answers) == 1 and figs["early_abort"] == 1.0 and figs["n_answered"] == 1
    assert figs["correctness"] == 1.0 and records == []
