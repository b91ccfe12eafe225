"""Importing CyberMetric and CTIBench files, the cwe kind, and list answers that follow the task.

Every file here is made up in the benchmarks' formats: neither dataset may be redistributed.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from sweep.correctness.importers import FORMATS, balanced_sample, import_tasks
from sweep.correctness.prompts import (
    LIST_CEILING,
    MAX_LIST,
    OUTPUTS,
    _reply,
    answer_text,
    grammar_for,
    list_limit,
    request_for,
    schema_for,
    shot_pool,
)
from sweep.correctness.tasks import Task, best_constants, load_tasks, score
from sweep.errors import TaskFileError

from conftest import sweep_cli

MCQ_HEADER = ["URL", "Question", "Option A", "Option B", "Option C", "Option D", "Prompt", "GT"]
ATE_HEADER = ["URL", "Platform", "Description", "Prompt", "GT"]
RCM_HEADER = ["URL", "Description", "Prompt", "GT"]


def tsv(header: list[str], rows: list[list[str]]) -> str:
    """CTIBench's layout: tab-separated, CRLF line ends, no quoting, no newline after the last row."""
    return "\r\n".join("\t".join(r) for r in [header, *rows])


def cybermetric(questions: list[dict[str, object]]) -> str:
    return json.dumps({"questions": questions}, indent=2)


def q(question: str, solution: str = "B", **answers: str) -> dict[str, object]:
    return {"question": question, "answers": answers or {"A": "21", "B": "443", "C": "25", "D": "53"},
            "solution": solution}


