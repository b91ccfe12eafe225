"""Every export format parses back, against a study made by a real sweep."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sweep.trial import knobs

from conftest import TINY_SPACE, sweep_cli, write_space


@pytest.fixture(scope="module")
def study_env(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict:
    work = tmp_path_factory.mktemp("export")
    body = TINY_SPACE.replace("fixed:\n", "fixed:\n  cpus: [0]\n").replace("nice: [0, 19]", "nice: [19]\n  sched_policy: [idle]")
    env = {"SWEEP_STORAGE": f"sqlite:///{work / 'studies.db'}"}
    proc = sweep_cli("run", str(write_space(work / "s.yaml", body)), "--study", "x", "--trials", "2", env=env)
    assert proc.returncode == 0, proc.stderr
    return {"work": work, "env": env}


def export(study_env: dict, fmt: str, *extra: str) -> str:
    out = study_env["work"] / f"export.{fmt}"
    proc = sweep_cli("export", "--study", "x", "-o", str(out), "--format", fmt, "--allow-infeasible", *extra,
                     env=study_env["env"])
    assert proc.returncode == 0, proc.stderr
    return out.read_text()


@pytest.mark.slow
def test_json_and_yaml_are_the_same_record(study_env: dict) -> None:
    as_json = json.loads(export(study_env, "json"))
    as_yaml = yaml.safe_load(export(study_env, "yaml"))
    for record in (as_json, as_yaml):
        record["provenance"].pop("exported_at")
    assert as_json == as_yaml
    assert as_json["config"]["cpus"] == [0] and as_json["config"]["nice"] == 19
    assert set(as_json["budgets"]["correctness"]) == {"min", "value", "met", "margin"}
    assert as_json["figures_from"].startswith("the sweep: a subset of") and "not verified" in as_json["figures_from"]
    assert as_json["prompt_strategy"] == {"shots": 0, "output": "free", "max_tokens": 16, "temperature": 0.0,
                                          "prefix_cache": "off", "input_guard": "none"}


def _python_export(study_env: dict) -> Path:
    script = study_env["work"] / "run_llm.py"
    script.write_text(export(study_env, "python") + "\nprint(llm.n_ctx(), os.sched_getaffinity(0))\n"
                      "from sweep.trial.knobs import read_autogroup\nprint('autogroup', read_autogroup())\n")
    return script


@pytest.mark.slow
def test_python_export_builds_the_model(study_env: dict) -> None:
    proc = subprocess.run([sys.executable, str(_python_export(study_env))], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "512" and "{0}" in proc.stdout


@pytest.mark.slow
def test_python_export_sets_the_nice_of_its_own_session_only(study_env: dict) -> None:
    if knobs.read_autogroup() is None or not shutil.which("setsid"):
        pytest.skip("the kernel shows no autogroup here (/proc/self/autogroup is missing or empty), or no setsid")
    script = _python_export(study_env)
    # Run from another's session it leaves that session alone; leading a session of its own, it sets
    # the trial's nice on the session, as the trial did.
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("autogroup")[-1].strip() == str(knobs.read_autogroup())
    own = subprocess.run(["setsid", "-w", sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert own.returncode == 0, own.stderr
    assert own.stdout.split("autogroup")[-1].strip() == "19"


@pytest.mark.slow
def test_llama_server_line_carries_the_configuration(study_env: dict) -> None:
    config = json.loads(export(study_env, "json"))["config"]
    line = next(x for x in export(study_env, "llama-server").splitlines() if x.startswith("exec "))
    argv = shlex.split(line)
    args = dict(zip(argv, argv[1:]))
    server = next(a for a in argv if a.endswith("llama-server"))  # the built tools' path, or the bare name
    # Affinity by taskset, inherited by every thread (llama.cpp's --cpu-mask misses some); nice and policy too.
    assert argv[: argv.index(server)] == ["exec", "taskset", "-c", "0", "chrt", "--idle", "0", "nice", "-n", "19"]
    assert argv[-1] == "$@"
    assert args["--threads"] == str(config["n_threads"])
    assert args["--threads-batch"] == str(config["n_threads_batch"])
    assert args["--batch-size"] == str(config["n_batch"]) and args["--ubatch-size"] == str(config["n_ubatch"])
    assert args["--ctx-size"] == "512" and args["--cpu-mask"] == "1" and args["--cpu-mask-batch"] == "1"
    assert "--prio" not in args  # a python trial never measured llama.cpp's --prio


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_unit_verifies(study_env: dict) -> None:
    unit = study_env["work"] / "sweep-llm.service"
    unit.write_text(export(study_env, "systemd", "--server-binary", "/bin/true"))
    text = unit.read_text()
    assert "CPUAffinity=0" in text and "Nice=19" in text and "CPUSchedulingPolicy=idle" in text
    assert "echo 19 > /proc/$$MAINPID/autogroup" in text  # the service's session yields, as the trial's did
    assert "MemoryMax=6G" in text and "CPUQuota=" in text
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_status_summarises_the_study(study_env: dict) -> None:
    proc = sweep_cli("status", "--study", "x", env=study_env["env"])
    assert proc.returncode == 0, proc.stderr
    assert "2 trials: 2 complete" in proc.stdout and "export policy's pick: trial" in proc.stdout


def test_server_exports_warn_when_the_sweep_paced_decoding() -> None:
    from sweep.results.export import render

    record = {"config": {"model": "m", "quant": "Q4_0", "cpus": None, "nice": 0, "sched_policy": "normal",
                         "pace_duty": 0.5, "pace_tps": None},
              "provenance": {"study": "s", "trial": 1}, "meets_all_budgets": True, "budgets": {}, "metrics": {},
              "environment": {}, "llama_server": "/bin/true -m /etc/hostname", "llama_server_args": "/bin/true -m /etc/hostname"}
    for fmt in ("llama-server", "systemd"):
        assert "llama-server cannot do" in render(record, fmt)
    record["config"]["pace_duty"] = None
    assert "cannot do" not in render(record, "systemd")


def test_a_unit_of_a_trial_measured_in_a_shared_cgroup_says_so() -> None:
    from sweep.results.export import render

    record = {"config": {"model": "m", "quant": "Q4_0", "cpus": None, "nice": 19, "sched_policy": "idle"},
              "provenance": {"study": "s", "trial": 1}, "meets_all_budgets": True, "budgets": {},
              "metrics": {"cgroup_own": 0.0}, "environment": {}, "llama_server": "/bin/true -m /etc/hostname",
              "llama_server_args": "/bin/true -m /etc/hostname"}
    unit = render(record, "systemd")
    assert "measured in one cgroup with the user's programs" in unit and "cpu_weight: idle" in unit
    assert "cgroup with the user's" not in render(record, "llama-server")  # a script runs beside the user, as measured
    record["metrics"]["cgroup_own"] = 1.0
    assert "WARNING" not in render(record, "systemd")


@pytest.mark.slow
def test_a_full_disk_is_not_bad_input(study_env: dict) -> None:
    proc = sweep_cli("export", "--study", "x", "-o", "/dev/full", "--allow-infeasible", env=study_env["env"])
    assert proc.returncode == 4, proc.stderr  # before: an internal error (1); exit 2 would claim bad input
    assert "No space left on device" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def _keyed_record(server: str) -> dict:
    """A hand-built record whose llama-server is ``server`` (model /etc/hostname): no model loads."""
    return {"config": {"model": "m", "quant": "Q4_0", "cpus": None, "nice": 0, "sched_policy": "normal"},
            "provenance": {"study": "s", "trial": 1}, "meets_all_budgets": True, "budgets": {}, "metrics": {},
            "environment": {}, "llama_server": f"{server} -m /etc/hostname",
            "llama_server_args": f"{server} -m /etc/hostname"}


def test_the_llama_server_script_refuses_a_key_file_that_holds_no_key(tmp_path: Path) -> None:
    from sweep.results.export import render

    # llama-server skips the empty lines of --api-key-file, and with no key at all serves anyone.
    started = tmp_path / "started"
    server = tmp_path / "server.sh"
    server.write_text(f"#!/bin/sh\ntouch {started}\n")
    server.chmod(0o755)
    script = tmp_path / "serve.sh"
    script.write_text(render(_keyed_record(str(server)), "llama-server"))
    key = tmp_path / "api-key"
    for empty in ("", " \n\t\n\n"):  # touched, or half written
        key.write_text(empty)
        proc = subprocess.run(["/bin/sh", str(script)], capture_output=True, text=True, timeout=30,
                              env={"PATH": "/usr/bin:/bin", "SWEEP_LLM_API_KEY_FILE": str(key)})
        assert proc.returncode == 2 and not started.exists(), (empty, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and "no API key" in proc.stderr and str(key) in proc.stderr
    key.write_text("\n  \nsecret\n")
    proc = subprocess.run(["/bin/sh", str(script)], capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin", "SWEEP_LLM_API_KEY_FILE": str(key)})
    assert proc.returncode == 0 and started.exists(), proc.stderr


def test_the_unit_refuses_to_start_on_a_credential_that_holds_no_key(tmp_path: Path) -> None:
    from sweep.results.export import API_KEY_SOURCE, render

    import unitrun

    if os.geteuid() != 0:
        pytest.skip("the unit stand-in starts the service as its own user: run the tests as root")
    unit = tmp_path / "sweep-llm.service"
    unit.write_text(render(_keyed_record("/bin/true"), "systemd"))
    if shutil.which("systemd-analyze"):
        check = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
    key = tmp_path / "api-key"
    for empty in ("", " \n\t\n\n"):
        key.write_text(empty)
        with pytest.raises(RuntimeError, match="no API key"):
            unitrun.start(unit, credentials={API_KEY_SOURCE: key})
    key.write_text("secret\n")
    proc = unitrun.start(unit, credentials={API_KEY_SOURCE: key})
    assert proc.wait(timeout=30) == 0  # /bin/true: the service did start


def test_a_link_is_refused_where_a_user_could_repoint_it(tmp_path: Path) -> None:
    from sweep.results.export import service_path_problem

    if os.geteuid() != 0:
        pytest.skip("the links must be root's: run the tests as root")
    # The link's target is root's (/bin/true), but whoever can write its directory can repoint it.
    writable = tmp_path / "open"
    writable.mkdir()
    writable.chmod(0o757)
    (writable / "llama-server").symlink_to("/bin/true")
    assert "writable by others" in (service_path_problem(str(writable / "llama-server")) or "")
    # A sticky directory (as /tmp) protects root's link in it, but not another user's.
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    (sticky / "root").symlink_to("/bin/true")
    (sticky / "user").symlink_to("/bin/true")
    os.lchown(sticky / "user", 1000, 1000)
    assert service_path_problem(str(sticky / "root")) is None
    assert "belongs to uid 1000" in (service_path_problem(str(sticky / "user")) or "")
    # A link on the way to a link is checked too, as the kernel follows it.
    (tmp_path / "hop").symlink_to(writable / "llama-server")
    assert "writable by others" in (service_path_problem(str(tmp_path / "hop")) or "")
    assert service_path_problem("/bin/true") is None


def test_install_copies_the_libraries_a_built_llama_server_loads(tmp_path: Path) -> None:
    """A llama-server of `sweep tools build` loads its libraries from ../lib: those its manifest
    lists go beside the copy, root's, and nothing else of that directory."""
    import tempfile

    from sweep.results.export import install

    if os.geteuid() != 0:
        pytest.skip("--install copies into a directory of root's: run the tests as root")
    built = tmp_path / "llama-cpp-python-9.9.9"
    for sub in ("bin", "lib"):
        (built / sub).mkdir(parents=True)
    (built / "bin" / "llama-server").write_text("#!/bin/sh\n")
    (built / "lib" / "libllama.so.0").write_text("llama")
    (built / "lib" / "libllama-server-impl.so").write_text("server")  # no version: its own soname
    (built / "lib" / "stray.txt").write_text("not a library of the build")
    (built / "tools.json").write_text(json.dumps({"libraries": {"libllama.so.0": "x", "libllama-server-impl.so": "y"}}))
    model = tmp_path / "m.gguf"
    model.write_text("model")
    opt = Path(tempfile.mkdtemp(prefix="sweep-opt-"))
    try:
        opt.chmod(0o755)
        install({**_keyed_record(str(built / "bin" / "llama-server")), "config": {"model_path": str(model)}}, opt)
        assert sorted(p.name for p in (opt / "lib").iterdir()) == ["libllama-server-impl.so", "libllama.so.0"]
        assert all(p.stat().st_mode & 0o777 == 0o644 and p.stat().st_uid == 0 for p in (opt / "lib").iterdir())
    finally:
        shutil.rmtree(opt)


