"""The docs' benchmark tables, rendered from bench/data/: ``python bench/tables.py [--check] [FILE ...]``.

A generated table sits in a Markdown file between ``<!-- bench:NAME -->`` and
``<!-- /bench:NAME -->``, NAME a key of ``TABLES``. Each is rendered from one JSON file in
bench/data/: a results file of bench/_harness.py (``-o``), or a file a script wrote before the
harness, read as it is. Measure again into that file and run this (``make tables``); never edit
a generated table by hand. ``--check`` writes nothing and exits 1 when a table is not what its
data renders (tests/test_bench.py runs it). FILE defaults to README.md and docs/*.md.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Callable

from _harness import FORMAT, REPO, VERSION

DATA = REPO / "bench" / "data"
# A marker is a line of its own: one quoted in a sentence (as in docs/benchmarks.md) is text.
REGION = re.compile(r"^(<!-- bench:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)^(<!-- /bench:(?P=name) -->)$", re.S | re.M)
MARKER = re.compile(r"^<!-- /?bench:", re.M)


class BadInput(Exception):
    """A marker without its end, a table nobody renders, a results file of another version."""


def results(name: str) -> Any:
    """The results in bench/data/NAME.json."""
    path = DATA / f"{name}.json"
    data = json.loads(path.read_text())
    if not (isinstance(data, dict) and "format" in data):
        return data  # written before the harness: the results alone
    if (data["format"], data.get("version")) != (FORMAT, VERSION):
        raise BadInput(f"{path}: a {data['format']} file of version {data.get('version')}; "
                       f"this script reads {FORMAT} version {VERSION}")
    return data["results"]


def measured(*names: str) -> str:
    """How bench/data/NAME.json was measured, for a line above its table: the command as a user in
    this checkout would type it, the commit and the wall time (several files: one after another)."""
    def one(name: str) -> str:
        data = json.loads((DATA / f"{name}.json").read_text())
        words = [_shown(w) for w in data["command"]]
        words[0] = ".venv/bin/python"
        dirty = " plus uncommitted changes" if data.get("dirty") else ""
        minutes, seconds = divmod(round(data["wall_s"]), 60)
        return f"`{' '.join(words)}` (commit {data['commit'][:7]}{dirty}, {minutes} min {seconds} s)"

    return "Measured with " + "; then ".join(one(n) for n in names) + "."


def _shown(word: str) -> str:
    """A path in a recorded command as it reads from this checkout: bench/... for the repository's
    own files (measured from a worktree elsewhere), the file's name for one outside it."""
    if not word.startswith("/"):
        return word
    return "bench/" + word.rsplit("/bench/", 1)[1] if "/bench/" in word else Path(word).name


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table; a "|" inside a cell (a model's answer, a token) is escaped."""
    return "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
                     for cells in [header, ["---"] * len(header), *rows])


def _f(x: float | None, fmt: str = ".2f") -> str:
    return "–" if x is None or math.isnan(x) else format(x, fmt)


def hard_limits_quiet() -> str:
    """docs/deploy.md: each limit without a foreground (bench/hard_limits.py, ``probe: off``)."""
    return table(["model", "limit", "active p99 % W=100 ms", "W=20 ms", "mean %", "throttled", "p95 s", "p99/p50"],
                 [[r["model"].split(":")[0], r["limit"], _f(r["p99_w100"], ".0f"), _f(r["p99_w20"], ".0f"),
                   _f(r["cpu_active_mean_share_pct"], ".0f"), _f(r["cg_throttled_share"]), _f(r["latency_p95_s"]),
                   _f(r["latency_p99_p50_ratio"])]
                  for r in results("hard_limits") if r["probe"] == "off"])


def hard_limits_contended() -> str:
    """docs/deploy.md: the limits under the CPU-bound foreground (``probe: cpu``); a pass cut at its
    deadline is a lower bound, marked ≥."""
    return table(["model", "limit", "fg_cpu_slowdown", "p95 s, quiet pass", "contended p95 s"],
                 [[r["model"].split(":")[0], r["limit"], _f(r["fg_cpu_slowdown"]), _f(r["latency_p95_s"]),
                   ("≥ " if r["contended_cut"] else "") + _f(r["latency_p95_contended_s"], ".1f")]
                  for r in results("hard_limits") if r["probe"] == "cpu"])


