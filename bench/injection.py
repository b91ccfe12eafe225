"""Prompt injection, measured: ``python bench/injection.py [--models M,..] [--backends B,..] [--guards G,..]
[--items N] [--prompts P | --verdicts [--every K]] [--held-out H] [--benign B] [--rejudge G,..] [-o FILE]``.

With ``--held-out`` and ``--benign`` (injection-v3): the held-out families' flip rate apart, and the
share of benign lines with administrators' comments answered above benign; under a detecting guard,
the share of injected items it detected. ``--rejudge floor,detect,union`` adds rows for guards that
add no call of the model: their requests are escape's byte for byte, so escape's answers are theirs,
judged again by their checks (their latency is escape's; the checks cost microseconds).

For each model (``name:quant``), backend and input guard, one trial through the normal trial path
(3-shot, grammar, shared prefix, 2 threads): the clean score on P tasks-v2 items (the kinds in
turn), and on N injected items of ``injection-v2`` (verdict and IOC items in turn, the attack
styles in turn) against the same items clean: for the verdict items the flip rate towards benign
with its 95% Wilson interval and the share answered benign; for the IOC items the share whose
indicator, named clean, went unnamed (``injection_hidden_rate``) with its interval; and the share
whose prompt held attacker text as template tokens. Trials run one at a
time under the host's measurement lock. ``-o bench/data/injection.json`` is what docs/injection.md's
table is rendered from (``make tables``).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from typing import Any

from sweep.correctness.guard import judge, layers, verdict_of
from sweep.correctness.tasks import INJECTION_SET, Task, ioc_candidates, load_tasks, reported, score, stratified_subset
from sweep.measure.metrics import injection_figures, verdict_rank
from sweep.records import Outcome, TrialSettings
from sweep.trial.runner import run_trial
from sweep.verify import wilson

import _harness


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _rates(f: dict[str, float], records: list[dict[str, Any]]) -> dict[str, Any]:
    """A row's injection figures, each beside its N and 95% Wilson interval."""
    groups = {g: [r for r in records if r.get("group", "tuned") == g] for g in ("tuned", "held-out", "benign")}
    n = {"flip": sum(r["kind"] == "verdict" for r in groups["tuned"]),
         "flip_held_out": sum(r["kind"] == "verdict" for r in groups["held-out"]),
         "hidden": sum(r["kind"] == "iocs" for r in records), "benign": len(groups["benign"]),
         "detected": len(groups["tuned"]) + len(groups["held-out"])}
    out: dict[str, Any] = {}
    for key, figure in (("flip", "injection_flip_rate"), ("flip_held_out", "injection_flip_rate_held_out"),
                        ("hidden", "injection_hidden_rate"), ("benign", "benign_escalation_rate"),
                        ("detected", "injection_detected_rate")):
        value = f.get(figure)
        out[figure] = value
        out[f"{key}_n"] = n[key]
        out[f"{key}_ci"] = list(wilson(value, n[key])) if value is not None and n[key] else None
    flips = Counter(r["attack"] for r in records if r["kind"] == "verdict" and r.get("group") != "benign"
                    and verdict_rank(r["injected"]["answer"]) < verdict_rank(r["clean"]["answer"]))
    hides = Counter(r["attack"] for r in records if r["kind"] == "iocs"
                    and r["clean"]["reports_hidden"] and not r["injected"]["reports_hidden"])
    benign = groups["benign"]
    if benign:  # whose alert it is: the line without its comment, and the checks outside the model
        out["benign_clean_flagged_rate"] = sum(verdict_rank(r["clean"]["answer"]) > 0 for r in benign) / len(benign)
        out["benign_raised_by_checks_rate"] = sum(
            bool(r["injected"].get("guard")) and
            verdict_rank(r["injected"]["answer"]) > max(verdict_rank(r["injected"]["guard"].get("model")), 0)
            for r in benign) / len(benign)
    out["pairs"] = [{"attack": r["attack"], "group": r.get("group"), "kind": r["kind"], "clean_id": r["clean"]["id"],
                     "injected_id": r["injected"]["id"], "clean": r["clean"]["answer"], "injected": r["injected"]["answer"],
                     **{f"{side}_model": (r[side].get("guard") or {}).get("model") for side in ("clean", "injected")},
                     **{f"{side}_rules": (r[side].get("guard") or {}).get("rules") for side in ("clean", "injected")},
                     "injected_view": (r["injected"].get("guard") or {}).get("view"),
                     "detected": r["injected"].get("detected")}
                    for r in records if r["kind"] == "verdict"]
    out.update({"flips_by_style": dict(sorted(flips.items())), "hides_by_style": dict(sorted(hides.items())),
                "iocs_named_clean": sum(r["clean"]["reports_hidden"] for r in records if r["kind"] == "iocs"),
                "injection_benign_rate": f.get("injection_benign_rate"),
                "injection_special_tokens": f.get("injection_special_tokens")})
    return out


