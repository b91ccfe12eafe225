"""The server backend: real llama-server (built by ``sweep tools build``), real SmolLM2.

The tests that start a server use the ``server_tools`` fixture (marked slow in conftest). Without
built tools they skip, saying how to build them; ``.ci/run`` builds them and sets
``SWEEP_REQUIRE_TOOLS``, so there they fail instead of skipping.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import QUICK_TAIL, api_key, ask, serve_and_ask, serving, sweep_cli, write_space

SERVER_SPACE = """\
version: 1
name: srv
models:
  smollm2-135m: [Q4_1]
params:
  poll: [0]
fixed:
  backend: server
  cpus: [0]
  n_threads: 1
  n_threads_batch: 1
  n_ctx: 512
  max_tokens: 16
  nice: 10
""" + QUICK_TAIL


def _config(smollm2: Path, **kw: object):
    from sweep.records import TrialConfig

    base = dict(model="smollm2-135m", quant="Q4_1", model_path=str(smollm2), chat_format=None, n_threads=1,
                n_threads_batch=1, n_batch=512, n_ubatch=512, n_ctx=512, max_tokens=16, cpus=(0,), backend="server")
    return TrialConfig(**{**base, **kw})


def _settings(**kw: object):
    from sweep.records import TrialSettings

    return TrialSettings(**{**dict(prompts=3, idle_seconds=0.5, baseline_seconds=0.2, timeout_seconds=120,
                                   noise_retries=0), **kw})


def _tasks(n: int = 3):
    from sweep.correctness.tasks import load_tasks, stratified_subset

    return stratified_subset(load_tasks(), n)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.mark.slow
def test_server_trial_answers_with_figures(server_tools: Path, smollm2_path: Path) -> None:
    from sweep.trial.runner import run_trial

    events: list[dict] = []
    outcome = run_trial(_config(smollm2_path), _settings(), _tasks(), on_event=events.append)
    assert outcome.ok, (outcome.reason, outcome.detail, outcome.stderr_tail)
    f = outcome.figures
    assert f["latency_p50_s"] > 0 and f["load_s"] > 0 and f["decode_tps"] > 0
    # llama-server's own rates are kept beside sweep's external ones.
    assert f["server_decode_tps"] > 0 and f["server_prefill_tps"] > 0
    assert all(a["server_timings"]["predicted_n"] >= 1 for a in outcome.answers)
    assert sum(bool(a["answer"].strip()) for a in outcome.answers) >= 2
    # The monitor counted the server (the worker's child): it computed while answering.
    assert f["cpu_active_mean_core_pct"] > 20
    # Knobs were read back from the server's own threads (it has several: HTTP, compute), all on CPU 0.
    (server,) = [e for e in events if e["type"] == "server"]
    threads = outcome.knobs["threads"]
    assert len(threads) > 1 and {t["cpus"] for t in threads} == {"0"}
    assert server["pid"] in {t["tid"] for t in threads}
    assert not _alive(server["pid"])  # killed and reaped with its trial


@pytest.mark.slow
def test_a_shared_prefix_on_the_server_prefills_every_item_and_answers_the_same(server_tools: Path,
                                                                                 smollm2_path: Path) -> None:
    """prefix_cache: shared against off on llama-server, 3-shot grammar: the same answers, and the
    server's own counts show each item prefilled fresh: the cache gave a part of the prompt, never
    the whole, and off took nothing from it. A split prefill can round differently from a whole one,
    so one answer in five may flip where the model's top two are nearly tied (the 1.5B model: 8 of
    10 the same in bench/prefix_cache.py); wrong cache contents would change far more."""
    from sweep.trial.runner import run_trial

    runs = {}
    for mode in ("off", "shared"):
        config = _config(smollm2_path, n_threads=2, n_threads_batch=2, cpus=None, n_ctx=2048, max_tokens=24,
                         shots=3, output="grammar", prefix_cache=mode)
        outcome = run_trial(config, _settings(prompts=5, probe=False, early_abort=False), _tasks(5))
        assert outcome.ok, (mode, outcome.reason, outcome.detail, outcome.stderr_tail)
        runs[mode] = outcome.answers
    same = sum(o["answer"] == s["answer"] for o, s in zip(runs["off"], runs["shared"]))
    assert same >= 4, [(o["answer"], s["answer"]) for o, s in zip(runs["off"], runs["shared"])]
    for o, s in zip(runs["off"], runs["shared"]):
        assert o["prompt_tokens"] == s["prompt_tokens"]
        assert o["server_timings"]["cache_n"] == 0 and o["prefill_tokens"] == o["prompt_tokens"]
        held = s["server_timings"]["slot_tokens"]
        assert s["server_timings"]["cache_n"] <= held  # nothing beyond the saved prefix: no item token
        assert s["server_timings"]["cache_n"] > s["prompt_tokens"] // 2  # the kind's prefix came from the slot
        assert 0 < s["prefill_tokens"] < s["prompt_tokens"] // 2  # only the item and its lead-in


@pytest.mark.slow
def test_server_killed_mid_trial_is_crashed_and_the_next_trial_runs(server_tools: Path, smollm2_path: Path) -> None:
    from sweep.trial.runner import run_trial

    pid: list[int] = []

    def kill_on_first_answer(e: dict) -> None:
        if e["type"] == "server":
            pid.append(e["pid"])
        elif e["type"] == "prompt" and e["index"] == 0:
            os.kill(pid[0], signal.SIGKILL)

    outcome = run_trial(_config(smollm2_path), _settings(), _tasks(), on_event=kill_on_first_answer)
    assert not outcome.ok and outcome.reason == "crashed", (outcome.reason, outcome.detail)
    assert "SIGKILL" in outcome.detail
    assert "llama" in outcome.stderr_tail  # the server's own log is in the tail
    assert not _alive(pid[0])
    again = run_trial(_config(smollm2_path), _settings(), _tasks())
    assert again.ok, (again.reason, again.detail)


@pytest.mark.slow
def test_prio_and_poll_are_read_back(server_tools: Path, smollm2_path: Path) -> None:
    from sweep.trial.runner import run_trial

    outcome = run_trial(_config(smollm2_path, prio=-1, poll=0, n_threads=2, n_threads_batch=2, cpus=None),
                        _settings(), _tasks())
    threads = outcome.knobs["threads"]
    assert threads, (outcome.reason, outcome.detail)
    # llama.cpp's low priority is nice 5 on the thread that sets it, SCHED_BATCH on compute threads.
    touched = [t for t in threads if t["nice"] == 5 or t["policy"] == "batch"]
    assert touched, f"--prio -1 changed no thread: {threads}"
    assert outcome.ok, (outcome.reason, outcome.detail)


@pytest.fixture(scope="module")
def server_study(server_tools: Path, tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict:
    work = tmp_path_factory.mktemp("server-export")
    env = {"SWEEP_STORAGE": f"sqlite:///{work / 'studies.db'}"}
    proc = sweep_cli("run", str(write_space(work / "s.yaml", SERVER_SPACE)), "--study", "s", "--trials", "1", env=env)
    assert proc.returncode == 0, proc.stderr
    return {"work": work, "env": env}


def _export(study: dict, fmt: str, *extra: str) -> Path:
    out = study["work"] / ("sweep-llm.service" if fmt == "systemd" else f"export.{fmt}")
    proc = sweep_cli("export", "--study", "s", "-o", str(out), "--format", fmt, "--allow-infeasible", *extra,
                     env=study["env"])
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.slow
def test_exported_llama_server_script_answers_and_measures_again(server_study: dict, server_tools: Path) -> None:
    record = json.loads(_export(server_study, "json").read_text())
    assert record["config"]["backend"] == "server" and record["config"]["poll"] == 0
    argv = shlex.split(record["llama_server"])
    assert argv[: argv.index(str(server_tools))] == ["taskset", "-c", "0", "nice", "-n", "10"]
    args = dict(zip(argv, argv[1:]))
    assert args["--poll"] == "0" and args["--cpu-mask"] == "1" and args["--threads-batch"] == "1"
    script = _export(server_study, "llama-server")
    script.chmod(0o755)
    assert serve_and_ask([str(script)], api_key(server_study["work"] / "key")).strip()
    # The exported record is a trial configuration: sweep trial measures the server again.
    rerun = sweep_cli("trial", str(server_study["work"] / "export.json"), "--json", "--prompts", "2", "--idle", "0.5",
                      env=server_study["env"])
    assert rerun.returncode == 0, rerun.stderr
    measured = json.loads(rerun.stdout)
    assert measured["ok"] and measured["figures"]["server_decode_tps"] > 0


@pytest.mark.slow
def test_systemd_export_verifies_and_its_service_answers(server_study: dict, server_tools: Path,
                                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    import tempfile

    from sweep.results.export import API_KEY_SOURCE

    import unitrun

    # The built llama-server lives under /root: a unit may only run root's copy of it (--install).
    refused = sweep_cli("export", "--study", "s", "-o", str(server_study["work"] / "u.service"), "--format", "systemd",
                        "--allow-infeasible", env=server_study["env"])
    assert refused.returncode == 2 and "--install DIR" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    opt = Path(tempfile.mkdtemp(prefix="sweep-opt-"))
    opt.chmod(0o755)
    unit = _export(server_study, "systemd", "--install", str(opt))
    text = unit.read_text()
    assert "CPUAffinity=0" in text and "Nice=10" in text and "DynamicUser=yes" in text
    if shutil.which("systemd-analyze"):
        proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    assert shlex.split(exec_start.removeprefix("ExecStart="))[0] == str(opt / "bin" / "llama-server")
    key = api_key(tmp_path_factory.mktemp("key") / "api-key")
    with serving(lambda port: unitrun.start(unit, "--port", str(port), credentials={API_KEY_SOURCE: key},
                                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)) as (_, port):
        assert ask(port, key=key.read_text().strip()).strip()


# --- no server needed ---

def test_server_args_carry_llama_cpp_knobs() -> None:
    from sweep.trial.server import server_args

    c = {"model_path": "m.gguf", "n_threads": 2, "n_threads_batch": 1, "n_batch": 64, "n_ubatch": 32, "n_ctx": 512,
         "cpus": [1, 3], "cpu_strict": 1, "prio": -1, "poll": 0, "chat_format": "chatml"}
    argv = server_args(c, "/x/llama-server", "127.0.0.1", 9000)
    args = dict(zip(argv, argv[1:]))
    assert argv[0] == "/x/llama-server" and args["--port"] == "9000"
    assert args["--cpu-mask"] == "a" and args["--cpu-mask-batch"] == "a" and args["--cpu-strict-batch"] == "1"
    assert args["--prio"] == "-1" and args["--poll"] == "0" and args["--poll-batch"] == "0"  # batch follows poll
    assert "--prio-batch" not in args and args["--chat-template"] == "chatml"


@pytest.mark.parametrize("body, needles", [
    # llama.cpp's own knobs with the python backend
    ("params:\n  poll: [0, 50]\n", ["params.poll", "python backend"]),
    ("fixed:\n  prio: -1\n", ["fixed.prio", "python backend"]),
    ("fixed:\n  backend: python\n  cpu_strict: 1\n", ["fixed.cpu_strict", "python backend"]),
    # what the server backend cannot do
    ("fixed:\n  backend: server\n  prio: 1\n", ["fixed.prio"]),
    ("fixed:\n  backend: server\n  pace_tps: 10\n", ["fixed.pace_tps", "cannot pace decoding"]),
    # a knob that needs another: the batch poll level without poll
    ("fixed:\n  backend: server\n  poll_batch: 0\n", ["fixed.poll_batch", "with poll set"]),
])
def test_knobs_a_backend_cannot_take_are_refused(tmp_path: Path, body: str, needles: list[str]) -> None:
    space = write_space(tmp_path / "s.yaml", "version: 1\nname: r\nmodels:\n  smollm2-135m: [Q4_1]\n" + body)
    proc = sweep_cli("run", str(space))
    assert proc.returncode == 2 and all(n in proc.stderr for n in needles), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_python_trial_record_is_unchanged_by_the_backend_keys() -> None:
    from sweep.records import TrialConfig

    c = TrialConfig(model="m", quant="Q4_0", model_path="m.gguf", chat_format=None, n_threads=1, n_threads_batch=1,
                    n_batch=8, n_ubatch=8, n_ctx=64)
    d = c.to_dict()
    assert not {"backend", "poll", "prio"} & set(d)
    assert TrialConfig.from_dict(d) == c
    s = TrialConfig.from_dict({**d, "backend": "server", "poll": 0})
    assert s.to_dict()["backend"] == "server" and s.to_dict()["poll"] == 0


def test_missing_toolchain_is_one_line_exit_2(tmp_path: Path) -> None:
    env = {"PATH": str(tmp_path), "SWEEP_TOOLS_DIR": str(tmp_path / "tools")}  # no cmake, no compiler, nothing built
    proc = sweep_cli("tools", "build", env=env)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "building llama-server needs cmake" in proc.stderr and "build-essential" in proc.stderr  # found, then how
    listed = sweep_cli("tools", "list", env=env)
    assert listed.returncode == 0 and "nothing built" in listed.stdout


def test_a_server_trial_without_tools_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")  # never loaded: both refusals come first
    config = _config(model).to_dict()
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    proc = sweep_cli("trial", str(path), env={"SWEEP_TOOLS_DIR": str(tmp_path / "none")})
    assert proc.returncode == 2 and "sweep tools build" in proc.stderr, proc.stderr
    path.write_text(json.dumps({**config, "backend": "python", "poll": 0}))
    proc = sweep_cli("trial", str(path))
    assert proc.returncode == 2 and "config.poll" in proc.stderr and "backend is python" in proc.stderr, proc.stderr
    path.write_text(json.dumps({**config, "prio": 2}))  # SCHED_FIFO: the space's bounds hold here too
    proc = sweep_cli("trial", str(path))
    assert proc.returncode == 2 and "config.prio" in proc.stderr and "SCHED_FIFO" in proc.stderr, proc.stderr
    # A space that runs the server backend is refused before any trial when llama-server is not built.
    space = write_space(tmp_path / "s.yaml", SERVER_SPACE)
    proc = sweep_cli("run", str(space), env={"SWEEP_TOOLS_DIR": str(tmp_path / "none"),
                                             "SWEEP_STORAGE": f"sqlite:///{tmp_path / 'studies.db'}"})
    assert proc.returncode == 2 and "fixed.backend" in proc.stderr and "sweep tools build" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "studies.db").exists()


def test_prio_read_back_rules() -> None:
    from sweep.trial.server import check_applied

    c = {"cpus": [0], "nice": 19, "sched_policy": "normal", "prio": -1}
    ok = [{"tid": 1, "nice": 19, "policy": "batch", "cpus": "0"}, {"tid": 2, "nice": 19, "policy": "normal", "cpus": "0"}]
    assert check_applied(c, ok) == []
    raised = [{"tid": 1, "nice": 5, "policy": "normal", "cpus": "0"}]
    assert check_applied(c, raised) == ["thread 1 has nice 5, not 19: --prio -1 raised it"]
    ignored = [{"tid": 1, "nice": 19, "policy": "normal", "cpus": "0-1"}]
    assert check_applied(c, ignored) == ["thread 1 may run on CPUs 0-1, not [0]",
                                  "--prio -1 took effect on no thread of llama-server (no SCHED_BATCH, no nice changed)"]
    assert check_applied({**c, "sched_policy": "idle"}, [{"tid": 1, "nice": 19, "policy": "batch", "cpus": "0"}]) == \
        ["thread 1 has policy batch, not idle"]
