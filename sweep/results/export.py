"""Exports that deploy: the full record with provenance, and renderings of it.

Formats: ``json`` and ``yaml`` (the full record), ``python`` (a script that
applies the OS knobs and builds ``Llama(**kwargs)``), ``llama-server`` (a shell
command line) and ``systemd`` (a service unit). Every rendering says which
budgets the trial met and by what margin.
"""

from __future__ import annotations

import json
import math
import os
import pprint
import shlex
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sweep.correctness.guard import escapes, layers
from sweep.errors import ExportError, StudyError
from sweep.records import StudyMeta, TrialConfig
from sweep.results.front import trial_by_number
from sweep.study.space import check_config
from sweep.study.storage import safe_url
from sweep.trial import cgroups, knobs
from sweep.trial.server import server_args

FORMATS = ("json", "yaml", "python", "llama-server", "systemd")


def budget_report(row: dict[str, Any], budgets: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Per budget: the bound, the measured value, whether it was met and by what margin."""
    out = {}
    for name, bound in budgets.items():
        value = row["figures"].get(name)
        kind, limit = ("max", bound["max"]) if "max" in bound else ("min", bound["min"])
        margin = None if value is None else (limit - value if kind == "max" else value - limit)
        out[name] = {kind: limit, "value": value, "met": margin is not None and margin >= 0, "margin": margin}
    return out


def default_server_binary() -> str:
    """The llama-server ``sweep tools build`` made for the installed bindings (the program a server
    trial measured), else the bare name for PATH."""
    from sweep.models.tools import ToolsError, binary

    try:
        return str(binary("llama-server"))
    except ToolsError:
        return "llama-server"


def llama_server_command(config: TrialConfig, server_binary: str = "llama-server") -> str:
    """The llama-server command line (llama.cpp's own argument names), as a server trial runs it:
    the same argv, from ``sweep.trial.server.server_args``."""
    return shlex.join(server_args(config.to_dict(), server_binary))


def launcher_prefix(config: TrialConfig) -> str:
    """Shell prefix that applies the OS knobs llama-server itself does not set."""
    return knobs.shell_prefix(config.to_dict())


# Characters that mean something to a shell, to systemd (``%`` specifiers, ``$`` variables, its own
# quoting and C escapes) or break a line: a path or name with one is refused, never pasted.
_UNSAFE = set("%$'\"\\`") | {chr(c) for c in range(32)} | {chr(127)}


def pasteable(where: str, text: str) -> str:
    """``text``, if it can be pasted into a shell line, a systemd unit and Python source as it is.

    Raises:
        ExportError: naming ``where`` and the character.
    """
    bad = next((ch for ch in text if ch in _UNSAFE), None)
    if bad is not None:
        raise ExportError(f"{where}: {text!r} holds {bad!r}, which a shell line or a systemd unit would read as "
                          "more than a name: rename the file (or link it from a plain path) and use that")
    return text


def checked_config(row: dict[str, Any], study_name: str) -> TrialConfig:
    """The trial's stored configuration, re-validated before any of it is rendered: a database is
    not trusted to hold what sweep wrote.

    Raises:
        SweepError: naming the trial and the key (exit 2).
    """
    where = f"trial {row['number']} of study {study_name!r}"
    if row["config"] is None:
        raise StudyError(f"{where} has no stored configuration")
    config = check_config(row["config"], where)
    for key in ("model", "quant", "model_path", "chat_format"):
        if getattr(config, key) is not None:
            pasteable(f"{where}: config.{key}", getattr(config, key))
    return config


def export_record(study: Any, row: dict[str, Any], storage_url: str, server_binary: str | None = None) -> dict[str, Any]:
    """The full exported configuration, with where it came from. ``server_binary`` (default: the
    built tools' llama-server) is the program the llama-server line runs."""
    config = checked_config(row, study.study_name)
    meta = StudyMeta.of(study)
    budgets = meta.budgets
    report = budget_report(row, budgets)
    prefix = launcher_prefix(config)
    command = llama_server_command(config, pasteable("--server-binary", server_binary or default_server_binary()))
    return {
        "schema": "sweep.export/1",
        "config": config.to_dict(),
        "settings": meta.settings.to_dict(),
        "llama_kwargs": config.llama_kwargs(),
        "environment": config.environment(),
        "llama_server": (prefix + " " if prefix else "") + command,
        "llama_server_args": command,
        "budgets": report,
        "meets_all_budgets": all(b["met"] for b in report.values()),
        "metrics": row["figures"],
        "figures_from": _figures_from(row, study),
        "prompt_strategy": prompt_strategy(config),
        "provenance": {
            "study": study.study_name, "trial": row["number"], "storage": safe_url(storage_url),
            "space_file": meta.space_file, "task_set": meta.task_set,
            "host": _measured_by(study, row["number"]), "hardware_class": meta.hardware_class,
            "sweep_version": meta.sweep_version,
            "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    }


def _measured_by(study: Any, number: int) -> dict[str, Any]:
    """The host that measured the trial (for a study from before per-trial owners: the creating host)."""
    owner = trial_by_number(study, number).user_attrs.get("owner")
    info = dict(StudyMeta.of(study).host)
    if owner:
        info = {"hostname": owner["host"], "boot_id": owner["boot_id"], "pid": owner["pid"]}
    return info


def _figures_from(row: dict[str, Any], study: Any) -> str:
    v = row.get("verified")
    if v and not v["failed"]:
        lo, hi = v["correctness_ci"]
        return (f"verification: {v['n_items']} tasks x {v['repeats']} runs on {v['at']}; "
                f"correctness 95% CI [{lo:.3f}, {hi:.3f}]")
    p = row.get("promoted")
    if p and not p["failed"]:
        f = row["figures"]
        return (f"promotion: trial {p['trial']} measured this configuration again on {p['n_items']} tasks, one run; "
                f"correctness 95% CI [{f.get('correctness_ci_low', 0):.3f}, {f.get('correctness_ci_high', 1):.3f}]")
    prompts = StudyMeta.of(study).settings.prompts
    failed = f" (its verification failed: {v['failed']})" if v else " (not verified: run sweep verify)"
    return f"the sweep: a subset of {prompts} tasks, one run{failed}"


def prompt_strategy(config: TrialConfig) -> dict[str, Any]:
    """How the trial asked its questions, so a deployment can ask the same way."""
    from sweep.correctness.prompts import OUTPUT_KINDS, SHOTS_FILE, grammar_for, schema_for

    out: dict[str, Any] = {"shots": config.shots, "output": config.output, "max_tokens": config.max_tokens,
                           "temperature": config.temperature, "prefix_cache": config.prefix_cache,
                           "input_guard": config.input_guard}
    if config.context == "attack-catalog":
        from sweep.correctness.catalog import ATTRIBUTION

        out["context"], out["context_k"] = config.context, config.context_k
        out["context_how"] = (f"on ATT&CK items, append the {config.context_k} most similar techniques "
                              f"(sweep.correctness.catalog.block: BM25 over {ATTRIBUTION})")
    if config.ioc_hints == "regex":
        out["ioc_hints"] = config.ioc_hints
        out["ioc_hints_how"] = ("on IOC items, append to the question the regex's candidates "
                                "(sweep.correctness.tasks.ioc_candidates) as sweep.correctness.prompts._HINT words it")
    if config.input_guard in ("delimit", "sandwich"):
        from sweep.correctness.prompts import request_for
        from sweep.correctness.tasks import Task

        example = Task(id="example", kind="verdict", input="INPUT", expected="benign", source="example")
        out["input_guard_how"] = ("ask each item as this example asks INPUT (sweep.correctness.prompts.request_for), with a "
                                  "fence named by a fresh random nonce for each request (UNTRUSTED- and secrets.token_hex(8), "
                                  "drawn again if the input holds it), so no input's author knows the marker that closes "
                                  "it; the worked examples, sweep's own text, keep a fixed one (the first 8 hex digits of "
                                  "their sha256), so the prefix a cache holds stays the same")
        out["input_guard_example"] = request_for(example, 0, config.output, config.input_guard)["messages"]
    elif config.input_guard == "escape":
        out["input_guard_how"] = ("tokenize every message's content with special-token parsing off and only the "
                                  "template's own markers with it on (the python export's Escape does this; with "
                                  "llama-server, apply the template, tokenize the pieces with /tokenize "
                                  "parse_special false for contents, and send the tokens to /completion)")
    if config.prefix_cache == "shared":
        out["prefix_cache_how"] = ("prefill each kind's fixed prefix (system prompt and worked examples) once and "
                                   "restore it before each request: with llama-cpp-python Llama.save_state and "
                                   "load_state; with llama-server, start it with "
                                   "--slot-save-path DIR, fill the slot with the prefix (/completion, cache_prompt: "
                                   "true), save it (POST /slots/0?action=save), and restore it (action=restore) "
                                   "before each request sent with cache_prompt: true")
    if config.shots:
        out["worked_examples"] = f"the first {config.shots} of each kind in sweep/{SHOTS_FILE}"
    if config.output == "grammar":
        out["grammars"] = {kind: grammar_for(kind) for kind in OUTPUT_KINDS}
    elif config.output == "json":
        out["response_formats"] = {kind: {"type": "json_object", "schema": schema_for(kind)} for kind in OUTPUT_KINDS}
    return out


def budget_lines(record: dict[str, Any], comment: str) -> list[str]:
    lines = [f"{comment} sweep study {record['provenance']['study']!r}, trial {record['provenance']['trial']}; "
             f"{'meets every budget' if record['meets_all_budgets'] else 'DOES NOT meet every budget'}",
             f"{comment} figures from {record.get('figures_from', 'the sweep')}:"]
    for name, b in record["budgets"].items():
        bound = f"<= {b['max']:g}" if "max" in b else f">= {b['min']:g}"
        value = "not measured" if b["value"] is None else f"{b['value']:.4g} (margin {b['margin']:+.4g})"
        if name == "correctness" and "correctness_ci_low" in record.get("metrics", {}):
            m = record["metrics"]
            value += f", 95% CI [{m['correctness_ci_low']:.2f}, {m['correctness_ci_high']:.2f}] on {m['correctness_n']:.0f} items"
        lines.append(f"{comment}   {'met ' if b['met'] else 'OVER'} {name} {bound}: {value}")
    return lines


def _pacing_warning(record: dict[str, Any], comment: str) -> list[str]:
    c = record["config"]
    if not (c.get("pace_tps") or c.get("pace_duty")):
        return []
    return [f"{comment} WARNING: the sweep paced decoding (pace_tps={c.get('pace_tps')}, pace_duty={c.get('pace_duty')}),",
            f"{comment} which llama-server cannot do: expect more CPU while decoding than was measured.",
            f"{comment} To keep the measured figures, pace in the client (see the python export)."]


def _topology_warning(record: dict[str, Any], comment: str) -> list[str]:
    """A unit runs in a cgroup of its own. A trial measured in the orchestrator's cgroup, beside the
    foreground, measured a politeness (nice, SCHED_IDLE) that orders threads only inside one cgroup:
    between cgroups their weights decide, so the service can slow the user more than measured."""
    if record["metrics"].get("cgroup_own") == 1.0:
        return []
    c = record["config"]
    polite = c.get("sched_policy") == "idle" or c.get("nice")
    return [f"{comment} WARNING: this trial was measured in one cgroup with the user's programs (trial.cgroup: shared, or",
            f"{comment} no cgroup could be made), but a systemd service runs in a cgroup of its own, where nice and",
            f"{comment} CPUSchedulingPolicy= order threads only inside it; between cgroups, CPUWeight= decides."
            + (" Expect the" if polite else ""),
            *([f"{comment} service to slow a CPU-bound user more than its figures say: set cpu_weight: idle",
               f"{comment} (CPUWeight=idle) in the space and measure that (docs/measuring.md, cgroup topology)."]
              if polite else [f"{comment} Measure it with trial.cgroup: own for figures a service keeps."])]


def _cache_lines(record: dict[str, Any], comment: str) -> list[str]:
    """How to send requests so that the server's prompt cache does what it did in the trial."""
    if record["config"].get("prefix_cache") != "shared":
        return [f"{comment} Send cache_prompt: false in a request to ask it cold, as the sweep measured it."]
    return [f"{comment} The sweep restored each kind's prefilled prefix before each request (prefix_cache: shared):",
            f"{comment} add --slot-save-path DIR, fill and save a slot per kind, and restore it before each request",
            f"{comment} sent with cache_prompt: true (prompt_strategy.prefix_cache_how in the JSON export)."]


def _python(record: dict[str, Any]) -> str:
    c = record["config"]
    lines = ["#!/usr/bin/env python3", *budget_lines(record, "#"), "from __future__ import annotations", "",
             "import os", "import sys", "", *knobs.python_lines(c), "", *cgroups.python_lines(c)]
    lines += ["", "from llama_cpp import Llama  # noqa: E402", "",
              f"LLAMA_KWARGS = {pprint.pformat(record['llama_kwargs'], sort_dicts=False)}",
              "llm = Llama(**LLAMA_KWARGS)", ""]
    if escapes(c.get("input_guard", "none")):
        import inspect

        from sweep.correctness.escape import Escape

        lines += ["# input_guard: escape, as the trial ran it: pass each request's messages through",
                  "# escape.messages(...) so no input text can become a template token.",
                  inspect.getsource(Escape), "escape = Escape(llm)", ""]
    if layers(c.get("input_guard", "none")):
        lines += _guard_lines(record)
    elif c.get("input_guard") in ("delimit", "sandwich"):
        lines += [f"# input_guard: {c['input_guard']}: ask each item as prompt_strategy.input_guard_example in the "
                  "JSON export shows.", ""]
    if c.get("pace_tps") or c.get("pace_duty"):
        lines.insert(-1, f"# The sweep also paced decoding (pace_tps={c.get('pace_tps')}, pace_duty={c.get('pace_duty')}):"
                         " sleep between streamed tokens to keep that.")
    return "\n".join(lines)


def _guard_lines(record: dict[str, Any]) -> list[str]:
    """The layered guard as the trial ran it, for a command line's verdict: the question asked as the
    trial asked it, the differential call, and ``sweep.correctness.guard``'s own source (the standard
    library only), so the deployed service judges as the measured one did. ``judge_command(line)``
    is the API; ``--judge`` reads one command line a line from stdin and writes one JSON verdict a line."""
    import inspect

    from sweep.correctness import guard
    from sweep.correctness.prompts import request_for, strategy_of
    from sweep.correctness.tasks import Task

    c = TrialConfig.from_dict(record["config"])
    placeholder = "\ue000COMMAND\ue001"  # a private-use mark no command line holds
    strategy = {**strategy_of(c), "guard": "escape"}
    request = request_for(Task(id="x", kind="verdict", input=placeholder, expected="benign", source="export"), **strategy)
    source = inspect.getsource(guard)
    return [f"# input_guard: {c.input_guard}: checks outside the model, which can only raise its verdict",
            "# (sweep.correctness.guard, below as it is). judge_command(line) asks the model as the trial did",
            "# and applies them; run with --judge to read command lines on stdin and write JSON verdicts.",
            "# The trial restored a prefilled prefix before each request (prefix_cache); this resets instead:",
            "# the same tokens, prefilled in full.",
            f"GUARD = {c.input_guard!r}",
            f"VERDICT_REQUEST = {pprint.pformat(request, sort_dicts=False)}",
            f"PLACEHOLDER = {placeholder!r}",
            f"MAX_TOKENS, TEMPERATURE, SEED = {c.max_tokens!r}, {c.temperature!r}, {c.seed!r}", "",
            "# sweep.correctness.guard's source, as the trial ran it, loaded as a module of its own.",
            f"GUARD_SOURCE = {source!r}",
            "import types  # noqa: E402",
            "guard = sys.modules['sweep_guard'] = types.ModuleType('sweep_guard')",
            "exec(compile(GUARD_SOURCE, 'sweep_guard', 'exec'), guard.__dict__)", "",
            "def _ask(command_line):",
            "    from llama_cpp.llama_grammar import LlamaGrammar",
            "    messages = [dict(m, content=m['content'].replace(PLACEHOLDER, command_line))",
            "                for m in VERDICT_REQUEST['messages']]",
            "    grammar = LlamaGrammar.from_string(VERDICT_REQUEST['grammar'], verbose=False) "
            "if VERDICT_REQUEST.get('grammar') else None",
            "    llm.reset()",
            "    reply = llm.create_chat_completion(messages=escape.messages(messages), max_tokens=MAX_TOKENS,",
            "                                       temperature=TEMPERATURE, seed=SEED, grammar=grammar,",
            "                                       response_format=VERDICT_REQUEST.get('response_format'))",
            "    text = reply['choices'][0]['message']['content'] or ''",
            "    if VERDICT_REQUEST.get('response_format'):",
            "        import json as _json",
            "        try:",
            "            text = _json.loads(text)['answer']",
            "        except (ValueError, KeyError, TypeError):",
            "            text = None",
            "    return text", "",
            "def judge_command(command_line):",
            "    \"\"\"The guarded verdict on one command line, and what each check said.\"\"\"",
            "    answer = _ask(command_line)",
            "    view_answer = None",
            "    if 'differential' in guard.layers(GUARD):",
            "        seen = guard.view(command_line)",
            "        view_answer = _ask(seen) if seen != command_line else None",
            "    verdict, evidence = guard.judge('verdict', command_line, answer, view_answer, GUARD)",
            "    return {'verdict': verdict, 'evidence': evidence}", "",
            "if __name__ == '__main__' and sys.argv[1:] == ['--judge']:",
            "    import json",
            "    for line in sys.stdin:",
            "        if line.strip():",
            "            print(json.dumps({'input': line.rstrip('\\n'), **judge_command(line.rstrip('\\n'))}), flush=True)",
            ""]


def _own_session(c: dict[str, Any]) -> list[str]:
    """Shell lines that set the trial's nice on the session's autogroup, as the trial ran: where the
    kernel groups by session, that is what yields to the user's programs. Only a session of its own
    is the script's to renice (under systemd, or started with ``setsid``), never the terminal's."""
    if not c.get("nice"):
        return []
    return ["# The trial ran in a session of its own, with that session's (autogroup's) nice set too: start",
            "# this with setsid (or as a service) for the same; the terminal's session is never reniced.",
            "if [ \"$(awk '{print $6}' /proc/$$/stat)\" = \"$$\" ] && [ -w /proc/self/autogroup ]; then",
            f"  echo {c['nice']} > /proc/self/autogroup",
            "fi"]


def _cpu_quota(record: dict[str, Any]) -> str | None:
    """A CPUQuota= from the measured active p99, in percent of one CPU, rounded up to 10."""
    p99 = record["metrics"].get("cpu_active_p99_core_pct")
    return None if p99 is None else f"{max(10, math.ceil(p99 / 10) * 10)}%"


# The unit's sandbox. What keeps its exposure above 1.0 (systemd-analyze security) is what it is
# for: it listens on loopback (AF_INET, no PrivateNetwork=) and runs in the host's root directory.
# @resources stays allowed: llama.cpp sets its threads' affinity (and, with --prio, their priority).
_SANDBOX = """NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
PrivateUsers=yes
PrivateIPC=yes
ProtectHostname=yes
ProtectClock=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectProc=invisible
ProcSubset=pid
CapabilityBoundingSet=
AmbientCapabilities=
RestrictAddressFamilies=AF_INET AF_UNIX
RestrictNamespaces=yes
IPAddressDeny=any
IPAddressAllow=localhost
SystemCallFilter=@system-service
SystemCallFilter=~@privileged
SystemCallArchitectures=native
LockPersonality=yes
MemoryDenyWriteExecute=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
RemoveIPC=yes
UMask=0077
DevicePolicy=closed
KeyringMode=private""".splitlines()
API_KEY_SOURCE = "/etc/sweep-llm/api-key"
API_KEY_VARIABLE = "SWEEP_LLM_API_KEY_FILE"  # where the llama-server script finds its key  # the unit's credential; only root reads it, the service gets a copy
_HIDDEN = ("/home/", "/root/", "/run/user/")  # ProtectHome=yes hides these from the service


def service_path_problem(path: str) -> str | None:
    """Why a system service must not run or read ``path``: a place the unit hides, or a file that
    a user other than root could replace. The path is checked as the kernel looks it up, since the
    service opens it as written: every directory on the way, every link it follows and the file must
    be root's and writable by no one else (a sticky directory such as /tmp protects root's entries
    in it), or whoever can rewrite one could repoint it later. None when it is safe."""
    import stat

    here, rest, links = Path("/"), list(Path(os.getcwd(), path).parts[1:]), 0
    node = here
    while True:
        hidden = next((h for h in _HIDDEN if str(node).startswith(h)), None)
        if hidden:
            return f"{node} lies under {hidden}, which the unit hides (ProtectHome=yes) and a user may rewrite"
        try:
            st = node.lstat()
        except OSError as exc:
            return f"{node}: {exc.strerror}"
        if st.st_uid != 0:
            return f"{node} belongs to uid {st.st_uid}, who could replace what the service runs as another user"
        if stat.S_ISLNK(st.st_mode):  # a link's own mode means nothing; its directory was checked on the way
            links += 1
            if links > 40:
                return f"{node}: too many levels of symbolic links"
            target = Path(os.readlink(node))
            if target.is_absolute():
                here, target = Path("/"), target.relative_to("/")
            rest = [*target.parts, *rest]
        elif st.st_mode & 0o022 and not (stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX):
            return f"{node} is writable by {'group' if st.st_mode & 0o020 else 'others'}"
        else:
            here = node
        while rest and rest[0] == "..":  # here holds no link, so its parent is the kernel's too
            here, rest = here.parent, rest[1:]
        if not rest:
            return None
        node, rest = here / rest[0], rest[1:]


def _copy_in(source: str, target: Path, mode: int) -> None:
    """Copy ``source`` to ``target`` through a file of a random name, created with O_EXCL and
    O_NOFOLLOW (a link planted in the directory is never followed), then renamed over ``target``
    (which replaces a link there, never writes through it)."""
    import secrets
    import shutil

    partial = target.with_name(f".{target.name}.{secrets.token_hex(8)}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
            os.fchmod(out.fileno(), mode)
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def install(record: dict[str, Any], directory: str | Path, server_binary: str | None = None) -> dict[str, Any]:
    """Copy llama-server (with the libraries it loads) and the model into ``directory`` (root's,
    modes 0755 and 0644), and return the record with its command line pointing at the copies: what a
    system unit may run.

    Raises:
        ExportError: not root, or the directory lies somewhere a user could rewrite.
    """
    import shutil
    import stat

    if os.geteuid() != 0:
        raise ExportError(f"--install {directory}: the copies must belong to root: run the export as root (sudo)")
    argv = shlex.split(record["llama_server_args"])
    sources = {"bin": server_binary or argv[0], "models": record["config"]["model_path"]}
    if shutil.which(sources["bin"]):
        sources["bin"] = shutil.which(sources["bin"]) or sources["bin"]
    # The shared libraries a program `sweep tools build` made loads from ../lib, as its manifest lists them.
    from sweep.models.tools import MANIFEST

    built = Path(sources["bin"]).resolve().parent.parent
    try:
        named = json.loads((built / MANIFEST).read_text()).get("libraries") or {}
    except (OSError, ValueError):
        named = {}
    libs = [str(built / "lib" / name) for name in sorted(named)]
    copies = {}
    for sub, source in [*sources.items(), *(("lib", lib) for lib in libs)]:
        target_dir = Path(directory) / sub
        for d in (Path(directory), target_dir):
            d.mkdir(mode=0o755, parents=True, exist_ok=True)
        # Before a byte is copied: where another user can write, the copy could be swapped.
        _refuse_install(directory, service_path_problem(str(target_dir)))
        for d in (Path(directory), target_dir):
            os.chown(d, 0, 0)
            d.chmod(0o755)
        target = target_dir / Path(source).name
        try:
            have = target.lstat()  # a link is not the copy, whatever the size of what it names
        except FileNotFoundError:
            have = None
        if have is None or not stat.S_ISREG(have.st_mode) or have.st_size != Path(source).stat().st_size:
            _copy_in(source, target, 0o755 if sub == "bin" else 0o644)
        if sub != "lib":
            copies[sub] = pasteable(f"--install {directory}", str(target))
    _refuse_install(directory, service_path_problem(copies["bin"]) or service_path_problem(copies["models"]))
    argv[0], argv[argv.index("-m") + 1] = copies["bin"], copies["models"]
    out = {**record, "config": {**record["config"], "model_path": copies["models"]},
           "llama_server_args": shlex.join(argv)}
    prefix = record["llama_server"][: -len(record["llama_server_args"])]
    out["llama_server"] = prefix + out["llama_server_args"]
    return out


def _refuse_install(directory: str | Path, wrong: str | None) -> None:
    if wrong:
        raise ExportError(f"--install {directory}: {wrong}: choose a directory under one only root can write "
                          "(for example /opt/sweep-llm)")


def _systemd(record: dict[str, Any], server_binary: str, user: str | None = None, port: int = 8080) -> str:
    c = record["config"]
    argv = shlex.split(record["llama_server_args"])
    argv[0] = server_binary
    for path in (argv[0], argv[argv.index("-m") + 1]):
        wrong = service_path_problem(path)
        if wrong:
            raise ExportError(f"the systemd unit would run as a service what a user can change ({wrong}): "
                              "pass --install DIR to copy llama-server and the model into a directory of root's")
    # %d is the credentials directory: the service reads its own copy of the key, made by systemd.
    argv += ["--host", "127.0.0.1", "--port", str(port), "--api-key-file", "%d/api-key"]
    lines = ["[Unit]", f"Description=Local LLM ({c['model']}:{c['quant']}) tuned by sweep", *budget_lines(record, "#"),
             *_pacing_warning(record, "#"), *_topology_warning(record, "#"), *_cache_lines(record, "#"),
             "# The API key every request must send (Authorization: Bearer KEY), readable by root only:",
             f"#   install -d -m 0700 {Path(API_KEY_SOURCE).parent} && "
             f"head -c 32 /dev/urandom | base64 > {API_KEY_SOURCE} && chmod 0600 {API_KEY_SOURCE}",
             "", "[Service]", "ExecStart=" + " ".join(shlex.quote(a) for a in argv),
             f"User={pasteable('--user', user)}" if user else "DynamicUser=yes",
             f"LoadCredential=api-key:{API_KEY_SOURCE}",
             # llama-server skips a key file's empty lines, and with no key at all serves anyone.
             "ExecStartPre=/bin/sh -c 'grep -q \"[^[:space:]]\" \"$$1\" || { echo \"no API key in "
             f"{API_KEY_SOURCE}: it is empty or blank, and llama-server would serve anyone without one\" >&2; "
             "exit 1; }' sh %d/api-key"]
    lines += knobs.systemd_lines(c)
    lines += cgroups.systemd_lines(c)  # the kernel limits the trial was measured under
    quota = _cpu_quota(record)
    if quota and c.get("cpu_quota_pct") is None:  # no measured quota: a ceiling from the measured p99
        lines.append(f"CPUQuota={quota}")
    ram = record["budgets"].get("rss_peak_gb", {}).get("max")
    if ram and c.get("memory_max_gb") is None:
        lines.append(f"MemoryMax={ram:g}G")
    lines += ["IOWeight=10", *_SANDBOX, "Restart=on-failure", "", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def render(record: dict[str, Any], fmt: str, server_binary: str | None = None, user: str | None = None) -> str:
    """The export in ``fmt`` (one of ``FORMATS``)."""
    if fmt == "json":
        return json.dumps(record, indent=2) + "\n"
    if fmt == "yaml":
        import yaml

        return yaml.safe_dump(record, sort_keys=False)
    if fmt == "python":
        return _python(record)
    guard = record["config"].get("input_guard", "none")
    if layers(guard):
        raise ExportError(f"--format {fmt}: the trial's input_guard {guard} is code outside the model (a rule floor, "
                          "an injection detector, the differential call), which llama-server alone cannot run; "
                          "export --format python (judge_command, or --judge on stdin) to deploy the guard as measured")
    if fmt == "llama-server":
        return "\n".join(["#!/bin/sh", *budget_lines(record, "#"), *_pacing_warning(record, "#"),
                          "# It listens on 127.0.0.1 only, and every request must carry the API key in KEY_FILE",
                          "# (Authorization: Bearer KEY). Extra arguments go to llama-server (--port; default 8080).",
                          *_cache_lines(record, "#"),
                          f'KEY_FILE="${{{API_KEY_VARIABLE}:-$HOME/.config/sweep-llm/api-key}}"',
                          'if [ ! -r "$KEY_FILE" ]; then',
                          '  echo "no API key in $KEY_FILE: create it with: install -d -m 0700 \"$(dirname '
                          '\"$KEY_FILE\")\" && head -c 32 /dev/urandom | base64 > \"$KEY_FILE\" && chmod 0600 '
                          '\"$KEY_FILE\"" >&2',
                          "  exit 2",
                          "fi",
                          "# llama-server skips a key file's empty lines, and with no key at all serves anyone.",
                          "if ! grep -q '[^[:space:]]' \"$KEY_FILE\"; then",
                          '  echo "no API key in $KEY_FILE: it is empty or blank, and llama-server would serve anyone '
                          'without one: write one with: head -c 32 /dev/urandom | base64 > \\"$KEY_FILE\\"" >&2',
                          "  exit 2",
                          "fi",
                          *_own_session(record["config"]),
                          *cgroups.shell_lines(record["config"]),
                          "exec " + record["llama_server"] + ' --host 127.0.0.1 --api-key-file "$KEY_FILE" "$@"', ""])
    if fmt == "systemd":
        return _systemd(record, server_binary or shlex.split(record["llama_server_args"])[0], user)
    raise ValueError(f"unknown export format {fmt!r}")