def test_install_never_follows_a_link_planted_in_its_directory(tmp_path: Path) -> None:
    import tempfile

    from sweep.results.export import install

    if os.geteuid() != 0:
        pytest.skip("--install copies into a directory of root's: run the tests as root")
    opt = Path(tempfile.mkdtemp(prefix="sweep-opt-"))
    try:
        opt.chmod(0o755)
        server, model = tmp_path / "llama-server", tmp_path / "m.gguf"
        server.write_text("#!/bin/sh\n")
        model.write_text("model")
        victim, other = tmp_path / "victim", tmp_path / "other"
        victim.write_text("root's file")
        victim.chmod(0o644)
        other.write_text("MODEL")  # root's too, and the size of the model
        for sub in ("bin", "models"):
            (opt / sub).mkdir()
        (opt / "bin" / "llama-server.partial").symlink_to(victim)  # the fixed name the copy went through
        (opt / "models" / "m.gguf").symlink_to(other)  # what a size check through the link would keep
        out = install({**_keyed_record(str(server)), "config": {"model_path": str(model)}}, opt)
        assert victim.read_text() == "root's file" and victim.stat().st_mode & 0o777 == 0o644
        for copy, text, mode in ((opt / "bin" / "llama-server", "#!/bin/sh\n", 0o755),
                                 (opt / "models" / "m.gguf", "model", 0o644)):
            assert not copy.is_symlink() and copy.read_text() == text and copy.stat().st_mode & 0o777 == mode, copy
        assert out["llama_server_args"] == f"{opt / 'bin' / 'llama-server'} -m {opt / 'models' / 'm.gguf'}"
        assert not list(opt.glob("*/.*.partial"))  # the copies' own temp files are gone
    finally:
        shutil.rmtree(opt)


def test_install_checks_its_directory_before_it_copies(tmp_path: Path) -> None:
    from sweep.errors import ExportError
    from sweep.results.export import install

    if os.geteuid() != 0:
        pytest.skip("--install copies into a directory of root's: run the tests as root")
    writable = tmp_path / "open"
    writable.mkdir()
    writable.chmod(0o777)
    model = tmp_path / "m.gguf"
    model.write_text("model")
    record = {**_keyed_record("/bin/true"), "config": {"model_path": str(model)}}
    with pytest.raises(ExportError, match="is writable by"):
        install(record, writable / "opt")
    assert not (writable / "opt" / "bin" / "true").exists()  # refused before a byte was copied