GOOD = {
    "cybermetric": ("CyberMetric-3-v1.json", cybermetric([
        q("Which TCP port does HTTPS listen on by default?"),
        q("Which hash length is SHA-256?", "D", A="128 bits", B="160 bits", C="224 bits", D="256 bits"),
        q("What does MFA add to a password?", "A", A="another factor", B="a longer password", C="a captcha",
          D="nothing"),
    ])),
    "cti-mcq": ("cti-mcq.tsv", tsv(MCQ_HEADER, [
        ["https://example.org/1", "Which tactic is credential dumping?", "Execution", "Credential Access", "Impact",
         "Discovery", "prompt", "B"],
        # A quote at the start of a field is text: the files have no quoting.
        ["https://example.org/2", '"Living off the land" means using what?', "Built-in tools", "New malware",
         "Zero-days", "Botnets", "prompt", "a"],
        ["https://example.org/3", "Which platform is macOS in ATT&CK?", "Enterprise", "ICS", "Mobile", "", "prompt",
         "A"],  # three options: D is left out
    ])),
    "cti-ate": ("cti-ate.tsv", tsv(ATE_HEADER, [
        ["https://example.org/s1", "Enterprise", "The tool talks HTTP to its server and encrypts with AES.", "p",
         "T1071, T1573"],
        ["https://example.org/s2", "Mobile", "The app reads the SMS inbox and the contact list.", "p",
         "T1636, T1430, T1418, T1426"],
    ])),
    "cti-rcm": ("cti-rcm.tsv", tsv(RCM_HEADER, [
        ["https://example.org/CVE-1", "A search box echoes its input into the page unescaped.", "p", "CWE-79"],
        ["https://example.org/CVE-2", "A freed buffer is read again after a reconnect.", "p", "cwe-0416"],
    ])),
}


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_good_file_imports_and_passes_tasks_check(tmp_path: Path, fmt: str) -> None:
    name, text = GOOD[fmt]
    src, out = write(tmp_path, name, text), tmp_path / "out.jsonl"
    proc = sweep_cli("tasks", "import", fmt, str(src), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    check = sweep_cli("tasks", "check", str(out))
    assert check.returncode == 0 and "tasks ok" in check.stdout, check.stderr
    tasks = load_tasks(out)
    assert tasks == import_tasks(fmt, src)
    assert all(t.source.startswith(name) for t in tasks)  # each item keeps where it came from
    first = {"cybermetric": "question 1", "cti-mcq": ":2 https://example.org/1", "cti-ate": ":2 https://example.org/s1",
             "cti-rcm": ":2 https://example.org/CVE-1"}[fmt]
    assert tasks[0].source == f"{name}{' ' if fmt == 'cybermetric' else ''}{first}"
    for task in tasks:  # the item's own answer scores full marks in every answer form
        for output in OUTPUTS:
            assert score(task, answer_text(_reply(task, output), output)).value == 1.0, (task.id, output)


def test_what_the_imported_items_hold(tmp_path: Path) -> None:
    mcq = import_tasks("cti-mcq", write(tmp_path, *GOOD["cti-mcq"]))
    assert mcq[1].input == ('"Living off the land" means using what? '
                            "A) Built-in tools B) New malware C) Zero-days D) Botnets")
    assert [t.expected for t in mcq] == ["B", "A", "A"]  # a lower-case letter is read as its letter
    assert mcq[2].input.endswith("A) Enterprise B) ICS C) Mobile")
    cm = import_tasks("cybermetric", write(tmp_path, *GOOD["cybermetric"]))
    assert cm[0].id == "CyberMetric-3-v1-1" and cm[0].source == "CyberMetric-3-v1.json question 1"
    assert cm[0].input == "Which TCP port does HTTPS listen on by default? A) 21 B) 443 C) 25 D) 53"
    ate = import_tasks("cti-ate", write(tmp_path, *GOOD["cti-ate"]))
    assert ate[1].kind == "attack" and ate[1].expected == ["T1636", "T1430", "T1418", "T1426"]
    assert ate[1].input.startswith("(ATT&CK Mobile matrix) ") and not ate[0].input.startswith("(")
    rcm = import_tasks("cti-rcm", write(tmp_path, *GOOD["cti-rcm"]))
    assert [(t.kind, t.expected) for t in rcm] == [("cwe", "CWE-79"), ("cwe", "CWE-416")]  # normalised


def _mcq_row(gt: str = "B", d: str = "Discovery") -> list[str]:
    return ["u", "Which tactic?", "Execution", "Credential Access", "Impact", d, "p", gt]


BAD = [
    ("cybermetric", "cm.json", "", "cm.json: empty file"),
    ("cybermetric", "cm.json", '{"questions": [', "cm.json:1: invalid JSON"),
    ("cybermetric", "cm.json", '{"questions": []}', "cm.json: no items"),
    ("cybermetric", "cm.json", '{"items": []}', "cm.json: not CyberMetric's format"),
    ("cybermetric", "cm.json", cybermetric([q("ok?"), q("which?", "E")]),
     "cm.json: question 2: key 'solution': answer 'E' is not one of A, B, C, D"),
    ("cybermetric", "cm.json", cybermetric([q("ok?"), {"question": "x", "answers": {}}]),
     "cm.json: question 2: missing key 'solution'"),
    ("cybermetric", "cm.json", cybermetric([q("ok?", A="a", B="b", C="c")]),
     "cm.json: question 1: key 'answers' must map A, B, C and D"),
    ("cti-mcq", "m.tsv", "", "m.tsv: empty file"),
    ("cti-mcq", "m.tsv", tsv(MCQ_HEADER, []), "m.tsv: no items"),
    ("cti-mcq", "m.tsv", tsv([c for c in MCQ_HEADER if c != "GT"], [_mcq_row()[:-1]]), "m.tsv:1: missing column 'GT'"),
    ("cti-mcq", "m.tsv", tsv(MCQ_HEADER, [_mcq_row(), _mcq_row("E")]),
     "m.tsv:3: column 'GT': answer 'E' is not one of A, B, C, D"),
    ("cti-mcq", "m.tsv", tsv(MCQ_HEADER, [_mcq_row(), _mcq_row("D", d="")]),
     "m.tsv:3: column 'GT': the answer, option D, has no text"),
    ("cti-mcq", "m.tsv", tsv(MCQ_HEADER, [_mcq_row(), _mcq_row()[:5]]),
     "m.tsv:3: cannot read the row: 5 tab-separated fields where the header has 8"),
    ("cti-mcq", "m.tsv", tsv(MCQ_HEADER, [_mcq_row()]).encode() + b"\r\nu\t\xff\xfe", "m.tsv:3: not UTF-8 text"),
    ("cti-ate", "a.tsv", tsv(ATE_HEADER, [["u", "Enterprise", "text", "p", "T1071, T15733"]]),
     "a.tsv:2: column 'GT': 'T15733' is not an ATT&CK technique ID"),
    ("cti-ate", "a.tsv", tsv(ATE_HEADER, [["u", "Enterprise", "text", "p", "T1071,"]]),
     "a.tsv:2: column 'GT': '' is not an ATT&CK technique ID"),
    ("cti-ate", "a.tsv", tsv(ATE_HEADER, [["u", "Enterprise", "", "p", "T1071"]]),
     "a.tsv:2: column 'Description' is empty"),
    ("cti-rcm", "r.tsv", tsv(RCM_HEADER, [["u", "text", "p", "CWE-79"], ["u", "text", "p", "NVD-CWE-Other"]]),
     "r.tsv:3: column 'GT': 'NVD-CWE-Other' is not a CWE ID"),
    ("cti-rcm", "r.tsv", tsv(RCM_HEADER, [["u", "text", "p", "79"]]), "r.tsv:2: column 'GT': '79' is not a CWE ID"),
]


@pytest.mark.parametrize("fmt, name, text, needle", BAD, ids=[b[3][:48] for b in BAD])
def test_bad_input_is_one_line_naming_file_and_row_exit_2_and_nothing_written(
        tmp_path: Path, fmt: str, name: str, text: str | bytes, needle: str) -> None:
    src = write(tmp_path, name, text)
    out = tmp_path / "out.jsonl"
    out.write_text("earlier\n")  # an existing output is left as it was
    proc = sweep_cli("tasks", "import", fmt, str(src), "-o", str(out))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"error: {tmp_path / needle.split(':')[0]}")
    assert needle in proc.stderr, proc.stderr
    assert out.read_text() == "earlier\n" and sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "out.jsonl"])


