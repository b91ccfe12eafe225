"""Scorers on hand-worked cases, and the task file's schema."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from sweep.correctness.prompts import shot_pool
from sweep.correctness.tasks import Task, load_tasks, score, stratified_subset
from sweep.errors import TaskFileError


def task(kind: str, expected) -> Task:
    return Task(id="x", kind=kind, input="...", expected=expected, source="test")


@pytest.mark.parametrize("answer, value, parsed", [
    ("Malicious.", 1.0, True),
    ("benign", 0.0, True),
    ("This is malicious, suspicious or benign", 0.0, False),  # an echo of the question
    ("I cannot tell", 0.0, False),
    ("not maliciously", 0.0, False),  # a word boundary, not a substring
])
def test_verdict(answer: str, value: float, parsed: bool) -> None:
    result = score(task("verdict", "malicious"), answer)
    assert (result.value, result.parsed) == (value, parsed)


@pytest.mark.parametrize("answer, value, parsed", [
    ("Critical", 1.0, True),
    ("high", 0.5, True),  # one level off
    ("medium severity", 0.0, True),
    ("low, medium, high or critical", 0.0, False),
])
def test_severity_with_partial_credit(answer: str, value: float, parsed: bool) -> None:
    result = score(task("severity", "critical"), answer)
    assert (result.value, result.parsed) == (value, parsed)


@pytest.mark.parametrize("answer, value, parsed", [
    ("B", 1.0, True),
    ("B) certutil", 1.0, True),
    ("The answer is B.", 1.0, True),
    ("A", 0.0, True),
    ("A) vim B) certutil C) htop D) nmap", 0.0, False),  # an echo of the options
    ("certutil", 0.0, False),
])
def test_multiple_choice_letter(answer: str, value: float, parsed: bool) -> None:
    result = score(task("mcq", "B"), answer)
    assert (result.value, result.parsed) == (value, parsed)


def test_attack_exact_partial_and_parse_failure() -> None:
    t = task("attack", ["T1003.001"])
    assert score(t, "T1003.001").value == 1.0
    assert score(t, "T1003.002").value == pytest.approx(0.5)  # right technique, wrong sub-technique
    assert score(t, "T1003.001 and T1059").value == pytest.approx(2 * 0.5 * 1 / 1.5)  # precision 0.5, recall 1
    assert score(t, "credential dumping").parsed is False


def test_iocs_set_f1() -> None:
    t = task("iocs", ["45.83.64.1", "C:\\Users\\Public\\a.exe"])
    assert score(t, "45.83.64.1\nC:\\Users\\Public\\a.exe").value == 1.0
    assert score(t, "45.83.64.1").value == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert score(t, "45.83.64.1, 10.0.0.1").value == pytest.approx(0.5)  # precision 0.5, recall 0.5
    assert score(t, "none found").parsed is False


def test_iocs_echo_of_the_log_line_is_a_parse_failure() -> None:
    line = "2026-03-02T10:14:07Z fw DENY src=10.0.4.17 dst=45.83.64.1 dport=4444 proto=tcp"
    t = Task(id="x", kind="iocs", input=line, expected=["45.83.64.1"], source="test")
    # Copied back, even cut short by max_tokens, the line would earn F1 0.67 from the regex alone.
    for echo in (line, f"Log: {line}", line[:40]):
        assert (score(t, echo).value, score(t, echo).parsed) == (0.0, False), echo
    assert score(t, "45.83.64.1").value == 1.0
    assert score(t, "dst=45.83.64.1").value == 1.0  # a fragment around the indicator is not an echo


def test_default_set_is_big_enough_and_balanced() -> None:
    tasks = load_tasks()
    # At 0.8, 240 items give a 95% interval about +-0.05 wide: enough to tell 0.80 from 0.70.
    assert len(tasks) >= 240
    assert len({t.id for t in tasks}) == len(tasks)
    kinds = Counter(t.kind for t in tasks)
    assert set(kinds) == {"verdict", "iocs", "attack", "severity", "mcq"}
    for kind in ("verdict", "severity", "mcq"):  # a constant answer scores no better than chance
        labels = Counter(t.expected for t in tasks if t.kind == kind)
        assert max(labels.values()) == min(labels.values()), (kind, labels)


def test_subset_is_stratified_and_fixed() -> None:
    tasks = load_tasks()
    sub = stratified_subset(tasks, 10)
    assert Counter(t.kind for t in sub) == {"verdict": 2, "iocs": 2, "attack": 2, "severity": 2, "mcq": 2}
    assert sub == stratified_subset(list(reversed(tasks)), 10)


@pytest.mark.parametrize("line, needle", [
    ("{not json", ":2: invalid JSON"),
    ('{"id": "a", "kind": "poem", "input": "x", "expected": "y", "source": "s"}', ":2: field 'kind'"),
    ('{"id": "a", "kind": "verdict", "input": "x", "source": "s"}', ":2: field 'expected'"),
    ('{"id": "ok", "kind": "verdict", "input": "x", "expected": "benign", "source": "s"}', ":2: field 'id': duplicate"),
    ('{"id": "b", "kind": "verdict", "input": "x", "expected": "fine", "source": "s"}', ":2: field 'expected'"),
])
def test_bad_task_file_names_line_and_field(tmp_path: Path, line: str, needle: str) -> None:
    good = '{"id": "ok", "kind": "verdict", "input": "x", "expected": "benign", "source": "s"}'
    path = tmp_path / "t.jsonl"
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(TaskFileError, match=needle):
        load_tasks(path)


def test_tasks_check_cli(tmp_path: Path) -> None:
    from conftest import sweep_cli

    path = tmp_path / "t.jsonl"
    path.write_text('{"id": 1}\n')
    proc = sweep_cli("tasks", "check", str(path))
    assert proc.returncode == 2 and "t.jsonl:1: field" in proc.stderr


def test_best_constant_answer_is_the_most_rewarded_single_answer() -> None:
    from sweep.correctness.tasks import best_constants

    def make(i: int, kind: str, expected) -> Task:
        return Task(id=f"{kind}{i}", kind=kind, input="...", expected=expected, source="test")

    tasks = [make(0, "verdict", "benign"), make(1, "verdict", "benign"), make(2, "verdict", "malicious"),
             make(0, "severity", "high"), make(1, "severity", "low"), make(2, "severity", "medium"),
             make(0, "attack", ["T1003.001"]), make(1, "attack", ["T1003.002"]), make(2, "attack", ["T1490"])]
    best = best_constants(tasks)
    assert best["verdict"] == ("benign", [1.0, 1.0, 0.0])
    # "medium" is right once and one level off "high" and "low" (2.0); "low" or "high" earns 1.5.
    assert best["severity"] == ("medium", [0.5, 0.5, 1.0])
    # T1003.001 is exact on one item and the parent technique of another.
    assert best["attack"] == ("T1003.001", [1.0, 0.5, 0.0])


def test_tasks_baseline_cli_on_the_bundled_set() -> None:
    from conftest import sweep_cli

    proc = sweep_cli("tasks", "baseline")
    assert proc.returncode == 0, proc.stderr
    mcq = next(line for line in proc.stdout.splitlines() if line.startswith("mcq"))
    assert "0.250" in mcq  # four letters, exactly balanced: any one letter is right a quarter of the time


@pytest.mark.parametrize("name", ["tasks-v1", "tasks-v2"])
def test_every_items_own_answer_scores_full_marks(name: str) -> None:
    """An item whose own expected answer does not score 1.0 through the scorer (in every answer form)
    would mark a right model wrong: the scorer and the item must agree."""
    from sweep.correctness.prompts import OUTPUTS, _reply, answer_text

    for task in load_tasks(name) + [t for pool in shot_pool().values() for t in pool]:
        for output in OUTPUTS:
            assert score(task, answer_text(_reply(task, output), output)).value == 1.0, (task.id, output)


def _normal(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def test_no_scored_input_is_a_near_duplicate_of_another() -> None:
    """Normalised (case, punctuation and spacing ignored), no two scored inputs are the same, and
    none is mostly the same words as another (Jaccard similarity of word sets under 0.8)."""
    tasks = load_tasks()
    normal = {t.id: _normal(t.input) for t in tasks}
    assert len(set(normal.values())) == len(tasks)
    words = {k: set(v.split()) for k, v in normal.items()}
    close = [(a, b) for i, a in enumerate(words) for b in list(words)[i + 1:]
             if len(words[a] & words[b]) / len(words[a] | words[b]) >= 0.8]
    assert not close


def test_old_task_sets_stay_loadable_by_name() -> None:
    v1, v2 = load_tasks("tasks-v1"), load_tasks("tasks-v2")
    assert len(v1) == 82 and len(v2) >= 240
    assert {t.id for t in v1} <= {t.id for t in v2}


def test_a_line_separator_inside_an_item_is_text_not_a_line_end(tmp_path: Path) -> None:
    """JSON allows U+2028, U+2029 and NEL raw inside a string; ``str.splitlines`` ends a line at each."""
    item = ('{"id": "a", "kind": "verdict", "input": "one\u2028two\u2029three\x85four", "expected": "benign", '
            '"source": "s"}')
    path = tmp_path / "t.jsonl"
    path.write_text(item + "\n", encoding="utf-8")
    [task] = load_tasks(path)  # before: "t.jsonl:1: invalid JSON (Unterminated string ...)"
    assert task.input == "one\u2028two\u2029three\x85four"


def test_a_task_file_that_is_not_utf8_is_one_line_naming_file_line_and_byte_exit_2(tmp_path: Path) -> None:
    from conftest import sweep_cli

    good = b'{"id": "a", "kind": "verdict", "input": "x", "expected": "benign", "source": "s"}\n'
    path = tmp_path / "t.jsonl"
    path.write_bytes(good + good.replace(b'"a"', b'"b"').replace(b'"x"', b'"caf\xe9"'))
    said = rf"^{re.escape(str(path))}:2: not UTF-8 text \(byte offset {len(good) + 44}\)$"
    with pytest.raises(TaskFileError, match=said):
        load_tasks(path)
    proc = sweep_cli("tasks", "check", str(path))
    assert proc.returncode == 2, proc.stderr  # before: 1, "internal error: UnicodeDecodeError"
    assert proc.stderr == f"error: {path}:2: not UTF-8 text (byte offset {len(good) + 44})\n"
