"""Every value of every knob a shipped space can produce exports in every format, and the export runs.

For each space in ``search_spaces/`` (with its models swapped for SmolLM2, as the knobs are what
is tested), configurations are drawn with a fixed seed so that together they take every choice of
every swept parameter at least once, through ``Space.sample`` as a sweep does. Each is exported
in every format and run: the llama-server script, the python export and the systemd unit's
service (under ``unitrun``, as no systemd runs here) each answer one request on SmolLM2, and the
knobs are read back from the running process as a trial reads them (``knobs.read_threads``,
``knobs.check_applied``), with the OpenMP environment.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sweep.trial import cgroups, knobs

from conftest import REPO, api_key, ask, serving, sweep_cli, write_space

SHIPPED = sorted((REPO / "search_spaces").glob("*.yaml"))
SEED = 20261202


def _on_smollm2(space_file: Path, work: Path) -> Path:
    raw = yaml.safe_load(space_file.read_text())
    raw["models"] = {"smollm2-135m": ["Q4_1"]}
    raw.pop("model_paths", None)
    return write_space(work / space_file.name, yaml.safe_dump(raw))


def covering_params(space: Any, seed: int) -> list[dict[str, Any]]:
    """Optuna parameters, drawn with ``seed``, that take every choice of every swept knob at least once."""
    from sweep.study.space import IntRange

    rng = random.Random(seed)
    choices = {name: list(range(dist.low, space._high(dist) + 1, dist.step)) if isinstance(dist, IntRange)
               else list(dist) for name, dist in space.spec.params.items()}
    n = max(map(len, choices.values()))
    columns = {name: rng.sample(v, len(v)) + [rng.choice(v) for _ in range(n - len(v))] for name, v in choices.items()}
    rows = [{name: column[i] for name, column in columns.items()} for i in range(n)]
    if "backend" in choices:  # a llama-server knob set on a python row would be dropped: give it the server
        from sweep.params import SERVER_ONLY

        for r in rows:
            if any(r.get(k) is not None for k in SERVER_ONLY):
                r["backend"] = "server"
        if not any(r["backend"] == "python" for r in rows):
            rows.append({**rows[0], "backend": "python", **{k: None for k in SERVER_ONLY if k in choices}})
    for name, values in choices.items():  # the draw covers the space, or the test proves nothing
        assert {repr(r[name]) for r in rows} == {repr(v) for v in values}, name
    return rows


@pytest.fixture(scope="module", params=[p.name for p in SHIPPED])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, cache_dir: Path,
             server_tools: Path) -> dict[str, Any]:
    """A real study of the shipped space holding the covering configurations, and their export records."""
    import optuna

    from sweep.results.export import export_record
    from sweep.results.front import rows
    from sweep.study.space import load_space
    from sweep.study.writer import open_or_create

    work = tmp_path_factory.mktemp("matrix")
    space = load_space(_on_smollm2(REPO / "search_spaces" / request.param, work))
    url = f"sqlite:///{work / 'studies.db'}"
    study, _, _ = open_or_create(space, url, "m", "tasks-v2")
    configs = [space.sample(optuna.trial.FixedTrial({"model": "smollm2-135m", **p})) for p in covering_params(space, SEED)]
    for c in configs:  # exported as a measured trial would be; the figures play no part here
        study.add_trial(optuna.trial.create_trial(values=[0.0] * len(space.spec.objectives),
                                                  user_attrs={"config": c.to_dict(), "violations": []}))
    records = [export_record(study, row, url, str(server_tools)) for row in rows(study)]
    return {"work": work, "records": records, "server": str(server_tools), "env": {"SWEEP_STORAGE": url},
            "key": api_key(work / "api-key")}


def _environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return dict(item.decode().partition("=")[::2] for item in f.read().split(b"\0") if item)


def _knob_problems(record: dict[str, Any], pid: int, env: dict[str, str] | None = None,
                   limits: dict[str, Any] | None = None) -> list[str]:
    """What did not hold in the running process, read back as a trial reads its worker (``limits``:
    the kernel limits it runs under, where they are more than the trial's own)."""
    c = {**record["config"], **(limits or {})}
    problems = knobs.check_applied(c, knobs.read_threads(pid), knobs.read_autogroup(pid))
    env = _environ(pid) if env is None else env
    problems += [f"{k}={env.get(k)!r}, not {v!r}" for k, v in knobs.environment(c).items() if env.get(k) != v]
    if cgroups.limits_of(c):  # the kernel limits, read back from the cgroup the process is in
        held = cgroups.TrialCgroup.of_process(c, pid)
        problems += held.check_applied()
        problems += [f"{d} is not the export's own cgroup" for d in held.dirs.values()
                     if os.path.basename(d) not in ("sweep-llm", "sweep-unit")]
    return problems


def _label(record: dict[str, Any]) -> str:
    c = record["config"]
    return ", ".join(f"{k}={c.get(k)}" for k in ("cpus", "nice", "sched_policy", "omp_wait_policy", "n_threads",
                                                 "n_threads_batch", "n_ctx", "pace_duty", "pace_tps", *cgroups.CGROUP_KNOBS)
                     if k in c)


def _guarded(record: dict[str, Any]) -> bool:
    """A configuration whose guard is code outside the model: only the python export carries it, and
    the server exports refuse it (tests/test_guard.py runs that python export)."""
    from sweep.correctness.guard import layers

    return bool(layers(record["config"].get("input_guard", "none")))


def _served(exported: dict[str, Any], fmt: str) -> list[dict[str, Any]]:
    """The records a server export can carry; each other one is refused, with the line that says why."""
    from sweep.errors import ExportError
    from sweep.results.export import render

    out = []
    for record in exported["records"]:
        if not _guarded(record):
            out.append(record)
            continue
        with pytest.raises(ExportError, match="llama-server alone cannot run"):
            render(record, fmt, exported["server"])
    assert out, "every configuration of the space has a layered guard: nothing for a server export to carry"
    return out


def _render(exported: dict[str, Any], record: dict[str, Any], fmt: str, name: str) -> Path:
    from sweep.results.export import render

    path = exported["work"] / name
    # The unit runs the binary its (installed) record names; the scripts run the built one.
    path.write_text(render(record, fmt, None if fmt == "systemd" else exported["server"]))
    path.chmod(0o755)
    return path


@pytest.mark.slow
def test_json_and_yaml_carry_each_configuration(exported: dict[str, Any]) -> None:
    from sweep.results.export import render

    for record in exported["records"]:
        assert json.loads(render(record, "json"))["config"] == record["config"]
        assert yaml.safe_load(render(record, "yaml"))["config"] == record["config"]


def _cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().decode().split("\0")[:-1]


@pytest.mark.slow
def test_llama_server_script_answers_with_every_knob(exported: dict[str, Any]) -> None:
    import urllib.error

    key, env = exported["key"].read_text().strip(), {**os.environ, "SWEEP_LLM_API_KEY_FILE": str(exported["key"])}
    for i, record in enumerate(_served(exported, "llama-server")):
        script = _render(exported, record, "llama-server", f"serve-{i}.sh")
        # As a service would start it: a session of its own, so the script renices its autogroup.
        with serving(lambda port: subprocess.Popen([str(script), "--port", str(port)], start_new_session=True, env=env,
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)) as (proc, port):
            assert ask(port, key=key).strip(), _label(record)
            assert _knob_problems(record, proc.pid) == [], _label(record)
            argv = _cmdline(proc.pid)
            assert argv[argv.index("--host") + 1] == "127.0.0.1" and "--api-key-file" in argv
            with pytest.raises(urllib.error.HTTPError, match="401"):
                ask(port)  # no key, no answer


@pytest.mark.slow
def test_llama_server_script_refuses_to_start_without_its_key(exported: dict[str, Any]) -> None:
    script = _render(exported, _served(exported, "llama-server")[0], "llama-server", "serve-nokey.sh")
    proc = subprocess.run([str(script)], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "SWEEP_LLM_API_KEY_FILE": str(exported["work"] / "missing")})
    assert proc.returncode == 2 and "no API key" in proc.stderr and "chmod 0600" in proc.stderr