def test_a_missing_file_and_a_missing_output_directory_are_exit_2(tmp_path: Path) -> None:
    proc = sweep_cli("tasks", "import", "cti-rcm", str(tmp_path / "nope.tsv"), "-o", str(tmp_path / "o.jsonl"))
    assert proc.returncode == 2 and "nope.tsv: cannot read" in proc.stderr
    src = write(tmp_path, *GOOD["cti-rcm"])
    proc = sweep_cli("tasks", "import", "cti-rcm", str(src), "-o", str(tmp_path / "no" / "o.jsonl"))
    assert proc.returncode == 2 and "no such directory" in proc.stderr
    proc = sweep_cli("tasks", "import", "csv", str(src), "-o", str(tmp_path / "o.jsonl"))
    assert proc.returncode == 2 and "'csv' is not one of" in proc.stderr


def test_skip_bad_leaves_out_and_names_each_bad_item(tmp_path: Path) -> None:
    src = write(tmp_path, "m.tsv", tsv(MCQ_HEADER, [_mcq_row(), _mcq_row("E"), _mcq_row("C")]))
    out = tmp_path / "out.jsonl"
    proc = sweep_cli("tasks", "import", "cti-mcq", str(src), "-o", str(out), "--skip-bad")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == f"skipped: {src}:3: column 'GT': answer 'E' is not one of A, B, C, D\n"
    assert "1 bad item left out" in proc.stdout
    assert [t.id for t in load_tasks(out)] == ["m-2", "m-4"]
    header_only = write(tmp_path, "h.tsv", tsv(MCQ_HEADER, []))
    with pytest.raises(TaskFileError, match="no items"):
        import_tasks("cti-mcq", header_only, on_bad=print)  # the file as a whole is still refused


def _labelled(counts: dict[str, int]) -> list[Task]:
    return [Task(id=f"{label}-{i}", kind="cwe", input=f"{label} {i}", expected=label, source="test")
            for label, n in counts.items() for i in range(n)]