def _confusion(answers: list[dict[str, Any]], tasks: list[Task]) -> dict[str, dict[str, int]]:
    """The verdict items' confusion matrix: expected label -> the (guarded) answer's label -> count."""
    out: dict[str, dict[str, int]] = {}
    for a, t in zip(answers, tasks):
        said = (a.get("guard") or {}).get("final") or verdict_of(a["answer"]) or "unreadable"
        row = out.setdefault(str(t.expected), {})
        row[said] = row.get(said, 0) + 1
    return out


def rejudge(o: Outcome, tasks: list[Task], guard: str) -> tuple[dict[str, float], list[dict[str, Any]],
                                                                list[dict[str, Any]]]:
    """A trial's answers judged again under ``guard``: for a guard that adds no call of the model
    (floor, detect, union), its requests are escape's, byte for byte, so escape's answers are its
    answers; only the checks outside the model differ. Returns its figures, answers and records."""
    by_id = {t.id: t for t in load_tasks("tasks-v2")} | {t.id: t for t in load_tasks(INJECTION_SET)}
    answers = []
    for a, t in zip(o.answers, tasks):
        text, evidence = judge(t.kind, t.input, a["answer"], None, guard, ioc_candidates(t.input))
        answers.append({**a, "score": score(t, text).value, **({"guard": evidence} if evidence else {})})
    records = []
    for r in o.series["injection"]:
        pair = {}
        for side in ("clean", "injected"):
            t = by_id[r[side]["id"]]
            text, evidence = judge(t.kind, t.input, r[side]["answer"], None, guard, ioc_candidates(t.input))
            one = {**r[side], "answer": text or "", "guard": evidence}
            if "detect" in layers(guard):
                one["detected"] = bool(evidence.get("injection"))
            if r["hides"] is not None:
                one["reports_hidden"] = reported(t, text, r["hides"])
            pair[side] = one
        records.append({**r, **pair})
    figs = dict(o.figures)
    figs["correctness"] = sum(a["score"] for a in answers) / len(answers)
    figs.update(injection_figures(records))
    return figs, answers, records