def injection() -> str:
    """docs/injection.md: the first run, verdict items of injection-v1 only (bench/injection.py at 0d6c6f4)."""
    data = results("injection")
    return table(["model", "backend", "guard", f"clean score ({data['args']['prompts']} items)", "flip rate [95% CI]",
                  "answered benign", "template tokens", "p95 s"],
                 [[r["model"], r["backend"], r["guard"], _f(r["correctness"]),
                   f"{_f(r['injection_flip_rate'])} [{_f(r['flip_ci'][0])}, {_f(r['flip_ci'][1])}]",
                   _f(r["injection_benign_rate"]), _f(r["injection_special_tokens"]), _f(r["latency_p95_s"])]
                  for r in data["rows"]])


def _ci(rate: float | None, ci: list[float]) -> str:
    return f"{_f(rate)} [{_f(ci[0])}, {_f(ci[1])}]"


def injection_v2() -> str:
    """docs/injection.md: the verdict and IOC items of injection-v2, one trial per model, backend and
    guard (bench/injection.py: its python run, its server run, and a row measured again, which
    replaces the first run's row of the same model, backend and guard)."""
    runs = [results("injection_v2"), results("injection_v2_server")]
    again = {(r["model"], r["backend"], r["guard"]): r for r in results("injection_v2_again")["rows"]}
    rows = [again.get((r["model"], r["backend"], r["guard"]), r) for run in runs for r in run["rows"]]
    return table(["model", "backend", "guard", f"clean score ({runs[0]['args']['prompts']} items)",
                  "verdict flip rate [95% CI]", "answered benign", "IOC hidden rate [95% CI]", "named clean",
                  "template tokens", "p95 s"],
                 [[r["model"], r["backend"], r["guard"], _f(r["correctness"]),
                   _ci(r["injection_flip_rate"], r["flip_ci"]), _f(r["injection_benign_rate"]),
                   _ci(r["injection_hidden_rate"], r["hidden_ci"]), f"{r['iocs_named_clean']}/{r['n_iocs']}",
                   _f(r["injection_special_tokens"]), _f(r["latency_p95_s"])]
                  for r in rows])


def injection_v3() -> str:
    """docs/injection.md: injection-v3 on the 1.5B model, each guard a trial of its own or escape's
    answers judged again (bench/injection.py, python then server backend)."""
    names = [n for n in ("injection_v3", "injection_v3_server") if (DATA / f"{n}.json").exists()]
    rows = [r for n in names for r in results(n)["rows"]]
    first = results(names[0])["args"]

    def rate(r: dict[str, Any], key: str, n: str) -> str:
        value, ci = r.get(key), r.get(f"{n}_ci")
        return "–" if value is None else f"{_f(value)} [{_f(ci[0])}, {_f(ci[1])}]"

    how = {"measured": "measured", "escape's answers re-judged": "escape re-judged"}
    return measured(*names) + "\n\n" + table(
        ["backend", "guard", f"clean verdict score ({rows[0]['n_clean']} items)",
         f"flip rate, tuned styles (n={rows[0]['flip_n']}) [95% CI]",
         f"flip rate, held-out families (n={rows[0]['flip_held_out_n']})", "detected",
         f"IOC hidden rate (n={rows[0]['hidden_n']})", f"benign lines flagged (n={rows[0]['benign_n']})",
         "p95 s", "how"],
        [[r["backend"], r["guard"], _f(r["correctness"]), rate(r, "injection_flip_rate", "flip"),
          rate(r, "injection_flip_rate_held_out", "flip_held_out"), _f(r.get("injection_detected_rate")),
          rate(r, "injection_hidden_rate", "hidden"), rate(r, "benign_escalation_rate", "benign"),
          _f(r["latency_p95_s"]), how.get(r["how"], r["how"])] for r in rows]) + \
        f"\n\n({first['items']} tuned items, verdict and IOC in turn; {first['held_out']} held-out; " \
        f"{first['benign']} benign lines with administrators' comments; model {rows[0]['model']}.)"


