"""One trial: the parent's watch (runner), the worker programs of both backends over one driver
(drive, worker, server_worker, server), the protocol between them, and what a trial applies and
reads back (knobs, cgroups, the host-wide lock)."""
