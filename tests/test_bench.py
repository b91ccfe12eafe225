"""The bench harness (bench/_harness.py) and the docs' tables it feeds (bench/tables.py): a table
in docs/ is what its data in bench/data/ renders, so a figure edited by hand fails here. The
command reference (bench/cli_reference.py) likewise is what sweep/cli.py renders."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO

TABLES = REPO / "bench" / "tables.py"
CLI_REFERENCE = REPO / "bench" / "cli_reference.py"


def test_the_docs_tables_are_what_bench_data_renders() -> None:
    proc = subprocess.run([sys.executable, str(TABLES), "--check"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_figure_edited_by_hand_fails_the_check(tmp_path: Path) -> None:
    page = shutil.copy(REPO / "docs" / "injection.md", tmp_path / "injection.md")
    text = page.read_text()
    row = "| qwen2.5-coder-1.5b:Q4_K_M | python | none | 0.62 | 0.62 [0.47, 0.76] |"
    assert text.count(row) == 1
    page.write_text(text.replace(row, row.replace("| 0.62 [", "| 0.60 [")))
    proc = subprocess.run([sys.executable, str(TABLES), "--check", str(page)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "bench:injection" in proc.stdout


def test_the_cli_reference_is_what_the_command_tree_renders() -> None:
    proc = subprocess.run([sys.executable, str(CLI_REFERENCE), "--check"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_cli_reference_edited_by_hand_fails_the_check(tmp_path: Path) -> None:
    page = shutil.copy(REPO / "docs" / "cli.md", tmp_path / "cli.md")
    text = page.read_text()
    line = "sweep run [OPTIONS] SPACE\n"
    assert text.count(line) == 1
    page.write_text(text.replace(line, "sweep run [OPTIONS] SPACE FILE\n"))
    proc = subprocess.run([sys.executable, str(CLI_REFERENCE), "--check", str(page)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "COLUMNS": "40"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "make cli-docs" in proc.stderr
    assert page.read_text() != text  # --check writes nothing


BENCH = '''
import _harness

def main(args):
    print("the usual line")
    return {"rows": [{"x": 1}]}

if __name__ == "__main__":
    ap = _harness.options(__doc__, rounds=2)
    ap.add_argument("--storage")
    _harness.run(main, ap, lock=False)
'''


def test_a_results_file_keeps_the_host_commit_and_command_without_a_password(tmp_path: Path) -> None:
    script = tmp_path / "toy.py"
    script.write_text(BENCH)
    out = tmp_path / "data" / "toy.json"
    proc = subprocess.run([sys.executable, str(script), "--json", "-o", str(out), "--storage",
                           "postgresql+psycopg://me:secret@db/sweep"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO / "bench")})
    assert proc.returncode == 0, proc.stderr
    assert "the usual line" in proc.stderr  # with --json, stdout is the results file alone
    printed = json.loads(proc.stdout)
    assert printed == json.loads(out.read_text())
    assert {k: printed[k] for k in ("format", "version", "bench", "results")} == \
        {"format": "sweep-bench", "version": 1, "bench": "toy", "results": {"rows": [{"x": 1}]}}
    assert printed["host"]["logical_cpus"] >= 1 and printed["started"] and printed["wall_s"] >= 0
    if (REPO / ".git").exists():  # the checkout the harness is in
        assert len(printed["commit"]) == 40 and isinstance(printed["dirty"], bool)
    assert "secret" not in proc.stdout and printed["command"][-1] == "postgresql+psycopg://me:***@db/sweep"