def injection_confusion() -> str:
    """docs/injection.md: the clean verdict items' confusion matrix under none, escape and layered."""
    rows = [r for n in ("injection_v3", "injection_v3_server") if (DATA / f"{n}.json").exists()
            for r in results(n)["rows"] if r["guard"] in ("none", "escape", "layered") and r.get("confusion")]
    labels = ("malicious", "suspicious", "benign")
    body = []
    for r in rows:
        for expected in labels:
            said = r["confusion"].get(expected, {})
            body.append([r["backend"], r["guard"], expected, *(str(said.get(x, 0)) for x in (*labels, "unreadable"))])
    return table(["backend", "guard", "expected", "answered malicious", "suspicious", "benign", "unreadable"], body)


def injection_adaptive() -> str:
    """docs/injection.md: the white-box round against layered (bench/adaptive_injection.py)."""
    data = results("injection_adaptive")
    return measured("injection_adaptive") + "\n\n" + table(
        ["command line", "label", "guarded clean", "guarded with the attacker's text", "the model alone", "text appended"],
        [[t["base"], t["expected"], t["clean"], t["injected"] + (" **bypass**" if t["bypass"] else ""),
          str(t["model_injected"]), f"`{t['suffix'].strip()}`"] for t in data["tries"]]) + \
        f"\n\n{data['bypasses']} bypasses in {len(data['tries'])} tries, on the {data['weak_bases']} command lines " \
        f"whose floor is below their label; {data['offline_candidates']} candidates passed every check offline."


def topology() -> str:
    """docs/measuring.md: the model's placement against the user's, and its politeness (bench/topology.py,
    one run per model)."""
    names = [n for n in ("topology_smollm2", "topology_qwen") if (DATA / f"{n}.json").exists()]
    return measured(*names) + "\n\n" + table(
        ["model", "backend", "where the model runs", "politeness", "fg_cpu_slowdown", "p95 latency s",
         "contended p95 latency s", "own cgroup"],
        [[r["model"].split(":")[0], r["backend"], r["placement"], r["politeness"], _f(r["fg_cpu_slowdown"]),
          _f(r["latency_p95_s"]), ("≥ " if r["contended_cut"] else "") + _f(r["latency_p95_contended_s"]),
          "yes" if r["cgroup_own"] == 1.0 else "no"] for n in names for r in results(n)])


def calibration_paths() -> str:
    """docs/platforms.md: the calibration loads on both measurement paths, duty by duty (bench/calibration.py)."""
    return table(["path", "d (%)", "mean", "p99", "peak", "N", "monitor CPU %"],
                 [[r["platform"], f"{100 * r['duty']:.0f}", _f(r["mean"], ".1f"), _f(r["p99"], ".1f"),
                   _f(r["peak"], ".1f"), str(r["n"]), _f(r["monitor_cpu_pct"])] for r in results("calibration")])


def calibration_linux() -> str:
    """docs/measuring.md: the calibration loads on the Linux path (bench/calibration.py's linux rows)."""
    return table(["d", "mean", "p99", "peak", "N"],
                 [[f"{100 * r['duty']:.0f}%", _f(r["mean"], ".1f"), _f(r["p99"], ".1f"), _f(r["peak"], ".1f"), str(r["n"])]
                  for r in results("calibration") if r["platform"] == "linux"])


def monitor_cost_paths() -> str:
    """docs/platforms.md: the monitor's own CPU on both measurement paths (bench/monitor_cost.py)."""
    return table(["path", "W (ms)", "windows", "monitor CPU (% of one core)"],
                 [[r["platform"], str(r["window_ms"]), str(r["windows"]), _f(r["monitor_cpu_pct"])]
                  for r in results("monitor_cost")])


def _contention(name: str) -> str:
    rows = results(name)
    return table(["nice", "sched", "threads", "LLM active p99 % of machine", "probe p95 ratio", "fg_cpu_slowdown",
                  "p95 latency s", "contended p95 latency s"],
                 [[str(r["nice"]), r["sched"], str(r["threads"]), _f(r["cpu_active_p99_share_pct"], ".1f"),
                   _f(r["fg_p95_ratio"]), _f(r["fg_cpu_slowdown"]), _f(r["latency_p95_s"]),
                   ("≥ " if r["contended_cut"] else "") + _f(r["latency_p95_contended_s"])
                   + ("" if r["ok"] else f" (failed: {r['reason']})")]
                  for r in rows])


def contention() -> str:
    """docs/measuring.md: nice × policy × threads on SmolLM2 (bench/contention.py)."""
    return _contention("contention")


