"""Search-space validation: every bad input is one clear line, exit code 2, and no study is touched."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from sweep.errors import SpaceError
from sweep.measure.host import allowed_cpus
from sweep.study.space import load_space

from conftest import REPO, TINY_SPACE, sweep_cli, write_space

BAD_CPU = max(allowed_cpus()) + 64

BAD_CASES = {
    "yaml_syntax": (TINY_SPACE.replace("n_batch: [64, 512]", "n_batch: [64, 512"), ["YAML syntax error", ":"]),
    "unknown_key": (TINY_SPACE.replace("name: tiny", "name: tiny\ncolour: blue"), ["colour", "Extra inputs"]),
    "unknown_param": (TINY_SPACE.replace("nice: [0, 19]", "nicety: [0, 19]"), ["params.nicety:", "unknown parameter"]),
    "wrong_type": (TINY_SPACE.replace("n_batch: [64, 512]", "n_batch: [64, big]"), ["params.n_batch[1]", "whole number"]),
    "wrong_type_settings": (TINY_SPACE.replace("prompts: 3", "prompts: many"), ["trial.prompts"]),
    "empty_range": (TINY_SPACE.replace("{low: 1, high: all}", "{low: 4, high: 2}"), ["params.n_threads", "empty range"]),
    "empty_choices": (TINY_SPACE.replace("nice: [0, 19]", "nice: []"), ["params.nice", "empty"]),
    "bad_cpu_id": (TINY_SPACE.replace("n_ctx: 512", f"n_ctx: 512\n  cpus: [0, {BAD_CPU}]"),
                   ["fixed.cpus", f"CPU {BAD_CPU} not available"]),
    "too_many_cores": (TINY_SPACE.replace("nice: [0, 19]", f"cores: {{low: 1, high: {len(allowed_cpus()) + 1}}}"),
                       ["params.cores", "use high: all"]),
    "unknown_model": (TINY_SPACE.replace("smollm2-135m: [Q4_1]", "no-such-model: [Q4_K_M]"),
                      ["models.no-such-model", "unknown model"]),
    "missing_quant": (TINY_SPACE.replace("[Q4_1]", "[Q6_K]"), ["models.smollm2-135m", "sweep models quantize"]),
    "unknown_objective": (TINY_SPACE + "objectives: [speed]\n", ["objectives[0]", "unknown metric"]),
    "too_many_shots": (TINY_SPACE.replace("nice: [0, 19]", "shots: [0, 9]"), ["params.shots[1]", "shots must be 0..3"]),
    "unknown_output": (TINY_SPACE.replace("nice: [0, 19]", "output: [free, xml]"), ["params.output[1]", "'xml' is not one of"]),
    "idle_not_below_progress_timeout": (TINY_SPACE.replace("  noise_retries: 0\n",
                                                           "  noise_retries: 0\n  progress_timeout_seconds: 0.5\n"),
                                        ["trial.idle_seconds", "progress_timeout_seconds", "time out"]),
    "probe_figure_without_probe": (TINY_SPACE.replace("  noise_retries: 0\n", "  noise_retries: 0\n  probe: false\n")
                                   + "constraints:\n  fg_p95_ratio: {max: 1.2}\n",
                                   ["constraints.fg_p95_ratio", "trial.probe is off", "set trial.probe: interactive"]),
    "cpu_figure_with_interactive_probe": (TINY_SPACE + "constraints:\n  latency_p95_contended_s: {max: 5}\n",
                                          ["constraints.latency_p95_contended_s", "trial.probe is interactive",
                                           "set trial.probe: cpu"]),
    "unknown_probe": (TINY_SPACE.replace("  noise_retries: 0\n", "  noise_retries: 0\n  probe: build\n"),
                      ["trial.probe"]),
    "idle_figure_without_idle": (TINY_SPACE.replace("idle_seconds: 0.5", "idle_seconds: 0.1"),
                                 ["constraints.cpu_idle_share_pct", "two windows"]),
    "server_knob_python_only": (TINY_SPACE.replace("nice: [0, 19]", "poll: [0, 50]"),
                                ["params.poll", "llama-server knob", "add backend: [server]"]),
    "pacing_server_only": (TINY_SPACE.replace("n_ctx: 512", "n_ctx: 512\n  backend: server\n  pace_tps: 8"),
                           ["fixed.pace_tps", "cannot pace decoding", "add backend: [python]"]),
    "context_k_without_context": (TINY_SPACE.replace("nice: [0, 19]", "context_k: [3, 7]"),
                                  ["params.context_k", "only means something with context set", "at none"]),
    "period_without_quota": (TINY_SPACE.replace("n_ctx: 512", "n_ctx: 512\n  cpu_period_ms: 50"),
                             ["fixed.cpu_period_ms", "with cpu_quota_pct set", "leaves it unset"]),
    "missing_model_file": (TINY_SPACE.replace("models:", "model_paths:\n  mine: {path: /nonexistent/x.gguf}\nmodels:\n  mine: [Q4_0]"),
                           ["models.mine", "does not exist"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_space_is_one_line_exit_2_and_no_study(case: str, isolated: Path) -> None:
    body, needles = BAD_CASES[case]
    space = write_space(isolated / "bad.yaml", body)
    db = isolated / "studies.db"
    proc = sweep_cli("run", str(space), "--trials", "1")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "bad.yaml" in lines[0]
    for needle in needles:
        assert needle in lines[0]
    assert not db.exists()


def test_bad_space_leaves_an_existing_database_unchanged(isolated: Path) -> None:
    db = isolated / "studies.db"
    db.write_bytes(b"not touched")
    space = write_space(isolated / "bad.yaml", BAD_CASES["unknown_model"][0])
    assert sweep_cli("run", str(space)).returncode == 2
    assert db.read_bytes() == b"not touched"


def test_missing_space_file(isolated: Path) -> None:
    proc = sweep_cli("run", "nope.yaml")
    assert proc.returncode == 2
    assert "nope.yaml: no such search-space file" in proc.stderr


@pytest.mark.slow
def test_shipped_demo_space_loads(cache_dir: Path) -> None:
    from sweep.models.registry import Registry

    Registry().quantize("smollm2-135m", ["Q8_0"])
    Registry().quantize("qwen2.5-coder-1.5b", ["Q4_0"])
    space = load_space(REPO / "search_spaces" / "demo.yaml")
    assert set(space.spec.models) == {"smollm2-135m", "qwen2.5-coder-1.5b"}
    assert space.spec.constraints["correctness"].min == 0.80


def test_the_invisible_space_judges_by_the_cpu_workload() -> None:
    space = load_space(REPO / "search_spaces" / "invisible.yaml")
    assert space.settings.probe == "cpu"
    assert space.spec.constraints["fg_cpu_slowdown"].max == 1.05
    assert "latency_p95_contended_s" in space.spec.objectives
    assert not any(name.startswith("cpu_active") for name in space.spec.constraints)  # the proxy is gone


def test_endpoint_space_is_valid_but_names_models_this_host_lacks() -> None:
    with pytest.raises(SpaceError, match=r"models\.qwen2\.5-7b-instruct: unknown model"):
        load_space(REPO / "search_spaces" / "endpoint-security.yaml")


def test_sample_clamps_threads_to_cores_and_ubatch_to_batch(isolated: Path) -> None:
    body = TINY_SPACE.replace("nice: [0, 19]", "cores: {low: 1, high: 1}\n  n_ubatch: [1024]\n  placement: [last]")
    body = body.replace("{low: 1, high: all}", "{low: 1, high: 64}").replace("n_threads_batch: 1", "n_threads_batch: 8")
    space = load_space(write_space(isolated / "s.yaml", body))
    trial = optuna.trial.FixedTrial({"model": "smollm2-135m", "n_threads": 64, "n_batch": 512, "cores": 1,
                                     "n_ubatch": 1024, "placement": "last"})
    config = space.sample(trial)
    assert config.cpus == (max(allowed_cpus()),)
    assert config.n_threads == 1 and config.n_threads_batch == 1
    assert config.n_ubatch == config.n_batch == 512
    assert trial.user_attrs["config"]["n_threads"] == 1


def test_a_knob_that_means_nothing_to_a_trial_is_left_out_of_its_config(isolated: Path) -> None:
    """context_k is swept, but a trial without the catalog gets the default: the same configuration
    is never measured twice under two values that change nothing."""
    body = TINY_SPACE.replace("nice: [0, 19]", "context: [none, attack-catalog]\n  context_k: [3, 7]")
    space = load_space(write_space(isolated / "s.yaml", body))
    base = {"model": "smollm2-135m", "n_threads": 1, "n_batch": 64}
    plain = space.sample(optuna.trial.FixedTrial({**base, "context": "none", "context_k": 7}))
    assert plain.context_k == 5 and "context_k" not in plain.to_dict()
    catalog = space.sample(optuna.trial.FixedTrial({**base, "context": "attack-catalog", "context_k": 7}))
    assert catalog.context_k == 7


def test_fingerprint_ignores_trial_settings_but_not_the_space(isolated: Path) -> None:
    a = load_space(write_space(isolated / "a.yaml", TINY_SPACE))
    b = load_space(write_space(isolated / "b.yaml", TINY_SPACE.replace("prompts: 3", "prompts: 5")))
    c = load_space(write_space(isolated / "c.yaml", TINY_SPACE.replace("nice: [0, 19]", "nice: [0, 10]")))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_prompt_strategy_is_a_search_dimension(isolated: Path) -> None:
    body = TINY_SPACE.replace("nice: [0, 19]", "shots: {low: 0, high: 3}\n  output: [free, json, grammar]\n"
                                               "  max_tokens: [16, 96]").replace("  max_tokens: 16\n", "")
    space = load_space(write_space(isolated / "s.yaml", body))
    config = space.sample(optuna.trial.FixedTrial({"model": "smollm2-135m", "n_threads": 1, "n_batch": 512,
                                                   "shots": 3, "output": "grammar", "max_tokens": 96}))
    assert (config.shots, config.output, config.max_tokens) == (3, "grammar", 96)
    plain = load_space(write_space(isolated / "p.yaml", TINY_SPACE)).sample(
        optuna.trial.FixedTrial({"model": "smollm2-135m", "n_threads": 1, "n_batch": 512, "nice": 19}))
    assert (plain.shots, plain.output) == (0, "free")


def test_every_knob_off_its_default_is_shown_in_the_trial_line_by_the_knob_table() -> None:
    from sweep.params import PARAMS
    from sweep.records import TrialConfig
    from sweep.results.display import config_summary

    base = TrialConfig(model="m", quant="Q4_0", model_path="/m.gguf", chat_format=None, n_threads=1, n_threads_batch=1,
                       n_batch=64, n_ubatch=64, n_ctx=512).to_dict()
    line = config_summary({**base, "cpu_quota_pct": 35.0, "memory_max_gb": 1.5, "cpu_weight": "idle",
                           "input_guard": "escape", "context": "attack-catalog", "context_k": 8})
    assert "quota=35% weight=idle mem_max=1.5GB" in line and "guard=escape" in line and "context=attack-catalog k=8" in line
    assert "quota" not in config_summary(base) and "k=" not in config_summary({**base, "context_k": 8})
    # A knob that is neither in the line's head nor shown is one the table forgot (cores and placement
    # are shown as the CPUs they chose; the temperature is fixed, never swept).
    head = {"model", "quant", "n_threads", "n_threads_batch", "n_batch", "n_ubatch", "n_ctx", "cpus", "nice",
            "sched_policy", "shots", "output", "max_tokens"}
    unshown = {n for n, p in PARAMS.items() if not p.shown and n not in head}
    assert unshown == {"cores", "placement", "temperature"}, unshown


def test_the_knob_table_and_the_trial_config_agree() -> None:
    from dataclasses import MISSING, fields

    from sweep.params import CONFIG_KNOBS, DERIVED, PARAMS
    from sweep.records import TrialConfig

    declared = {f.name: f for f in fields(TrialConfig)}
    # Every knob a configuration carries is a field, and every field but the model's and the seed is a knob.
    assert set(declared) - set(CONFIG_KNOBS) == {"model", "quant", "model_path", "chat_format", "seed"}
    for name in CONFIG_KNOBS:
        default, field = PARAMS[name].default, declared[name]
        if default is not DERIVED and field.default is not MISSING:
            assert field.default == default, name
        if PARAMS[name].kind == "choice":
            assert set(PARAMS[name].choices) >= {field.default} - {None, MISSING}, name
