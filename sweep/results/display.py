"""Text for people: trial lines, the front as a table, a trial's figures.

Every CPU figure is printed with its unit and the W and N it rests on.
"""

from __future__ import annotations

from typing import Any

from sweep.measure.metrics import METRICS
from sweep.records import Progress


def config_summary(c: dict[str, Any] | None) -> str:
    """A trial's configuration in one line: the usual knobs always, every other one (the knob table's
    ``shown``) where it is not at its default."""
    from sweep.params import PARAMS, idle_knobs, is_set

    if not c:
        return "?"
    cpus = ",".join(map(str, c["cpus"])) if c.get("cpus") else "any"
    out = (f"{c['model']}:{c['quant']} t={c['n_threads']}/{c['n_threads_batch']} b={c['n_batch']}/{c['n_ubatch']} "
           f"ctx={c['n_ctx']} cpus={cpus} nice={c['nice']} {c['sched_policy']}")
    idle = idle_knobs(c)  # an older record may hold a value its trial never used (context_k without the catalog)
    for name, p in PARAMS.items():
        if p.shown and is_set(name, c.get(name)) and name not in idle:
            out += " " + p.shown.format(c[name])
    return out + f" | {c.get('shots', 0)}-shot {c.get('output', 'free')} max_tokens={c.get('max_tokens', '?')}"


def correctness_text(f: dict[str, float]) -> str:
    """Correctness as it must be read: ``0.50 [0.24, 0.76] n=10``, its 95% interval and its items
    (a trial from before intervals were recorded shows the mean alone)."""
    if "correctness" not in f:
        return "?"
    if "correctness_ci_low" not in f:
        return f"{f['correctness']:.2f}"
    return (f"{f['correctness']:.2f} [{f['correctness_ci_low']:.2f}, {f['correctness_ci_high']:.2f}] "
            f"n={f.get('correctness_n', 0):.0f}")


def figures_summary(f: dict[str, float]) -> str:
    if "correctness" not in f:
        return ""
    return (f"correct {correctness_text(f)} | CPU p99 {f.get('cpu_active_p99_share_pct', float('nan')):.1f}% of machine "
            f"(peak {f.get('cpu_active_peak_share_pct', float('nan')):.1f}%, W={f.get('window_ms', 0):.0f}ms "
            f"N={f.get('n_windows_active', 0):.0f}) | idle {f.get('cpu_idle_share_pct', float('nan')):.2f}% | "
            f"p95 {f.get('latency_p95_s', float('nan')):.2f}s p99/p50 {f.get('latency_p99_p50_ratio', float('nan')):.2f} | "
            f"RSS {f.get('rss_peak_gb', float('nan')):.2f} GB" + _under_load(f)
            + (f" | open load: {open_load_summary(f)}" if "response_p95_s" in f else ""))


def _under_load(f: dict[str, float]) -> str:
    """With the CPU-bound foreground: how much longer the user's build took, and the model's p95 under it."""
    if "fg_cpu_slowdown" not in f:
        return ""
    at_least = ">=" if f.get("contended_cut") else ""
    return (f" | under a build: build x{f['fg_cpu_slowdown']:.2f}, "
            f"p95 {at_least}{f.get('latency_p95_contended_s', float('nan')):.2f}s")