def contention_qwen() -> str:
    """docs/measuring.md: the same on the 1.5B model (bench/contention.py --models qwen2.5-coder-1.5b:Q4_K_M)."""
    return _contention("contention_qwen")


def parity() -> str:
    """docs/server.md: decode and prefill rates against llama-bench's, medians of the rounds (bench/parity.py)."""
    r = results("parity")
    ref = r["llama_bench"]
    return table(["arm", "decode (tg) ratio", "prefill (pp) ratio", "load s"],
                 [[f"llama-bench (tg32 {ref['tg32_tps']:.0f} t/s, pp128 {ref['pp128_tps']:.0f} t/s)", "1", "1", ""],
                  *[[label, _f(r[arm]["tg_ratio"]), _f(r[arm]["pp_ratio"]), _f(r[arm]["load_s"])]
                    for arm, label in (("bare", "bare llama-cpp-python loop"),
                                       ("python", "sweep trial, python backend"),
                                       ("server", "sweep trial, server backend"))],
                  ["(llama-server's own timings)", _f(r["server"]["server_tg_ratio"]),
                   _f(r["server"]["server_pp_ratio"]), ""]])


def backends() -> str:
    """docs/server.md: the two backends at 1 and 2 threads, medians of the rounds (bench/backends.py)."""
    def arm(label: str) -> str:
        backend, threads, *poll = label.split()
        n = threads.removeprefix("t=")
        return f"{backend}, {n} thread{'s' if n != '1' else ''}" + (", `--poll 0`" if poll else "")

    medians = results("backends")["medians"]
    order = sorted(medians, key=lambda k: (k.split()[1], k))
    return table(["arm", "active p99 % of machine", "idle %", "p95 s", "decode t/s", "probe p95 ratio"],
                 [[arm(k), _f(m["cpu_active_p99_share_pct"], ".1f"), _f(m["cpu_idle_share_pct"], ".3f"),
                   _f(m["latency_p95_s"]), _f(m["decode_tps"], ".0f"), _f(m["fg_p95_ratio"])]
                  for k in order for m in [medians[k]]])


def fleet() -> str:
    """docs/scale-out.md: trials per hour with one and two orchestrators (bench/fleet.py)."""
    hosts = results("fleet")["hosts"]
    return table(["orchestrators", "trials", "trials/hour", "between two trials", "share of a trial", "trial s"],
                 [[n, str(h["trials"]), _f(h["per_hour"], ".0f"), f"{_f(h['gap_s'], '.3f')} s",
                   f"{_f(100 * h['gap_share'], '.1f')}%", _f(h["trial_s"])] for n, h in sorted(hosts.items())])


def chaos() -> str:
    """docs/scale-out.md: every chaos soak on record (bench/chaos.py --json, kept with its commit)."""
    return table(["run", "faults", "measured", "recorded", "lost", "measured twice", "RUNNING left", "strays",
                  "integrity"],
                 [[f"`--minutes {r['minutes']:g} --seed {r['seed']}`, {r['commit']}", str(sum(r["faults"].values())),
                   str(r["measured"]), str(r["recorded"]), str(r["lost"]), str(r["measured_twice"]),
                   str(r["running_left"]), str(r["stray_processes"]), "ok" if not r["problems"] else "FAILED"]
                  for r in results("chaos")])


def unit_exposure() -> str:
    """docs/deploy.md: systemd's exposure score of the exported unit, then and now (bench/unit_exposure.py)."""
    def label(r: dict[str, Any]) -> str:
        return f"the export of commit {r['sweep_commit']} (root, no sandbox, no key)" if r["unit"] == "old" \
            else "the export now"

    return table(["unit", "score"], [[label(r), " ".join(r["score"].rsplit(":", 1)[-1].split()[:2])]
                                     for r in (results("unit_exposure_old"), results("unit_exposure_new"))])