@pytest.mark.slow
def test_python_export_answers_with_every_knob(exported: dict[str, Any]) -> None:
    for i, record in enumerate(exported["records"]):
        script = _render(exported, record, "python", f"run-{i}.py")
        script.write_text(script.read_text() + (
            "\nimport json, sys\n"
            "reply = llm.create_chat_completion(messages=[{'role': 'user', 'content': 'Say hello.'}], max_tokens=8,"
            " temperature=0)\n"
            "print(json.dumps({'answer': reply['choices'][0]['message']['content'], 'env': dict(os.environ)}),"
            " flush=True)\n"
            "sys.stdin.readline()\n"))
        proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            line = proc.stdout.readline()
            assert line, f"{_label(record)}: {proc.stderr.read()[-2000:]}"
            said = json.loads(line)
            assert said["answer"].strip(), _label(record)
            # The environment is read from inside: the export sets it in-process, before llama_cpp loads.
            assert _knob_problems(record, proc.pid, said["env"]) == [], _label(record)
        finally:
            proc.communicate("\n", timeout=60)
        assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def opt_dir() -> Path:
    """A directory of root's, readable by all, outside any user's tree: where --install copies to."""
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("--install copies into a directory of root's: run the tests as root")
    opt = Path(tempfile.mkdtemp(prefix="sweep-opt-"))
    opt.chmod(0o755)
    return opt


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_unit_verifies_and_its_service_answers_with_every_knob(exported: dict[str, Any], opt_dir: Path) -> None:
    from sweep.results.export import API_KEY_SOURCE, install

    import unitrun

    key = exported["key"].read_text().strip()
    for i, record in enumerate(_served(exported, "systemd")):
        unit = _render(exported, install(record, opt_dir, exported["server"]), "systemd", f"sweep-llm-{i}.service")
        unit.chmod(0o644)
        check = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
        assert check.returncode == 0, f"{_label(record)}: {check.stderr}"
        # As the unit's own user (DynamicUser), with no new privileges, reading its credential.
        with serving(lambda port: unitrun.start(unit, "--port", str(port), credentials={API_KEY_SOURCE: exported["key"]},
                                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)) as (proc, port):
            assert ask(port, key=key).strip(), _label(record)
            # The unit keeps the trial's kernel limits, and adds the study's RAM budget as MemoryMax=
            # where the trial had no ceiling of its own.
            limits = unitrun.limits(unitrun.service(unit.read_text()))
            trial = cgroups.limits_of(record["config"])
            assert {k: limits.get(k) for k in trial} == trial, _label(record)
            assert _knob_problems(record, proc.pid, limits=limits) == [], _label(record)
            with open(f"/proc/{proc.pid}/status") as f:
                status = dict(line.split(":", 1) for line in f.read().splitlines())
            assert status["Uid"].split()[0] == str(unitrun.DYNAMIC_UID) and status["NoNewPrivs"].strip() == "1"


