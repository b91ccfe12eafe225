"""``sweep table``: a study of real SmolLM2 trials as a JSON table, row for row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sweep.measure.metrics import percentile

from conftest import TINY_SPACE, sweep_cli, write_space

# Two configurations (nice 0 or 19), each measured again rather than reused: three trials
# repeat at least one of them.
REPEATED = TINY_SPACE.replace('''  n_threads: {low: 1, high: all}
  n_batch: [64, 512]
''', "").replace("  noise_retries: 0\n", "  noise_retries: 0\n  duplicates: repeat\n")
# The worker idles 2 s but may live 1 s: the trial fails (timeout), every time.
TIMES_OUT = REPEATED.replace("name: tiny", "name: short").replace("idle_seconds: 0.5", "idle_seconds: 2") \
    .replace("timeout_seconds: 120", "timeout_seconds: 1")


@pytest.fixture(scope="module")
def tabled(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict:
    work = tmp_path_factory.mktemp("table")
    env = {"SWEEP_STORAGE": f"sqlite:///{work / 'studies.db'}"}
    ran = sweep_cli("run", str(write_space(work / "r.yaml", REPEATED)), "--study", "rep", "--trials", "3", env=env)
    assert ran.returncode == 0, ran.stderr
    failed = sweep_cli("run", str(write_space(work / "f.yaml", TIMES_OUT)), "--study", "short", "--trials", "1",
                       env=env)
    assert failed.returncode == 3, failed.stderr  # every trial it measured failed
    out = {}
    for study in ("rep", "short"):
        proc = sweep_cli("table", "--study", study, "-o", str(work / f"{study}.json"), env=env)
        assert proc.returncode == 0, proc.stderr
        out[study] = json.loads((work / f"{study}.json").read_text())
        out[f"{study}_stdout"] = proc.stdout
    return {"work": work, "env": env, **out}


def _trials(env: dict, name: str) -> list:
    from sweep.study.writer import load_study

    return load_study(env["SWEEP_STORAGE"], name).get_trials()


@pytest.mark.slow
def test_rows_match_the_studys_trials(tabled: dict) -> None:
    table, trials = tabled["rep"], _trials(tabled["env"], "rep")
    assert table["format"] == "sweep-table" and table["version"] == 1
    assert [r["number"] for r in table["rows"]] == [t.number for t in trials] == [0, 1, 2]
    for row, t in zip(table["rows"], trials):
        assert row["ok"] and row["state"] == "COMPLETE" and row["fail_reason"] is None
        assert row["params"] == t.params
        assert row["config"] == t.user_attrs["config"]
        assert row["figures"]["latency_p95_s"] == t.user_attrs["latency_p95_s"]
        assert row["figures"]["correctness"] == t.user_attrs["correctness"]
        assert row["values"] == pytest.approx(list(t.values))
        assert row["wall_seconds"] == t.user_attrs["wall_seconds"] > 0
        assert len(row["latencies_s"]) == 3  # the space's three prompts, in order
        assert percentile(row["latencies_s"], 95) == pytest.approx(row["figures"]["latency_p95_s"], abs=1e-3)
        assert 0 < row["phases_s"]["active"] < row["phases_s"]["done"]
    assert "wrote 3 trials" in tabled["rep_stdout"]


@pytest.mark.slow
def test_repeats_of_one_configuration_group_together(tabled: dict) -> None:
    rows = tabled["rep"]["rows"]
    by_key: dict[str, list[dict]] = {}
    for r in rows:
        by_key.setdefault(r["config_key"], []).append(r)
    assert len(by_key) == len({json.dumps(r["params"], sort_keys=True) for r in rows}) <= 2
    for group in by_key.values():
        assert [r["repeat"] for r in group] == list(range(len(group)))
        assert all(r["config"] == group[0]["config"] for r in group)
    assert any(len(g) > 1 for g in by_key.values())
    assert tabled["rep"]["meta"]["n_configs"] == len(by_key)


@pytest.mark.slow
def test_metadata_names_what_the_rows_mean(tabled: dict) -> None:
    meta = tabled["rep"]["meta"]
    assert meta["study"] == "rep"
    assert meta["objectives"] == [{"name": "correctness", "direction": "maximize"},
                                  {"name": "cpu_active_p99_share_pct", "direction": "minimize"},
                                  {"name": "latency_p95_s", "direction": "minimize"}]
    assert meta["budgets"]["latency_p95_s"] == {"max": 2.5}
    assert meta["params"]["nice"] == {"type": "categorical", "choices": [0, 19]}
    assert meta["params"]["model"] == {"type": "categorical", "choices": ["smollm2-135m"]}
    assert meta["host"]["logical_cpus"] >= 1 and meta["host"]["cpu_model"]
    assert meta["date"] and meta["settings"]["prompts"] == 3
    assert meta["exported"]["command"][:2] == ["sweep", "table"]
    assert meta["command"] is None and meta["wall_seconds"] is None  # no recorder wrote them


@pytest.mark.slow
def test_a_failed_trial_is_a_row_with_its_reason(tabled: dict) -> None:
    (row,) = tabled["short"]["rows"]
    assert not row["ok"] and row["state"] == "FAIL" and row["fail_reason"] == "timeout"
    assert row["values"] is None and not row["feasible"] and row["repeat"] == 0


@pytest.mark.slow
def test_unknown_study_is_exit_2_with_one_line(tabled: dict, tmp_path: Path) -> None:
    proc = sweep_cli("table", "--study", "nope", "-o", str(tmp_path / "t.json"), env=tabled["env"])
    assert proc.returncode == 2 and proc.stderr.strip() == \
        f"error: no study named 'nope' in {tabled['env']['SWEEP_STORAGE']}"
    assert not (tmp_path / "t.json").exists()


def test_missing_database_is_exit_2_and_is_not_created(tmp_path: Path) -> None:
    db = tmp_path / "none.db"
    proc = sweep_cli("table", "--study", "x", "--storage", f"sqlite:///{db}", "-o", str(tmp_path / "t.json"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "no studies database" in proc.stderr and not db.exists()


def test_load_table_refuses_another_version(tmp_path: Path) -> None:
    from sweep.errors import TableError
    from sweep.results.table import load_table

    path = tmp_path / "t.json"
    path.write_text(json.dumps({"format": "sweep-table", "version": 99, "meta": {}, "rows": []}))
    with pytest.raises(TableError, match="version 99"):
        load_table(path)
    path.write_text("[]")
    with pytest.raises(TableError, match="not a sweep table"):
        load_table(path)


def test_no_password_is_stored_with_the_command_line() -> None:
    from sweep.study.storage import redact_argv

    argv = ["sweep", "table", "--storage", "postgresql+psycopg://sweep:hunter2@db/sweep", "-o", "t.json",
            "--storage=postgresql+psycopg://u:s3cret@h:5432/d"]
    out = redact_argv(argv)
    assert not any("hunter2" in a or "s3cret" in a for a in out)
    assert out[3] == "postgresql+psycopg://sweep:***@db/sweep" and out[-1].startswith("--storage=postgresql")
    plain = ["sweep", "run", "s.yaml", "--limit", "1", "--quiet"]
    assert redact_argv(plain) == plain