def knob_paths() -> str:
    """docs/platforms.md: which measurement path takes each knob that needs something of the OS,
    read from the knob table (``sweep.params.Param.needs``), not from a results file. Those two
    modules need only the standard library, so ``make tables`` still runs without the virtualenv."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from sweep.params import PARAMS
    from sweep.platforms import CAPABILITIES

    def cell(needs: tuple[str, ...], have: set[str]) -> str:
        missing = [n for n in needs if n not in have]
        return "yes" if not missing else "refused at load time"

    return table(["knob", "needs", "linux", "portable (psutil) on Linux", "portable without affinity (macOS)"],
                 [[f"`{name}`", ", ".join(CAPABILITIES[n] for n in p.needs) or "nothing of the OS",
                   cell(p.needs, set(CAPABILITIES)), cell(p.needs, {"affinity"}), cell(p.needs, set())]
                  for name, p in PARAMS.items() if p.needs or p.applied in ("os", "env")])


# The correctness runs (bench/correctness_table.py -o): a cell is "mean [low, high]", 95% Wilson.
def _cell(m: dict[str, Any]) -> str:
    return _ci(m["mean"], m["ci"])


def _scores(r: dict[str, Any], kinds: list[str]) -> list[str]:
    """One trial's cells: each kind, then all items (or why it failed, then blanks)."""
    if not r["ok"]:
        return [f"failed: {r['reason']}", *[""] * len(kinds)]
    return [*(_cell(r["by_kind"][k]) for k in kinds), _cell(r["all"])]


def _no_model(data: dict[str, Any], kinds: list[str]) -> list[tuple[str, list[str]]]:
    """The rows no model wrote, each a label and its cells (each kind, then all): the best constant
    answer, and where the run's items have the kind, the regex alone and the catalog's first match."""
    best = data["baselines"]["best_constant"]
    rows = [("best constant answer", [*(f"{_f(best[k]['mean'])} ({best[k]['answer']!r})" for k in kinds),
                                      _cell(data["baselines"]["best_constant_all"])])]
    for key, label, kind in (("iocs_regex", "regex over the log line (no model)", "iocs"),
                             ("attack_catalog_first", "the catalog's first match (no model)", "attack")):
        if key in data["baselines"]:
            rows.append((label, [*(_cell(data["baselines"][key]) if k == kind else "-" for k in kinds), "-"]))
    return rows


def _correctness(name: str, no_model: bool = True) -> str:
    """A correctness run (bench/correctness_table.py -o bench/data/NAME.json): one row per model and
    strategy, then (``no_model``) the rows no model wrote. A run of one kind has no "all" column."""
    data = results(name)
    kinds = sorted(data["items"])
    cut = -1 if len(kinds) == 1 else None  # "all" would repeat the one kind
    rows = [[r["model"], r["strategy"], *_scores(r, kinds)[:cut], str(r.get("parse_failures", "")),
             _f(r.get("latency_p95_s"))] for r in data["rows"]]
    if no_model:
        rows += [[label, "-", *cells[:cut], "-", "-"] for label, cells in _no_model(data, kinds)]
    return measured(name) + "\n\n" + table(
        ["model", "strategy", *kinds, *(["all"] if cut is None else []), "parse failures", "p95 s"], rows)


def correctness_all() -> str:
    """docs/limitations.md: the 1.5B model and SmolLM2, three strategies, on all 246 items (bench/correctness_table.py)."""
    return _correctness("correctness_all")


def correctness_all_gemma() -> str:
    """docs/limitations.md: Gemma 3 270M on the same items and strategies (the rows no model wrote are above it)."""
    return _correctness("correctness_all_gemma", no_model=False)


def correctness_attack() -> str:
    """docs/correctness.md: the ATT&CK items with 0, 3, 5 and 8 retrieved techniques (``context: attack-catalog``)."""
    return _correctness("correctness_attack")


def correctness_iocs() -> str:
    """docs/correctness.md: the IOC items with and without the regex's candidates (``ioc_hints: regex``)."""
    return _correctness("correctness_iocs")


def correctness_tools_all() -> str:
    """docs/correctness.md: all 246 items with both tools at once."""
    return _correctness("correctness_tools_all")


# The published benchmarks, imported by `sweep tasks import` (docs/correctness.md), one results file each.
PUBLISHED = {"published_cm80": "CyberMetric-500, label-balanced", "published_mcq60": "CTIBench MCQ, label-balanced",
             "published_rcm40": "CTIBench RCM (CVE to CWE)", "published_ate20": "CTIBench ATE (techniques)"}


