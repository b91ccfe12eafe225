"""What the bench scripts share: a trial configuration with the benches' defaults, the common
options, the host's measurement lock, and a results file that keeps the figures with the host,
commit, command and time they were made on (as pyperf's and asv's results files do).

    def main(args: argparse.Namespace) -> list[dict]:
        ...  # prints its lines as it goes; returns the results

    if __name__ == "__main__":
        ap = _harness.options(__doc__, rounds=3)
        ap.add_argument("--prompts", type=int, default=6)
        _harness.run(main, ap)

``run`` parses the command line, holds the measurement lock and keeps what ``main`` returns:
``-o FILE`` writes the results file, ``--json`` prints it on stdout (the script's own lines, and
its children's, then go to stderr). A results file is one JSON object:

    {"format": "sweep-bench", "version": 1, "bench": "parity", "host": {...}, "commit": "0d6c6f4...",
     "dirty": false, "command": ["python", "bench/parity.py", "--rounds", "3"],
     "started": "2026-12-02T10:20:24+00:00", "wall_s": 412.3, "results": ...}

``bench/tables.py`` renders the docs' tables from the files in bench/data/.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

# sweep is imported where it is used: bench/tables.py reads results files without it, and
# ``bench/unit_exposure.py old`` runs this file against an older sweep.
if TYPE_CHECKING:
    from sweep.models.registry import Registry
    from sweep.records import TrialConfig

FORMAT, VERSION = "sweep-bench", 1
REPO = Path(__file__).resolve().parent.parent
DEFAULTS: dict[str, Any] = {"n_threads": 1, "n_batch": 512, "n_ubatch": 512, "n_ctx": 1024, "max_tokens": 32}


def config(model: str, quant: str | None = None, **overrides: Any) -> TrialConfig:
    """A trial configuration of ``model`` at ``quant`` (its first quantization when None or empty)
    with the benches' defaults: 1 thread, ``n_threads_batch`` as ``n_threads``, ``n_batch`` and
    ``n_ubatch`` 512, ``n_ctx`` 1024, 32 tokens. ``overrides`` are TrialConfig's own fields.

    Raises:
        ModelError: the model, or that quantization of it, is not available.
    """
    from sweep.records import TrialConfig

    registry = _registry()
    quants = registry.quants(model)
    mf = registry.resolve(model, quant or (quants[0] if quants else ""))
    knobs = {**DEFAULTS, **overrides}
    knobs.setdefault("n_threads_batch", knobs["n_threads"])
    return TrialConfig(model=mf.name, quant=mf.quant, model_path=str(mf.path), chat_format=mf.chat_format, **knobs)


@functools.cache
def _registry() -> Registry:
    """One registry per run: a scan reads the header of every GGUF it finds."""
    from sweep.models.registry import Registry

    return Registry()


def options(doc: str | None, rounds: int | None = None) -> argparse.ArgumentParser:
    """A bench script's parser: the first paragraph of ``doc`` as its description, ``--json``,
    ``-o/--output FILE``, and ``--rounds N`` (default ``rounds``) where rounds mean something."""
    ap = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print the results file on stdout (the lines go to stderr)")
    ap.add_argument("-o", "--output", type=Path, metavar="FILE", help="write the results file here "
                    "(bench/data/NAME.json is what bench/tables.py renders the docs' tables from)")
    if rounds is not None:
        ap.add_argument("--rounds", type=int, default=rounds, help=f"rounds, interleaved [{rounds}]")
    return ap


def run(main: Callable[[argparse.Namespace], Any], ap: argparse.ArgumentParser, lock: bool = True) -> None:
    """Parse the command line, run ``main(args)`` under the host's measurement lock, and keep what it
    returns as the results (``-o``, ``--json``).

    Args:
        lock: False for a script that measures nothing, or whose children take the lock themselves
            (a ``sweep run`` child would wait for ever for a lock held here).
    """
    args = ap.parse_args()
    name = Path(inspect.getfile(main)).stem
    meta = _metadata(name) if args.json or args.output else None
    t0 = time.monotonic()
    with _stdout_to_stderr(args.json), _lock(f"bench/{name}.py", lock):
        results = main(args)
    if meta is None:
        return
    text = json.dumps({**meta, "wall_s": round(time.monotonic() - t0, 1), "results": results}, indent=1) + "\n"
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        print(f"results written to {args.output}", file=sys.stderr)
    if args.json:
        sys.stdout.write(text)


def _metadata(name: str) -> dict[str, Any]:
    """Everything of the results file but the results and the wall time, taken before the run."""
    from sweep.measure.host import host_info
    from sweep.study.storage import redact_argv  # a --storage URL's password never reaches the file

    commit = _git("rev-parse", "HEAD")
    return {"format": FORMAT, "version": VERSION, "bench": name, "host": host_info(), "commit": commit,
            "dirty": None if commit is None else bool(_git("status", "--porcelain", "--untracked-files=no")),
            "command": redact_argv([Path(sys.executable).name, *sys.argv]),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _git(*args: str) -> str | None:
    """``git ARGS`` in this checkout, stripped; None outside a checkout or without git."""
    try:
        # GIT_OPTIONAL_LOCKS=0: status never writes the index behind another git command's back.
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                             env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _lock(what: str, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    if not enabled:
        return contextlib.nullcontext()
    from sweep.hostlock import measurement_lock

    return measurement_lock(what, on_wait=print)  # never beside another measurement


@contextlib.contextmanager
def _stdout_to_stderr(enabled: bool) -> Iterator[None]:
    """With ``--json`` stdout holds the results file alone. Moved at the descriptor, so children
    (and bench/prefix_flip.py, which takes descriptor 1 for itself) follow."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