def _exposure(unit: Path) -> float:
    import re

    proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)], capture_output=True, text=True)
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout)
    assert found, proc.stdout + proc.stderr
    return float(found.group(1))


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_the_unit_is_rated_ok_by_systemd(exported: dict[str, Any], opt_dir: Path) -> None:
    from sweep.results.export import install

    record = install(_served(exported, "systemd")[0], opt_dir, exported["server"])
    unit = _render(exported, record, "systemd", "sweep-llm.service")
    text = unit.read_text()
    assert "DynamicUser=yes" in text and "User=" not in text.replace("DynamicUser=", "")
    assert "IPAddressDeny=any" in text and "--host 127.0.0.1" in text and "--api-key-file %d/api-key" in text
    # systemd's own exposure score (0 safest, 10 unsafe; 4.0 and under rates "OK"): what keeps it above
    # 1.0 is that it listens on loopback and runs in the host's root directory.
    assert _exposure(unit) <= 2.0
    named = _render(exported, record, "systemd", "sweep-llm-user.service")
    from sweep.results.export import render

    named.write_text(render(record, "systemd", user="nobody"))
    assert "User=nobody" in named.read_text() and "DynamicUser" not in named.read_text()


@pytest.mark.slow
def test_a_unit_never_runs_what_a_user_can_rewrite(exported: dict[str, Any], tmp_path: Path) -> None:
    from sweep.errors import ExportError
    from sweep.results.export import render, service_path_problem

    # The built llama-server is in root's ~/.cache here: hidden from a service and the user's to change.
    with pytest.raises(ExportError, match="--install DIR"):
        render(_served(exported, "systemd")[0], "systemd", exported["server"])
    writable = tmp_path / "open"
    writable.mkdir()
    writable.chmod(0o757)  # others may write: any user could swap the model
    (writable / "m.gguf").write_text("x")
    assert "writable by others" in service_path_problem(str(writable / "m.gguf"))
    assert service_path_problem("/bin/true") is None