def published() -> str:
    """docs/correctness.md: each model on each published set, with the set's best constant answer."""
    rows, models = [], []
    for name, label in PUBLISHED.items():
        data = results(name)
        best = data["baselines"]["best_constant_all"]
        by = {(r["model"], r["strategy"]): r for r in data["rows"]}
        models = list(dict.fromkeys(r["model"] for r in data["rows"]))
        for strategy in dict.fromkeys(r["strategy"] for r in data["rows"]):
            cells = [_cell(by[m, strategy]["all"]) if by[m, strategy]["ok"] else f"failed: {by[m, strategy]['reason']}"
                     for m in models]
            rows.append([label, str(sum(data["items"].values())), strategy, *cells, _f(best["mean"]),
                         _f(by[models[0], strategy].get("latency_p95_s"))])
    return measured(*PUBLISHED) + "\n\n" + table(
        ["set", "items", "strategy", *models, "best constant", f"{models[0]} p95 s"], rows)


def prefix_cache() -> str:
    """docs/correctness.md: the shared-prefix cache off and on, on both backends (bench/prefix_cache.py)."""
    names = ("prefix_cache_python", "prefix_cache_server")
    rows, same = [], []
    for name in names:
        data = results(name)
        for mode, m in data["modes"].items():
            rows.append([data["backend"], mode, _f(m["p95_s"]), _f(m["p50_s"]), _f(m["load_s"]),
                         _f(m["prompt_tokens_mean"], ".0f"), _f(m["prefill_tokens_mean"], ".0f")])
        same.append(f"{data['backend']} {data['same_answers']} of {data['items']}")
    return measured(*names) + "\n\n" + table(
        ["backend", "prefix_cache", "p95 s", "p50 s", "load s", "prompt tokens (mean)", "prefilled tokens (mean)"],
        rows) + f"\n\nThe same answer with the cache off and shared: {', '.join(same)}."


def prefix_flip() -> str:
    """docs/correctness.md: each item whose answer a cached prefix changed, and the two top-3 lists
    where the answers part (bench/prefix_flip.py)."""
    data = results("prefix_flip")
    top = lambda t: ", ".join(f"{x!r} {lp:.3f}" for x, lp in t)  # noqa: E731
    return measured("prefix_flip") + f" {data['differ']} of {data['items']} items answered differently.\n\n" + table(
        ["item", "cold", "cached prefix", "parting at token", "cold top 3", "cached top 3", "largest change"],
        [[f"{d['kind']} {d['id']}", repr(d['cold']), repr(d['cached_prefix']), str(d["parting_token"] + 1),
          top(d["cold_top3"]), top(d["cached_top3"]), _f(d["largest_logprob_change"], ".3f")]
         for d in data["differing"]])


def promotion() -> str:
    """docs/studies.md: what promotion buys for the same trial-hours, replayed on the recorded grid
    (bench/promotion_grid.py, then bench/promotion.py)."""
    data = results("promotion")

    def mid(x: list[float], fmt: str = ".3f") -> str:
        return f"{_f(x[0], fmt)} [{_f(x[1], fmt)}, {_f(x[2], fmt)}]"

    rows = []
    for p in data["plans"]:
        w, o = p["with"], p["without"]
        rows.append([" / ".join(map(str, p["rungs"])), _f(p["keep"]), _f(w["spent_s"][0] / 60, ".1f"),
                     mid(w["hv"]), mid(o["hv"]), f"{p['hv_better']} / {p['hv_worse']}",
                     mid(w["pick_correctness"]), mid(o["pick_correctness"]), f"{p['pick_better']} / {p['pick_worse']}",
                     f"{_f(w['pick_items'][0], '.0f')} / {_f(o['pick_items'][0], '.0f')}",
                     f"{mid(w['pick_claim_error'])} / {mid(o['pick_claim_error'])}"])
    return (measured("promotion_grid", "promotion") + f" {len(data['configs'])} configurations, each on all "
            f"{data['items']} items; {data['seeds']} seeds of {data['trials']} trials; the best full-set correctness "
            f"in the grid is {data['best_correctness']:.3f}. Medians [quartiles].\n\n" + table(
                ["rungs", "keep", "trial-min (median)", "hypervolume, with", "without", "seeds better / worse",
                 "pick's full-set correctness, with", "without", "seeds better / worse", "pick's items, with / without",
                 "pick's claim off by, with / without"],
                rows))