def progress_line(p: Progress) -> str:
    config = p.config.to_dict() if p.config else None
    if p.promotes is not None:  # not one of the run's trials: its count stays where it is
        what = f"[{p.done}/{p.target}] trial {p.trial_number}, trial {p.promotes[0]} promoted to {p.promotes[1]} items"
        if p.outcome is None:
            return f"{what} ..."
        verdict = (figures_summary(p.outcome.figures) + (" | meets budgets" if p.feasible else " | over budget")
                   if p.outcome.ok else f"FAILED ({p.outcome.reason}: {p.outcome.detail[:160]})")
        return f"{what}, in {p.outcome.wall_seconds:.1f}s: {verdict}"
    if p.outcome is None:
        return f"[{p.done + 1}/{p.target}] trial {p.trial_number}: {config_summary(config)} ..."
    if p.reused_from is not None:
        return (f"[{p.done}/{p.target}] trial {p.trial_number}: same configuration as trial {p.reused_from}; "
                "its measurement is reused (not measured again)")
    if not p.outcome.ok:
        verdict = f"FAILED ({p.outcome.reason}: {p.outcome.detail[:160]})"
    else:
        verdict = figures_summary(p.outcome.figures) + (" | meets budgets" if p.feasible else " | over budget")
        if p.outcome.figures.get("early_abort"):
            verdict += f" | stopped early after {p.outcome.figures['n_answered']:.0f} prompts: latency p95 provably over budget"
    return f"[{p.done}/{p.target}] trial {p.trial_number} in {p.outcome.wall_seconds:.1f}s: {verdict}"


def grid(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def line(r: list[str]) -> str:
        return "  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def budget_cell(r: dict[str, Any]) -> str:
    """The budgets column of a front row, with the flags a reader must see beside it."""
    text = "all met" if r["feasible"] else "over: " + ", ".join(r["violations"])
    f = r["figures"]
    if f.get("machine_busy_active"):
        text += f" [measured under others' load: {f.get('other_cpu_active_pct', float('nan')):.0f}% of the machine]"
    if f.get("machine_busy"):
        text += " [machine busy before the trial]"
    return text


def objective_cell(f: dict[str, float], name: str) -> str:
    """An objective's value as a front row shows it (correctness with its interval and items)."""
    return correctness_text(f) if name == "correctness" else f"{f.get(name, float('nan')):.3g}"


def front_table(front: list[dict[str, Any]], objectives: list[str],
                constant: dict[int, float] | None = None) -> str:
    """The front, best first by the export policy, and a reference row: the best constant answer on
    the same items. A trial whose interval reaches down to it is marked."""
    from sweep.results.front import no_better_than

    header = ["trial"] + [f"{m} ({METRICS[m].unit})" for m in objectives] + ["budgets", "figures from", "config"]
    body = []
    for r in front:
        vals = [objective_cell(r["figures"], m) for m in objectives]
        ok = budget_cell(r) + (" [no better than a constant answer]" if no_better_than(r, constant) else "")
        body.append([str(r["number"])] + vals + [ok, sample_text(r), config_summary(r["config"])])
    for n, score in sorted((constant or {}).items()) if "correctness" in objectives else ():
        body.append(["const"] + [f"{score:.2f} n={n}" if m == "correctness" else "" for m in objectives]
                    + ["", f"{n} items", "the best constant answer of each kind (chosen knowing the answers)"])
    return grid(body, header)


def sample_text(r: dict[str, Any]) -> str:
    """Which sample a row's figures come from: a verification, a promotion or the trial itself."""
    v, p = r.get("verified"), r.get("promoted")
    if v and not v["failed"]:
        return f"verified {v['n_items']}x{v['repeats']}"
    if p and not p["failed"]:
        return f"promoted: {p['n_items']} items (trial {p['trial']})"
    n = r["figures"].get("correctness_n")
    return f"own: {n:.0f} items" if n is not None else "sweep subset"


def verification_table(study: Any) -> str:
    """Each verified trial: the sweep's figures beside the verified ones, its budgets and its place on the front."""
    from sweep.results.front import pareto_front, rows

    sweep_rows = {r["number"]: r for r in rows(study, prefer_verified=False)}
    front = {r["number"] for r in pareto_front(study)[0]}
    body = []
    for r in rows(study):
        v = r["verified"]
        if not v:
            continue
        before = sweep_rows[r["number"]]["figures"]

        def pair(name: str, fmt: str) -> str:
            old, new = before.get(name, float("nan")), r["figures"].get(name, float("nan"))
            return f"{old:{fmt}} -> {new:{fmt}}" if not v["failed"] else f"{old:{fmt}} -> ?"

        ci = v["correctness_ci"]
        body.append([str(r["number"]), f"{v['n_items']} x {v['repeats']}",
                     pair("correctness", ".3f") + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""),
                     pair("cpu_active_p99_share_pct", ".1f"), pair("latency_p95_s", ".2f"),
                     f"FAILED: {v['failed']}" if v["failed"]
                     else ("all met" if r["feasible"] else "over: " + ",".join(r["violations"])),
                     "yes" if r["number"] in front else "no"])
    return grid(body, ["trial", "items x runs", "correctness (95% CI)", "CPU p99 % of machine", "latency p95 s",
                        "budgets (verified)", "on front"])


