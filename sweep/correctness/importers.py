"""Published security benchmarks as sweep task files: CyberMetric's JSON and CTIBench's TSV files.

Neither dataset ships with sweep (CyberMetric has no licence, CTIBench is CC BY-NC-SA 4.0): the
user brings the file. A file that cannot be read as its format is refused, and so is each bad
item, with the file and the item or line, as ``load_tasks`` refuses a bad task file.
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

from sweep.correctness.tasks import LETTERS, TECHNIQUE_ID, Task
from sweep.errors import TaskFileError
from sweep.procs import write_atomically

FORMATS = ("cybermetric", "cti-mcq", "cti-ate", "cti-rcm")
_COLUMNS = {"cti-mcq": ("Question", "Option A", "Option B", "Option C", "Option D", "GT"),
            "cti-ate": ("Description", "GT"), "cti-rcm": ("Description", "GT")}
_CWE_IN = re.compile(r"CWE-0*([1-9]\d{0,4})", re.I)
# What json.dumps leaves raw in a string that str.splitlines (an older load_tasks, and other readers)
# takes for a line end: escaped, an item stays one line for every reader.
_RAW_LINE_ENDS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def _read(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TaskFileError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise TaskFileError(f"{path}:{line}: not UTF-8 text") from None
    if not text.strip():
        raise TaskFileError(f"{path}: empty file")
    return text


def _mcq_input(where: str, question: str, options: list[str], answer: object) -> tuple[str, str]:
    """The bundled set's form of a multiple-choice item ("question A) ... B) ..."), and its letter.
    An option with no text is left out (a few CTIBench questions have three), unless it is the answer."""
    letter = answer.strip().upper() if isinstance(answer, str) else ""
    if letter not in LETTERS:
        raise TaskFileError(f"{where}: answer {answer!r} is not one of {', '.join(LETTERS)}")
    if not options[LETTERS.index(letter)].strip():
        raise TaskFileError(f"{where}: the answer, option {letter}, has no text")
    shown = [f"{k}) {text.strip()}" for k, text in zip(LETTERS, options) if text.strip()]
    return " ".join([question.strip(), *shown]), letter


def _cybermetric_items(path: Path, text: str) -> list[tuple[int, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TaskFileError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise TaskFileError(f"{path}: not CyberMetric's format (an object with a 'questions' list)")
    if set(data) != {"questions"}:
        raise TaskFileError(f"{path}: unknown key {sorted(set(data) - {'questions'})[0]!r} (CyberMetric's file "
                            "has only 'questions')")
    return list(enumerate(data["questions"], 1))


def _cybermetric(path: Path, n: int, item: Any) -> Task:
    where = f"{path}: question {n}"
    keys = {"question", "answers", "solution"}
    if not isinstance(item, dict):
        raise TaskFileError(f"{where}: not an object")
    if set(item) != keys:
        missing = sorted(keys - set(item))
        raise TaskFileError(f"{where}: missing key {missing[0]!r}" if missing
                            else f"{where}: unknown key {sorted(set(item) - keys)[0]!r}")
    question, answers = item["question"], item["answers"]
    if not isinstance(question, str) or not question.strip():
        raise TaskFileError(f"{where}: key 'question' has no text")
    if not isinstance(answers, dict) or sorted(answers) != list(LETTERS) or not all(
            isinstance(a, str) for a in answers.values()):
        raise TaskFileError(f"{where}: key 'answers' must map A, B, C and D, and nothing else, to text")
    text, letter = _mcq_input(f"{where}: key 'solution'", question, [answers[k] for k in LETTERS], item["solution"])
    return Task(id=f"{path.stem}-{n}", kind="mcq", input=text, expected=letter, source=f"{path.name} question {n}")


def _tsv_items(path: Path, text: str, columns: tuple[str, ...]) -> list[tuple[int, Any]]:
    """The rows of a CTIBench TSV file as (line number, fields). The files are plain tab-separated
    lines with no quoting (a field may begin with a quote character), so they are split on tabs."""
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    header = lines[0].split("\t")
    missing = [c for c in columns if c not in header]
    if missing:
        raise TaskFileError(f"{path}:1: missing column {missing[0]!r} (the header has {', '.join(map(repr, header))})")
    return [(n, (header, line.split("\t"))) for n, line in enumerate(lines[1:], 2) if line.strip()]


def _row(path: Path, n: int, raw: Any, columns: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, str]:
    header, fields = raw
    if len(fields) != len(header):
        raise TaskFileError(f"{path}:{n}: cannot read the row: {len(fields)} tab-separated fields where the header "
                            f"has {len(header)}")
    row = dict(zip(header, fields))
    for c in columns:
        if c not in optional and not row[c].strip():
            raise TaskFileError(f"{path}:{n}: column {c!r} is empty")
    return row


def _source(path: Path, n: int, row: dict[str, str]) -> str:
    url = row.get("URL", "").strip()
    return f"{path.name}:{n}" + (f" {url}" if url else "")


def _cti_mcq(path: Path, n: int, raw: Any) -> Task:
    columns = _COLUMNS["cti-mcq"]
    row = _row(path, n, raw, columns, optional=columns[1:5])
    text, letter = _mcq_input(f"{path}:{n}: column 'GT'", row["Question"], [row[c] for c in columns[1:5]], row["GT"])
    return Task(id=f"{path.stem}-{n}", kind="mcq", input=text, expected=letter, source=_source(path, n, row))


def _cti_ate(path: Path, n: int, raw: Any) -> Task:
    row = _row(path, n, raw, _COLUMNS["cti-ate"])
    expected: list[str] = []
    for part in row["GT"].split(","):
        technique = part.strip().upper()
        if not TECHNIQUE_ID.fullmatch(technique):
            raise TaskFileError(f"{path}:{n}: column 'GT': {part.strip()!r} is not an ATT&CK technique ID "
                                "(Tnnnn or Tnnnn.nnn)")
        if technique in expected:
            raise TaskFileError(f"{path}:{n}: column 'GT': {technique} is listed twice")
        expected.append(technique)
    # A Mobile item expects Mobile techniques: say which matrix, as CTIBench's own prompt does.
    platform = row.get("Platform", "").strip()
    lead = f"(ATT&CK {platform} matrix) " if platform and platform != "Enterprise" else ""
    return Task(id=f"{path.stem}-{n}", kind="attack", input=lead + row["Description"].strip(), expected=expected,
                source=_source(path, n, row))


def _cti_rcm(path: Path, n: int, raw: Any) -> Task:
    row = _row(path, n, raw, _COLUMNS["cti-rcm"])
    found = _CWE_IN.fullmatch(row["GT"].strip())
    if not found:
        raise TaskFileError(f"{path}:{n}: column 'GT': {row['GT'].strip()!r} is not a CWE ID (CWE-n)")
    return Task(id=f"{path.stem}-{n}", kind="cwe", input=row["Description"].strip(), expected=f"CWE-{found.group(1)}",
                source=_source(path, n, row))


_ITEM: dict[str, Callable[[Path, int, Any], Task]] = {
    "cybermetric": _cybermetric, "cti-mcq": _cti_mcq, "cti-ate": _cti_ate, "cti-rcm": _cti_rcm}


def import_tasks(fmt: str, path: str | Path, on_bad: Callable[[str], None] | None = None) -> list[Task]:
    """Read a benchmark file of format ``fmt`` (one of ``FORMATS``) as sweep tasks, in file order.

    A task's id is the file's stem and the item's number (the question's, or the TSV line's);
    its ``source`` names the file, the item and, for CTIBench, the row's URL.

    Args:
        on_bad: given, a bad item's message goes to it and the item is left out; the file as a
            whole (unreadable, empty, a column missing) is still refused.

    Raises:
        TaskFileError: naming the file, and the item or line, that cannot be used.
    """
    if fmt not in _ITEM:
        raise TaskFileError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    path = Path(path)
    text = _read(path)
    items = _cybermetric_items(path, text) if fmt == "cybermetric" else _tsv_items(path, text, _COLUMNS[fmt])
    tasks = []
    for n, item in items:
        try:
            tasks.append(_ITEM[fmt](path, n, item))
        except TaskFileError as exc:
            if on_bad is None:
                raise
            on_bad(str(exc))
    if not tasks:
        raise TaskFileError(f"{path}: no items" + (" that can be used" if items else ""))
    return tasks


def _label(task: Task) -> str:
    return task.expected if isinstance(task.expected, str) else ""  # ATT&CK lists: one label, so uniform


def balanced_sample(tasks: list[Task], n: int, seed: int) -> list[Task]:
    """``n`` of ``tasks`` with as equal a count of each expected label as the labels allow, in file order.

    The labels are taken in turn (in an order drawn with ``seed``), each giving one more item
    (drawn with ``seed``) per round, so no label has two more than another unless it ran out.
    Lists (ATT&CK) have no one label: they are sampled uniformly. Deterministic for one seed.

    Raises:
        TaskFileError: when ``n`` is more than there are tasks.
    """
    if n > len(tasks):
        raise TaskFileError(f"--sample {n}: the file has only {len(tasks)} items")
    rng = random.Random(seed)
    by_label: dict[str, list[Task]] = defaultdict(list)
    for task in tasks:
        by_label[_label(task)].append(task)
    queues = [by_label[k] for k in sorted(by_label)]
    rng.shuffle(queues)
    for queue in queues:
        rng.shuffle(queue)
    chosen: set[str] = set()
    depth = 0
    while len(chosen) < n:
        for queue in queues:
            if depth < len(queue) and len(chosen) < n:
                chosen.add(queue[depth].id)
        depth += 1
    return [t for t in tasks if t.id in chosen]


def write_tasks(tasks: list[Task], out: str | Path) -> None:
    """Write ``tasks`` as a JSONL task file, whole or not at all (a temp file renamed over ``out``).

    Raises:
        TaskFileError: when ``out``'s directory does not exist.
    """
    out = Path(out)
    if not out.parent.is_dir():
        raise TaskFileError(f"{out}: no such directory {str(out.parent)!r}")
    lines = (json.dumps(t.model_dump(exclude_none=True), ensure_ascii=False).translate(_RAW_LINE_ENDS) for t in tasks)
    write_atomically(out, "".join(line + "\n" for line in lines))