def open_load() -> str:
    """docs/open-load.md: response, queueing, duty cycle and the probe at five rates, and each
    configuration's capacity (bench/open_load.py)."""
    data = results("open_load")
    rows = []
    for c in data["configs"]:
        for r in c["runs"]:
            f = r["figures"]
            lb = ">=" if f.get("response_lower_bound") else ""
            rows.append([c["label"], _f(r["rate_per_min"], ".3g"),
                         lb + _f(f.get("response_p95_s")) if r["ok"] else f"failed ({r['reason']})",
                         _f(f.get("service_p95_s")), _f(f.get("queue_wait_p95_s")), _f(f.get("queue_max"), ".0f"),
                         _f(f.get("cpu_mean_share_pct"), ".1f"), _f(f.get("cpu_s_per_answer")),
                         _f(f.get("fg_open_p95_ratio")), f"{_f(f.get('open_answered'), '.0f')}/{_f(f.get('open_events'), '.0f')}",
                         "yes" if f.get("saturated") else "no", "holds" if not r["broken"] else ", ".join(r["broken"])])
    caps = "; ".join(f"{c['label']}: **{_f(c['capacity_per_min'], '.1f')} events/min**" if c["capacity_per_min"]
                     else f"{c['label']}: **below {_f(min(data['rates']), 'g')} event/min** (no rate held)"
                     for c in data["configs"])
    return (measured("open_load") + f" Each open-loop phase {data['seconds']:g} s. Capacity (response p95 <= 2.5 s, "
            f"CPU mean <= 35%, not saturated): {caps}.\n\n" + table(
                ["configuration", "rate /min", "response p95 s", "service p95 s", "wait p95 s", "queue max",
                 "CPU mean %", "CPU s/answer", "probe p95 x", "answered", "saturated", "budgets"], rows))


TABLES: dict[str, Callable[[], str]] = {"promotion": promotion, "open-load": open_load, "calibration-linux": calibration_linux, "calibration-paths": calibration_paths,
                                        "monitor-cost-paths": monitor_cost_paths, "hard_limits-quiet": hard_limits_quiet,
                                        "hard_limits-contended": hard_limits_contended, "injection": injection,
                                        "injection-v2": injection_v2, "injection-v3": injection_v3,
                                        "injection-confusion": injection_confusion,
                                        "injection-adaptive": injection_adaptive, "topology": topology,
                                        "contention": contention,
                                        "contention-qwen": contention_qwen, "parity": parity, "backends": backends,
                                        "fleet": fleet, "chaos": chaos, "unit-exposure": unit_exposure,
                                        "knob-paths": knob_paths, "correctness-all": correctness_all,
                                        "correctness-all-gemma": correctness_all_gemma,
                                        "correctness-attack": correctness_attack, "correctness-iocs": correctness_iocs,
                                        "correctness-tools-all": correctness_tools_all, "published": published,
                                        "prefix-cache": prefix_cache, "prefix-flip": prefix_flip}


def render(text: str, where: str) -> tuple[str, list[str]]:
    """``text`` with every generated table rendered again from its data, and the names of those that changed.

    Raises:
        BadInput: a marker without its end, or a table ``TABLES`` does not know.
    """
    changed: list[str] = []

    def one(m: re.Match[str]) -> str:
        if m["name"] not in TABLES:
            raise BadInput(f"{where}: no table is rendered as bench:{m['name']} (known: {', '.join(TABLES)})")
        body = f"\n{TABLES[m['name']]()}\n\n"  # blank lines: a table must not touch the HTML comments
        if body != m["body"]:
            changed.append(m["name"])
        return m[1] + body + m[4]

    new, n = REGION.subn(one, text)
    if len(MARKER.findall(text)) != 2 * n:
        raise BadInput(f"{where}: a <!-- bench:NAME --> marker without its <!-- /bench:NAME --> (or the reverse)")
    return new, changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", type=Path, metavar="FILE", help="Markdown files [README.md, docs/*.md]")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a table is out of date")
    args = ap.parse_args(argv)
    stale = []
    try:
        for path in args.files or [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
            where = str(path.resolve().relative_to(REPO)) if path.resolve().is_relative_to(REPO) else str(path)
            text = path.read_text()
            new, changed = render(text, where)
            stale += [f"{where}: bench:{name}" for name in changed]
            if changed and not args.check:
                path.write_text(new)
    except (BadInput, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in stale:
        print(f"{line} {'is not what its data renders' if args.check else 'rendered again'}")
    if stale and args.check:
        print("a generated table was edited by hand, or its data changed: run `make tables`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