def figures_table(figures: dict[str, float]) -> str:
    body = [[name, f"{figures[name]:.4g}", METRICS[name].unit, METRICS[name].help] for name in METRICS if name in figures]
    return grid(body, ["figure", "value", "unit", "meaning"])


def sweep_summary(study: Any, where: str, n_prompts: int, n_tasks: int) -> str:
    """What ``sweep run`` says at the end: the counts, the front, the export policy's pick and why,
    and what ``sweep verify`` would add."""
    from sweep.errors import ExportError
    from sweep.records import StudyMeta
    from sweep.results.front import choose, constant_reference, pareto_front, rows, why_chosen

    name = study.study_name
    every = rows(study)
    all_rows = [r for r in every if r["promotes"] is None]
    promotions = len(every) - len(all_rows)
    failed = [r for r in all_rows if r["state"] == "FAIL"]
    lines = [f"\nstudy {name!r} in {where}: {len(all_rows)} finished trials, {len(failed)} failed, "
             f"{sum(r['feasible'] for r in all_rows)} meet every budget"
             + (f"; {promotions} promotion(s) measured configurations again on more items" if promotions else "")]
    front, feasible = pareto_front(study)
    if not front:
        return "\n".join(lines)
    lines.append("Pareto front" + ("" if feasible else " (no trial meets every budget; front ignoring budgets)") + ":")
    lines.append(front_table(front, StudyMeta.of(study).objectives, constant_reference(study)))
    try:
        pick = choose(study, allow_infeasible=True)
    except ExportError:
        pick = None
    if pick:
        lines.append(f"Export policy's pick: trial {pick['number']}: {why_chosen(study, pick)}."
                     + ("" if pick["feasible"] else " It can sit off the front above: the front weighs only the "
                        "objectives, the pick weighs every budget."))
    unverified = [r for r in front if not r["verified"] and not r["promoted"]]
    if unverified:
        lines.append(f"{len(unverified)} front trial(s) rest on a subset of {n_prompts} tasks and one run; "
                     f"`sweep verify --study {name}` re-runs them on all {n_tasks}.")
    return "\n".join(lines)


def status_text(study: Any, policy_pick: dict[str, Any] | None) -> str:
    """A study at a glance: counts, failure reasons, feasibility, the policy's current pick."""
    from collections import Counter

    from sweep.results.front import rows

    trials = study.get_trials(deepcopy=False)
    finished = rows(study)
    states = Counter(t.state.name for t in trials)
    reasons = Counter(r["fail_reason"] or "?" for r in finished if r["state"] == "FAIL")
    feasible = sum(r["feasible"] for r in finished if r["promotes"] is None)
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    promotions = sum("promotes" in t.user_attrs for t in trials)
    lines = [f"study {study.study_name!r}: {len(trials)} trials: "
             + ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))
             + (f" ({promotions} of them promotions: a configuration again on more items)" if promotions else "")]
    if reasons:
        lines.append("failed: " + ", ".join(f"{n} {r}" for r, n in reasons.most_common()))
    lines.append(f"meet every budget: {feasible}")
    if starts and ends:
        lines.append(f"first trial started {min(starts):%Y-%m-%d %H:%M:%S}, last finished {max(ends):%Y-%m-%d %H:%M:%S}")
    running = [t for t in trials if t.state.name == "RUNNING"]
    for t in running:
        what = (f" (trial {t.user_attrs['promotes']} promoted to {t.user_attrs['items']} items)"
                if "promotes" in t.user_attrs else "")
        lines.append(f"running: trial {t.number}{what}: {config_summary(t.user_attrs.get('config'))}")
    if policy_pick:
        lines.append(f"export policy's pick: trial {policy_pick['number']}"
                     + ("" if policy_pick["feasible"] else " (closest; breaks " + ", ".join(policy_pick["violations"]) + ")")
                     + ": " + figures_summary(policy_pick["figures"]))
    return "\n".join(lines)


