"""What sweep's own tests (and a plugin's) build on, shipped like ``optuna.testing``.

- ``FakeBackend``: a ``sweep.trial.drive.Backend`` that answers from a script, with chosen times,
  burning CPU or sleeping, without a model. ``SWEEP_TEST_WORKER=fake`` makes the runner start
  ``python -m sweep.testing.worker`` in place of the real worker, for every trial of the process
  and its children (``SWEEP_FAKE_SCRIPT``: the script, as JSON). Everything else is real: the
  runner, the monitor, the foreground, the figures, the orchestrator, the spool, the database.
  A fake never stands in for the path a test is about: the real model and llama-server have
  tests of their own.
- ``TINY_SPACE``: a small space file's text, SmolLM2 over a few knobs, quick trial settings.
- ``config(**overrides)``: a SmolLM2 ``TrialConfig`` with quick defaults.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any, Iterator

ENV_WORKER = "SWEEP_TEST_WORKER"
ENV_SCRIPT = "SWEEP_FAKE_SCRIPT"

# A quick trial block and a seeded random sampler: the tail of every small test space.
QUICK_TAIL = """\
trial:
  prompts: 3
  idle_seconds: 0.5
  baseline_seconds: 0.2
  timeout_seconds: 120
  noise_retries: 0
sampler:
  name: random
  seed: 3
"""

TINY_SPACE = """\
version: 1
name: tiny
models:
  smollm2-135m: [Q4_1]
params:
  n_threads: {low: 1, high: all}
  n_batch: [64, 512]
  nice: [0, 19]
fixed:
  n_threads_batch: 1
  n_ctx: 512
  max_tokens: 16
""" + QUICK_TAIL


@dataclass(frozen=True)
class Script:
    """How the fake answers: the load's time, each request's prefill and each piece's time, how many
    pieces, the answer's text, and whether the time is spent burning CPU (seen by the monitor) or asleep."""

    # An answer of about 0.3 s: a few of the monitor's 100 ms windows in every answering phase.
    load_s: float = 0.1
    prefill_s: float = 0.1
    piece_s: float = 0.05
    pieces: int = 4
    answer: str = "benign"
    burn: bool = True

    @classmethod
    def from_env(cls) -> Script:
        return cls(**json.loads(os.environ.get(ENV_SCRIPT) or "{}"))


def _spend(seconds: float, burn: bool) -> None:
    end = time.monotonic() + seconds
    if not burn:
        time.sleep(seconds)
        return
    while time.monotonic() < end:
        pass


class _FakeAnswering:
    def __init__(self, script: Script) -> None:
        self.script = script

    def pieces(self) -> Iterator[str]:
        s = self.script
        _spend(s.prefill_s, s.burn)
        for piece in _split(s.answer, s.pieces):
            yield piece
            _spend(s.piece_s, s.burn)

    def first(self) -> None:
        return None

    def done(self, answered: bool) -> dict[str, Any]:
        return {"prompt_tokens": 0, "prefill_tokens": None}


def _split(text: str, n: int) -> list[str]:
    """``text`` in ``n`` pieces (the last ones empty where it is shorter), joined back whole."""
    step = max(1, -(-len(text) // max(n, 1)))
    return [text[i:i + step] for i in range(0, len(text), step)] or [text]


class FakeBackend:
    """A ``sweep.trial.drive.Backend`` without a model: every request answers the script's text."""

    def __init__(self, script: Script | None = None) -> None:
        self.script = script or Script.from_env()

    def load(self, config: dict[str, Any], chan: Any) -> None:
        _spend(self.script.load_s, self.script.burn)

    def prepare(self, probes: dict[str, list[list[dict[str, str]]]]) -> None:
        return None

    def request(self, request: dict[str, Any], tokens: bool) -> _FakeAnswering:
        return _FakeAnswering(self.script)

    def knob_pid(self) -> int | str:
        return "self"

    def check(self) -> None:
        return None

    def failure(self, exc: Exception) -> Any:
        return None

    def close(self) -> None:
        return None


def config(**overrides: Any) -> Any:
    """A SmolLM2 ``TrialConfig`` (the bundled model) with quick defaults: 1 thread, batches and context 512, 16 tokens."""
    from sweep.models.registry import Registry
    from sweep.records import TrialConfig

    mf = Registry().resolve("smollm2-135m", "Q4_1")
    knobs = {"n_threads": 1, "n_threads_batch": 1, "n_batch": 512, "n_ubatch": 512, "n_ctx": 512, "max_tokens": 16,
             **overrides}
    return TrialConfig(model=mf.name, quant=mf.quant, model_path=str(mf.path), chat_format=mf.chat_format, **knobs)
