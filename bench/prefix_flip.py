"""Why a cached prefix can change an answer: ``python bench/prefix_flip.py [ITEMS] [MODEL]``.

Starts llama-server (``sweep tools build``) as a ``prefix_cache: shared`` trial does, on MODEL
(``name:quant``, default the 1.5B model at Q4_K_M), 3-shot grammar, 2 threads, and asks each of
ITEMS items (default 10, the kinds in turn) twice: cold, and after restoring its kind's saved
prefix. For every item whose two answers differ it prints, position by position up to where they
part, the top three tokens with their log-probabilities both ways, and the largest change in the
log-probability of a token both lists share.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any

from sweep.correctness.prompts import prefix_probes, request_for
from sweep.correctness.tasks import load_tasks, stratified_subset
from sweep.models.tools import binary
from sweep.trial.server import request_body, server_args
from sweep.trial.server_worker import HOST, Server, free_port, shared_prefixes

import _harness


def ask(server: Server, body: dict, cached: bool, kind: str) -> tuple[str, list[dict]]:
    if cached:
        server.post("/slots/0?action=restore", {"filename": f"{kind}.bin"})
    reply = server.post("/v1/chat/completions", {**body, "stream": False, "cache_prompt": cached,
                                                 "logprobs": True, "top_logprobs": 3})
    choice = reply["choices"][0]
    return choice["message"]["content"], choice["logprobs"]["content"]


def _top(position: dict) -> dict[tuple[int, str], float]:
    """A position's top tokens by (id, text): two tokens can print alike (the end of a turn and an
    empty piece both print as '')."""
    return {(x["id"], x["token"]): x["logprob"] for x in position["top_logprobs"]}


def main(args: argparse.Namespace) -> dict[str, Any]:
    name, _, quant = args.model.partition(":")
    config = _harness.config(name, quant, n_threads=2, n_ctx=2048, shots=3, output="grammar", prefix_cache="shared",
                             backend="server")
    c = config.to_dict()
    tasks = stratified_subset(load_tasks(), args.items)
    differing: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as slots:
        # The server logs to this process's stdout (as in a trial, where that is the worker's log):
        # send it to a file, and this script's lines to the real stdout.
        out = os.fdopen(os.dup(1), "w", buffering=1)
        sys.stdout.flush()
        with open(os.path.join(slots, "server.log"), "w") as log:
            os.dup2(log.fileno(), 1)
        port = free_port()
        server = Server(server_args(c, str(binary("llama-server")), HOST, port, slots), port)
        try:
            server.wait_healthy()
            shared_prefixes(server, {k: prefix_probes(k, 3, "grammar") for k in sorted({t.kind for t in tasks})})
            differ = 0
            for t in tasks:
                body = request_body(request_for(t, 3, "grammar"), c)
                (cold, cold_lp), (warm, warm_lp) = (ask(server, body, cached, t.kind) for cached in (False, True))
                if cold == warm:
                    continue
                differ += 1
                print(f"\n{t.kind} {t.id}: cold {cold!r}, cached prefix {warm!r}", file=out)
                moved, parting, top_a, top_b = 0.0, 0, {}, {}
                for parting, (a, b) in enumerate(zip(cold_lp, warm_lp)):
                    top_a, top_b = _top(a), _top(b)
                    moved = max([moved, *(abs(top_a[k] - top_b[k]) for k in top_a.keys() & top_b.keys())])
                    print(f"  cold {[(k[1], round(v, 3)) for k, v in top_a.items()]}\n"
                          f"  warm {[(k[1], round(v, 3)) for k, v in top_b.items()]}", file=out)
                    if (a.get("id"), a["token"]) != (b.get("id"), b["token"]):
                        break
                print(f"  largest change of a shared top-3 token's log-probability up to the parting: {moved:.3f}",
                      file=out)
                # Where the two part (the loop's last position): both top-3 lists, as [text, log-probability].
                differing.append({"kind": t.kind, "id": t.id, "cold": cold, "cached_prefix": warm,
                                  "largest_logprob_change": moved, "parting_token": parting,
                                  "cold_top3": [[k[1], v] for k, v in top_a.items()],
                                  "cached_top3": [[k[1], v] for k, v in top_b.items()]})
            print(f"\n{config.model}:{config.quant}, {len(tasks)} items, 3-shot grammar: {differ} answered differently",
                  file=out)
        finally:
            server.stop()
    return {"model": f"{config.model}:{config.quant}", "items": len(tasks), "differ": differ, "differing": differing}


if __name__ == "__main__":
    ap = _harness.options(__doc__)
    ap.add_argument("items", nargs="?", type=int, default=10, help="items [10]")
    ap.add_argument("model", nargs="?", default="qwen2.5-coder-1.5b:Q4_K_M", help="name[:quant] [%(default)s]")
    _harness.run(main, ap)