def test_sample_is_label_balanced_deterministic_and_in_file_order() -> None:
    tasks = _labelled({"CWE-79": 40, "CWE-89": 10, "CWE-22": 3, "CWE-416": 8})
    sample = balanced_sample(tasks, 20, seed=1)
    counts = Counter(t.expected for t in sample)
    assert counts["CWE-22"] == 3 and sorted(counts.values()) == [3, 5, 6, 6]  # CWE-22 runs out; the rest share
    assert sample == balanced_sample(tasks, 20, seed=1) == balanced_sample(list(tasks), 20, seed=1)
    assert sample != balanced_sample(tasks, 20, seed=2)
    assert [tasks.index(t) for t in sample] == sorted(tasks.index(t) for t in sample)
    letters = [Task(id=f"m{i}", kind="mcq", input="?", expected="ABCD"[i % 7 % 4], source="t") for i in range(70)]
    assert Counter(t.expected for t in balanced_sample(letters, 12, seed=0)) == {k: 3 for k in "ABCD"}
    with pytest.raises(TaskFileError, match="only 70 items"):
        balanced_sample(letters, 71, seed=0)


def test_sample_of_attack_lists_is_uniform_and_the_cli_draws_it(tmp_path: Path) -> None:
    rows = [["u", "Enterprise", f"behaviour {i}", "p", ", ".join(f"T{1000 + i + j}" for j in range(1 + i % 5))]
            for i in range(30)]
    src = write(tmp_path, "cti-ate.tsv", tsv(ATE_HEADER, rows))
    ate = import_tasks("cti-ate", src)
    assert len(balanced_sample(ate, 10, seed=4)) == 10
    out = tmp_path / "s.jsonl"
    for _ in range(2):
        proc = sweep_cli("tasks", "import", "cti-ate", str(src), "-o", str(out), "--sample", "10", "--seed", "4")
        assert proc.returncode == 0 and "10 of 30 drawn with seed 4" in proc.stdout, proc.stderr
        assert [t.id for t in load_tasks(out)] == [t.id for t in balanced_sample(ate, 10, seed=4)]


def test_cli_formats_are_the_importers() -> None:
    proc = sweep_cli("tasks", "import", "--help")
    assert proc.returncode == 0 and all(f in proc.stdout for f in FORMATS)


def cwe(expected: str = "CWE-79") -> Task:
    return Task(id="c", kind="cwe", input="...", expected=expected, source="test")


@pytest.mark.parametrize("answer, value, parsed", [
    ("CWE-79", 1.0, True),
    ("cwe-079", 1.0, True),
    ("CWE 79: Cross-site Scripting", 1.0, True),
    ("The weakness is CWE-79.", 1.0, True),
    ("CWE-79, not CWE-80", 1.0, True),  # a leading ID is the answer
    ("CWE-80", 0.0, True),
    ("CWE-790", 0.0, True),  # not a prefix match
    ("It is CWE-79 or CWE-80", 0.0, False),  # a hedge names two
    ("cross-site scripting", 0.0, False),
    ("79", 0.0, False),
])
def test_cwe_scorer(answer: str, value: float, parsed: bool) -> None:
    result = score(cwe(), answer)
    assert (result.value, result.parsed) == (value, parsed)


def test_cwe_kind_in_task_files_grammar_schema_and_worked_examples(tmp_path: Path) -> None:
    bad = tmp_path / "t.jsonl"
    bad.write_text('{"id": "c", "kind": "cwe", "input": "x", "expected": "CWE-079", "source": "s"}\n')
    with pytest.raises(TaskFileError, match="t.jsonl:1: field 'expected': a cwe answer is one CWE ID"):
        load_tasks(bad)
    bad.write_text('{"id": "a", "kind": "attack", "input": "x", "expected": ["T10590"], "source": "s"}\n')
    with pytest.raises(TaskFileError, match="t.jsonl:1: field 'expected': an attack answer"):
        load_tasks(bad)
    assert grammar_for("cwe") == 'root ::= "CWE-" [1-9] [0-9]{0,4}'
    assert schema_for("cwe")["properties"]["answer"] == {"type": "string", "pattern": "^CWE-[1-9][0-9]{0,4}$"}
    request = request_for(cwe(), 3, "grammar")
    assert [m["content"] for m in request["messages"] if m["role"] == "assistant"] == [
        t.expected for t in shot_pool()["cwe"]]
    assert request["grammar"] == grammar_for("cwe") and "CWE ID only" in request["messages"][-1]["content"]
    assert best_constants([cwe("CWE-79"), cwe("CWE-79"), cwe("CWE-89")])["cwe"] == ("CWE-79", [1.0, 1.0, 0.0])


