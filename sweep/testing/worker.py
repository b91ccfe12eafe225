"""The fake worker: ``python -m sweep.testing.worker FD`` runs a trial's job on ``FakeBackend``, through
the real driver and protocol (``SWEEP_TEST_WORKER=fake``; ``sweep.testing``)."""

from __future__ import annotations

import sys
from typing import Any

from sweep.testing import FakeBackend
from sweep.trial.drive import drive
from sweep.trial.protocol import Channel, serve


def run(job: dict[str, Any], chan: Channel) -> int:
    return drive(job, chan, FakeBackend())


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1:], run))
