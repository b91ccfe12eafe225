"""Every path a test touches is temporary: storage, model cache, working directory."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
# The tools `sweep tools build` made (llama-server, llama-bench) live in the user's cache; the tests'
# own cache is temporary, so point at the real tools before it is swapped in.
os.environ.setdefault("SWEEP_TOOLS_DIR", str(Path(os.environ.get("SWEEP_CACHE_DIR") or Path.home() / ".cache" / "sweep")
                                             / "tools"))

# A test that starts a real model, server, sweep or calibrated load says so itself, with
# ``@pytest.mark.slow`` (or its module's ``pytestmark``): ``make test-fast`` leaves those out. These
# fixtures start such things, so a test that takes one without the mark is a collection error,
# not a silently slow inner loop.
SLOW_FIXTURES = {"smollm2_path", "swept", "verified", "study_env", "report", "one_trial", "three_trials", "postgres",
                 "pg_url", "server_tools", "server_study"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    unmarked = [item.nodeid for item in items if SLOW_FIXTURES & set(getattr(item, "fixturenames", ()))
                and item.get_closest_marker("slow") is None]
    if unmarked:
        raise pytest.UsageError("mark these @pytest.mark.slow (they take a fixture that starts a real model, server "
                                "or sweep): " + ", ".join(unmarked[:5]) + (" ..." if len(unmarked) > 5 else ""))


@pytest.fixture(scope="session", autouse=True)
def _no_export_cgroups_left() -> Iterator[None]:
    """The exports (and the unit stand-in) keep a cgroup between starts, as a service does; the
    tests leave none behind."""
    yield
    from sweep.trial import cgroups

    for site in cgroups._own_dirs(["cpu", "memory"]).values():
        for name in ("sweep-llm", "sweep-unit"):
            if not isinstance(site, str):
                cgroups._remove(os.path.join(site[1], name))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model cache for the session (derived and assembled models), never the user's."""
    path = tmp_path_factory.mktemp("sweep-cache")
    os.environ["SWEEP_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SWEEP_STORAGE", f"sqlite:///{tmp_path / 'studies.db'}")
    monkeypatch.setenv("SWEEP_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.delenv("SWEEP_MODELS_DIR", raising=False)
    return tmp_path


@pytest.fixture
def fake_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every trial the test starts (and its children start) runs ``sweep.testing``'s fake worker:
    no model, the real runner, monitor, orchestrator, spool and database. For tests about what
    surrounds a trial; the real model and llama-server keep tests of their own."""
    from sweep.testing import ENV_WORKER

    monkeypatch.setenv(ENV_WORKER, "fake")


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    from sweep.models.registry import _bundled_path

    return _bundled_path("smollm2-135m")


def stray_processes() -> list[str]:
    """Command lines of any worker or probe of this test session's interpreter still alive.

    Matching the interpreter keeps a second sweep installation on the same machine
    (another checkout's tests, say) from counting as ours.
    """
    import time

    time.sleep(0.2)
    mine = sys.executable.encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ")
        except OSError:
            continue
        ours = (b"sweep.trial.worker", b"sweep.trial.server_worker", b"sweep.testing.worker", b"sweep.measure.probe",
                b"sweep.measure.foreground")
        if cmd.startswith(mine) and any(name in cmd for name in ours):
            found.append(cmd.decode(errors="replace"))
    return found


def wait_for(predicate: Any, timeout: float = 180.0) -> None:
    """Poll ``predicate`` every 0.1 s until it holds; fail the test after ``timeout``."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    pytest.fail("condition not reached in time")


def sweep_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the real ``sweep`` entry point in a child process."""
    return subprocess.run([sys.executable, "-m", "sweep", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def sweep_cli_all(*commands: list[str], timeout: float = 600) -> list[subprocess.CompletedProcess[str]]:
    """Several ``sweep`` commands at once (readers that do not measure), each one's result in order."""
    procs = [subprocess.Popen([sys.executable, "-m", "sweep", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for args in commands]
    results = []
    for args, proc in zip(commands, procs):
        out, err = proc.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def write_space(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


from sweep.testing import QUICK_TAIL, TINY_SPACE  # noqa: E402,F401 - the tiny space sweep.testing ships


@pytest.fixture(scope="session")
def one_trial(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """A real one-trial study of TINY_SPACE (study "tiny"), made once for the session: each test
    that continues or reads it copies the file first."""
    work = tmp_path_factory.mktemp("one-trial")
    space = write_space(work / "s.yaml", TINY_SPACE)
    proc = sweep_cli("run", str(space), "--trials", "1", "--quiet",
                     env={"SWEEP_STORAGE": f"sqlite:///{work / 'studies.db'}", "SWEEP_SPOOL_DIR": str(work / "spool")})
    assert proc.returncode == 0, proc.stderr
    return work / "studies.db"


@pytest.fixture(scope="session")
def three_trials(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict[str, Any]:
    """A real three-trial sweep of TINY_SPACE as study "e2e", made once for the session, with the
    run's output: ``db`` (copy it before changing it) and ``run`` (the CompletedProcess)."""
    work = tmp_path_factory.mktemp("three-trials")
    space = write_space(work / "tiny.yaml", TINY_SPACE)
    proc = sweep_cli("run", str(space), "--study", "e2e", "--trials", "3",
                     env={"SWEEP_STORAGE": f"sqlite:///{work / 'studies.db'}", "SWEEP_SPOOL_DIR": str(work / "spool")})
    return {"db": work / "studies.db", "run": proc}


@pytest.fixture(scope="session")
def server_tools() -> Path:
    """The llama-server ``sweep tools build`` made. Skipped where it is not built, unless
    ``SWEEP_REQUIRE_TOOLS`` is set (CI sets it: there the server tests must run)."""
    from sweep.models.tools import ToolsError, binary

    try:
        return binary("llama-server")
    except ToolsError as exc:
        if os.environ.get("SWEEP_REQUIRE_TOOLS"):
            pytest.fail(f"the tools are required here (SWEEP_REQUIRE_TOOLS): {exc}")
        pytest.skip(f"{exc} (make tools)")


def ask(port: int, content: str = "Say hello.", key: str | None = None) -> str:
    """One cold chat request to a llama-server on loopback (with ``key`` as its API key); its answer."""
    import json
    import urllib.request

    body = json.dumps({"messages": [{"role": "user", "content": content}], "max_tokens": 8,
                       "temperature": 0, "cache_prompt": False}).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body, headers=headers)
    reply = json.load(urllib.request.urlopen(req, timeout=60))
    return reply["choices"][0]["message"]["content"]


@contextlib.contextmanager
def serving(start: Any) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A server started by ``start(port)`` (a ``Popen``) on a free port, once it answers /health;
    the process and its port. Its whole session is ended afterwards."""
    import signal
    import urllib.request

    from sweep.trial.server_worker import free_port

    port = free_port()
    proc = start(port)
    try:
        def healthy() -> bool:  # /health answers without the API key
            assert proc.poll() is None, f"the exported server exited with {proc.returncode}"
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200
            except OSError:
                return False

        wait_for(healthy, timeout=60)
        yield proc, port
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM) if os.getpgid(proc.pid) == proc.pid else proc.terminate()
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def serve_and_ask(argv: list[str], key_file: Path | None = None) -> str:
    """Start ``argv --port N`` (an exported script finds its API key in ``key_file``), ask it one
    question, stop it; the answer."""
    env = {**os.environ, "SWEEP_LLM_API_KEY_FILE": str(key_file)} if key_file else None
    with serving(lambda port: subprocess.Popen([*argv, "--port", str(port)], stdout=subprocess.DEVNULL,
                                               stderr=subprocess.STDOUT, env=env)) as (_, port):
        return ask(port, key=key_file.read_text().strip() if key_file else None)


def api_key(path: Path) -> Path:
    """A fresh API key file, as the export's comment says to make one."""
    import secrets

    path.write_text(secrets.token_urlsafe(24) + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL server for the session (``pgserver.py``); yields a URL template with
    ``{db}``. Skipped where PostgreSQL is absent, unless ``SWEEP_REQUIRE_POSTGRES`` is set (CI sets
    it: there the tests must run)."""
    from pgserver import postgres_bin, throwaway_postgres

    if postgres_bin() is None:
        if os.environ.get("SWEEP_REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL is required (SWEEP_REQUIRE_POSTGRES) but not installed")
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    with throwaway_postgres() as template:
        yield template


@pytest.fixture
def pg_url(postgres: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh, empty database on the throwaway server, set as ``SWEEP_STORAGE``."""
    from pgserver import new_database

    url = new_database(postgres)
    monkeypatch.setenv("SWEEP_STORAGE", url)
    return url


@contextlib.contextmanager
def database_away(url: str) -> Iterator[None]:
    """The SQLite database as unreachable as a stopped server: a write lock held on it, which every
    read and write meets as "database is locked" (give SWEEP_SQLITE_BUSY_S a short wait)."""
    conn = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=60)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        conn.rollback()
        conn.close()