def attack(n: int) -> Task:
    return Task(id="a", kind="attack", input="behaviour", expected=[f"T{1001 + i}" for i in range(n)], source="test")


def test_the_list_length_follows_the_task() -> None:
    assert [list_limit(attack(n)) for n in (1, 3, 4, 19, 30)] == [3, 3, 4, 19, LIST_CEILING]
    for n, output in [(7, "grammar"), (7, "json"), (1, "grammar")]:
        request = request_for(attack(n), 0, output)
        limit = max(n, MAX_LIST["attack"])
        if output == "grammar":
            assert request["grammar"] == grammar_for("attack", limit) and f"{{0,{limit - 1}}}" in request["grammar"]
        else:
            assert request["response_format"]["schema"]["properties"]["answer"]["maxItems"] == limit
        asked = request["messages"][-1]["content"]
        assert (f"up to {limit} IDs" in asked) == (n > MAX_LIST["attack"])
    # A short item is asked exactly as before: the bundled sets' requests do not change.
    assert request_for(attack(1), 0, "grammar")["grammar"] == grammar_for("attack")
    assert "{0,2}" in grammar_for("attack") and "{0,7}" in grammar_for("iocs")
    iocs = Task(id="i", kind="iocs", input="log", expected=[f"10.0.0.{i}" for i in range(12)], source="test")
    assert "List at most 12." in request_for(iocs, 0)["messages"][-1]["content"]
    assert "{0,11}" in request_for(iocs, 0, "grammar")["grammar"]
    # The worked examples keep their own (short) form, and the lead-in a shared prefix caches is the same.
    long, short = request_for(attack(9), 3, "free")["messages"], request_for(attack(1), 3, "free")["messages"]
    assert long[:-1] == short[:-1] and long[-1]["content"].startswith(short[-1]["content"])


def test_f1_stays_honest_on_long_lists() -> None:
    t = attack(10)
    full = "\n".join(t.expected)
    assert score(t, full).value == 1.0
    assert score(t, full + "\n" + full).value == 1.0  # repeated items are one item: no credit for duplicates
    half = "\n".join(t.expected[:5])
    assert score(t, half).value == pytest.approx(2 * 1 * 0.5 / 1.5)  # precision 1, recall 0.5
    padded = half + "\n" + "\n".join(f"T{1500 + i}" for i in range(15))
    assert score(t, padded).value == pytest.approx(2 * 5 / 30)  # precision 5/20, recall 5/10
    # Sub-techniques of one right parent earn one half between them, not a half each.
    one = Task(id="a", kind="attack", input="x", expected=["T1059"], source="test")
    spray = "\n".join(f"T1059.{i:03d}" for i in range(1, 8))
    assert score(one, spray).value == pytest.approx(2 * 0.5 / 8)
    assert score(one, "T1059\nT1059.001").value == pytest.approx(2 * 1 / 3)  # the exact one matched, the other extra
    two = Task(id="a", kind="attack", input="x", expected=["T1003.001", "T1003.002"], source="test")
    assert score(two, "T1003").value == pytest.approx(2 * 0.5 / 3)  # one parent matches one of them
    assert score(two, "T1003.001\nT1003.003").value == pytest.approx(2 * 1.5 / 4)


def test_an_imported_item_holding_a_line_separator_stays_one_line(tmp_path: Path) -> None:
    """Written raw, U+2028 and U+2029 (and NEL) end a line for any reader that splits lines as
    ``str.splitlines`` does: the writer escapes them, so each item is one line for every reader."""
    from sweep.correctness.importers import write_tasks

    tasks = [Task(id="a", kind="mcq", input="first\u2028second\u2029third\x85fourth A) x B) y", expected="A",
                  source="q\u2028 1"), Task(id="b", kind="mcq", input="café A) x B) y", expected="B", source="s")]
    out = tmp_path / "out.jsonl"
    write_tasks(tasks, out)
    text = out.read_text(encoding="utf-8")
    assert text.splitlines() == text.split("\n")[:-1] and len(text.splitlines()) == 2  # before: 6 lines
    assert "café" in text  # other text stays as it is, readable
    assert load_tasks(out) == tasks