# --- what the rendering refuses ---

@pytest.mark.parametrize("bad", ["a\nb", "50%", "$HOME", "it's", 'say "x"', "back\\slash", "`id`"])
def test_a_path_a_shell_or_unit_would_misread_is_refused(bad: str) -> None:
    from sweep.errors import ExportError
    from sweep.results.export import pasteable

    with pytest.raises(ExportError, match="rename the file"):
        pasteable("config.model_path", f"/models/{bad}.gguf")
    assert pasteable("config.model_path", "/home/me/My Models/q-1.5b_Q4+K.gguf")


@pytest.fixture(scope="module")
def odd_study(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, smollm2_path: Path) -> dict[str, Any]:
    """A real one-trial sweep whose model lives under a path with ``$`` in it."""
    from conftest import TINY_SPACE

    work = tmp_path_factory.mktemp("odd")
    odd = work / "cost$5"
    odd.mkdir()
    (odd / "tiny.gguf").symlink_to(smollm2_path)
    body = TINY_SPACE.replace("models:\n  smollm2-135m: [Q4_1]\n",
                              f"models:\n  tiny: [Q4_1]\nmodel_paths:\n  tiny:\n    path: {odd / 'tiny.gguf'}\n"
                              "    chat_format: chatml\n")
    env = {"SWEEP_STORAGE": f"sqlite:///{work / 'studies.db'}"}
    proc = sweep_cli("run", str(write_space(work / "s.yaml", body)), "--study", "odd", "--trials", "1", env=env)
    assert proc.returncode == 0, proc.stderr
    return {"work": work, "env": env}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["json", "llama-server", "systemd", "python"])
def test_export_refuses_a_model_path_with_a_dollar(odd_study: dict[str, Any], fmt: str) -> None:
    out = odd_study["work"] / f"out.{fmt}"
    proc = sweep_cli("export", "--study", "odd", "-o", str(out), "--format", fmt, "--allow-infeasible",
                     env=odd_study["env"])
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "config.model_path" in proc.stderr and "'$'" in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("key, value, needle", [
    ("nice", "0; rm -rf ~", "config.nice"),
    ("nice", 40, "config.nice"),
    ("omp_wait_policy", "PASSIVE sh -c id", "config.omp_wait_policy"),
    ("cpus", ["0", "1"], "config.cpus"),
    ("cpus", [-1], "config.cpus"),
    ("n_threads", True, "config.n_threads"),
    ("gomp_spincount", "1 $(id)", "config.gomp_spincount"),
    ("sched_policy", "fifo", "config.sched_policy"),
])
@pytest.mark.slow
def test_export_revalidates_what_the_database_holds(odd_study: dict[str, Any], tmp_path: Path, key: str,
                                                    value: Any, needle: str) -> None:
    import sqlite3

    db = tmp_path / "tampered.db"
    shutil.copy(odd_study["work"] / "studies.db", db)
    with sqlite3.connect(db) as con:
        (raw,) = con.execute("SELECT value_json FROM trial_user_attributes WHERE key = 'config'").fetchone()
        config = json.loads(raw)
        config.update({key: value, "model_path": "/models/plain.gguf"})
        con.execute("UPDATE trial_user_attributes SET value_json = ? WHERE key = 'config'", (json.dumps(config),))
    out = tmp_path / "out.sh"
    proc = sweep_cli("export", "--study", "odd", "-o", str(out), "--format", "llama-server", "--allow-infeasible",
                     env={"SWEEP_STORAGE": f"sqlite:///{db}"})
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and needle in proc.stderr and "trial 0" in proc.stderr
    assert not out.exists()