def fleet_table(classes: list[dict[str, Any]]) -> str:
    """The fleet at a glance: one row per hardware class."""
    body = []
    for c in classes:
        fp, pick = c["fingerprint"], c["pick"]
        what = f"{fp.get('cpu_model', '?')}, {fp.get('logical_cpus', '?')} CPUs, {fp.get('mem_gb', '?')} GB"
        if pick is None:
            best = "none yet"
        else:
            f = pick["figures"]
            best = (f"{pick['study']} #{pick['number']}{'' if pick['feasible'] else ' (closest; over budget)'}: "
                    f"correct {correctness_text(f)}, CPU p99 "
                    f"{f.get('cpu_active_p99_share_pct', float('nan')):.1f}%, p95 {f.get('latency_p95_s', float('nan')):.2f}s")
        body.append([c["class"], what, ", ".join(c["hosts"]), ", ".join(c["studies"]), str(c["done"]),
                     str(c["feasible"]), best])
    return grid(body, ["hardware class", "hardware", "hosts", "studies", "trials", "meet budgets", "policy's pick"])


def open_load_summary(f: dict[str, float]) -> str:
    """An open-loop phase's figures in one line (sweep.measure.open_load)."""
    if "response_p95_s" not in f:
        return "no open-load figures"
    bound = ">=" if f.get("response_lower_bound") else ""
    return (f"response p95 {bound}{f['response_p95_s']:.2f}s (service p95 {f.get('service_p95_s', float('nan')):.2f}s, "
            f"wait p95 {f.get('queue_wait_p95_s', float('nan')):.2f}s) | queue max {f.get('queue_max', 0):.0f} | "
            f"CPU mean {f.get('cpu_mean_share_pct', float('nan')):.1f}% p99 {f.get('cpu_p99_share_pct', float('nan')):.1f}%"
            f" of machine | {f.get('cpu_s_per_answer', float('nan')):.2f} CPU s/answer | "
            f"{f.get('open_answered', 0):.0f}/{f.get('open_events', 0):.0f} answered"
            + (" | SATURATED" if f.get("saturated") else ""))


def capacity_step_line(step: Any) -> str:
    """One rate of ``sweep capacity``: its figures, and whether its budgets held."""
    o = step.outcome
    what = open_load_summary(o.figures) if o.ok else f"FAILED ({o.reason}: {o.detail[:160]})"
    verdict = "holds" if step.holds else "breaks " + ", ".join(step.broken)
    return f"rate {step.rate_per_min:.3g}/min: {what} -> {verdict}"


def capacity_line(result: Any, low: float) -> str:
    """``sweep capacity``'s answer, in one line."""
    best = result.best
    if best is None:
        return f"capacity: below {low:g} events/min (the lowest rate tried broke a budget)"
    f = best.outcome.figures
    tried = max(s.rate_per_min for s in result.steps)
    ceiling = " (the highest rate tried; it may hold more)" if best.rate_per_min >= tried else ""
    return (f"capacity: {best.rate_per_min:.3g} events/min{ceiling} (response p95 {f['response_p95_s']:.2f} s, "
            f"CPU mean {f.get('cpu_mean_share_pct', float('nan')):.1f}%, queue max {f.get('queue_max', 0):.0f}, "
            f"{f.get('cpu_s_per_answer', float('nan')):.2f} CPU s per event)")