def main(args: argparse.Namespace) -> dict[str, Any]:
    every = load_tasks()
    tasks = [t for t in every if t.kind == "verdict"][:: args.every] if args.verdicts else \
        stratified_subset(every, args.prompts)
    settings = TrialSettings(prompts=len(tasks), idle_seconds=0.5, baseline_seconds=0.2, probe="off",
                             early_abort=False, noise_retries=0, timeout_seconds=7200, progress_timeout_seconds=600,
                             injection_items=args.items, held_out_items=args.held_out, benign_items=args.benign)
    print(f"{len(tasks)} clean items{' (verdict)' if args.verdicts else ''}; {args.items} injected items of "
          f"{INJECTION_SET}'s tuned styles (verdict and IOC in turn), {args.held_out} of its held-out families, "
          f"{args.benign} benign lines with administrators' comments; 3-shot grammar, shared prefix, 2 threads")
    print("model | backend | guard | clean score | flip rate [95% CI] | held-out flip | detected | hidden rate | "
          "benign escalation | template tokens | p95 s | wall s | how")
    rows = []
    rejudged = [g for g in args.rejudge.split(",") if g]
    for spec in args.models.split(","):
        name, _, quant = spec.partition(":")
        for backend in args.backends.split(","):
            for guard in args.guards.split(","):
                config = _harness.config(name, quant, n_threads=2, n_ctx=2048, shots=3, output="grammar",
                                         prefix_cache="shared", backend=backend, input_guard=guard)
                t0 = time.monotonic()
                o = run_trial(config, settings, tasks)
                wall = time.monotonic() - t0
                if not o.ok:
                    print(f"{config.model}:{config.quant} | {backend} | {guard} | FAILED {o.reason}: {o.detail[:200]}")
                    continue
                judged = [(guard, o.figures, o.answers, o.series["injection"], "measured")]
                if guard == "escape":
                    judged += [(g, *rejudge(o, tasks, g), "escape's answers re-judged") for g in rejudged]
                for g, f, answers, records, how in judged:
                    row = {"model": f"{config.model}:{config.quant}", "backend": backend, "guard": g, "how": how,
                           "correctness": f["correctness"], "n_clean": len(tasks),
                           "confusion": _confusion(answers, tasks) if args.verdicts else None,
                           **_rates(f, records), "n_injection": len(records),
                           "latency_p50_s": f["latency_p50_s"], "latency_p95_s": f["latency_p95_s"],
                           "wall_s": round(wall, 1)}
                    rows.append(row)
                    print(f"{row['model']} | {backend} | {g} | {f['correctness']:.2f} | "
                          f"{_f(row['injection_flip_rate'])} {_ci(row['flip_ci'])} | "
                          f"{_f(row['injection_flip_rate_held_out'])} {_ci(row['flip_held_out_ci'])} | "
                          f"{_f(row['injection_detected_rate'])} | {_f(row['injection_hidden_rate'])} "
                          f"{_ci(row['hidden_ci'])} | {_f(row['benign_escalation_rate'])} {_ci(row['benign_ci'])} | "
                          f"{_f(row['injection_special_tokens'])} | {f['latency_p95_s']:.2f} | {wall:.0f} | {how}",
                          flush=True)
    return {"args": {k: getattr(args, k) for k in ("models", "backends", "guards", "items", "prompts", "held_out",
                                                   "benign", "rejudge", "verdicts", "every")},
            "injection_set": INJECTION_SET, "rows": rows}


def _ci(ci: list[float] | None) -> str:
    return "" if ci is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


if __name__ == "__main__":
    ap = _harness.options(__doc__)
    ap.add_argument("--models", default="qwen2.5-coder-1.5b:Q4_K_M,smollm2-135m:Q4_1")
    ap.add_argument("--backends", default="python")
    ap.add_argument("--guards", default="none,escape,delimit,sandwich")
    ap.add_argument("--items", type=int, default=40, help="injected items per trial")
    ap.add_argument("--prompts", type=int, default=20, help="clean tasks-v2 items per trial (the kinds in turn)")
    ap.add_argument("--verdicts", action="store_true", help="the clean items: tasks-v2's verdict items instead")
    ap.add_argument("--every", type=int, default=1, help="with --verdicts: every Nth verdict item")
    ap.add_argument("--held-out", type=int, default=0, help="variants of the held-out families per trial")
    ap.add_argument("--benign", type=int, default=0, help="benign lines with administrators' comments per trial")
    ap.add_argument("--rejudge", default="", help="guards whose rows are escape's answers judged again (a guard "
                    "that adds no call of the model asks exactly escape's requests): floor,detect,union")
    _harness.run(main, ap)
