"""The ``sweep`` command line: each command parses, calls one library function, prints."""

from __future__ import annotations

import errno
import json
import re
import sys
import traceback
from pathlib import Path
from typing import Any

import click

from sweep.errors import SweepError, WorkFailed
from sweep.records import StudyMeta


def parse_duration(text: str) -> float:
    """'8h', '30m', '1h30m', '90s' or a bare number of seconds."""
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if not parts or not any(parts.groups()):
        raise click.BadParameter(f"{text!r} is not a duration like 8h, 30m, 1h30m or 90s")
    h, m, s = (int(g or 0) for g in parts.groups())
    return h * 3600 + m * 60 + s


# An OSError with one of these names a path that cannot be used as given: bad input (exit 2).
_PATH_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ELOOP, errno.ENAMETOOLONG, errno.EEXIST}


class _Group(click.Group):
    def main(self, args: Any = None, prog_name: str | None = None, **kwargs: Any) -> Any:  # type: ignore[override]
        debug = "--debug" in sys.argv
        try:
            return super().main(args, prog_name, standalone_mode=False, **kwargs)
        except click.exceptions.Abort:  # click turns KeyboardInterrupt into Abort
            click.echo("interrupted; a trial in flight was recorded as failed (interrupted)", err=True)
            sys.exit(130)
        except click.ClickException as exc:
            exc.show()
            sys.exit(2)
        except SweepError as exc:
            if debug:
                traceback.print_exc()
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except OSError as exc:
            if debug:
                traceback.print_exc()
            if exc.filename is not None and exc.errno in _PATH_ERRNOS:
                click.echo(f"error: {exc.filename}: {exc.strerror}", err=True)  # a path the user gave us
                sys.exit(2)
            # The machine failed the work (a full disk, an I/O error): not bad input, and something
            # may have been written. The next run carries on from what was recorded.
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(f"error: the machine failed the work: {where}{exc.strerror or exc}", err=True)
            sys.exit(4)
        except Exception as exc:  # an internal error: say so, keep the traceback for --debug
            if debug:
                traceback.print_exc()
            click.echo(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
            sys.exit(1)


def _open_study(storage: str | None, name: str) -> tuple[Any, str]:
    """The named study in an existing database, and the storage URL it came from."""
    from sweep.study.storage import require_existing, storage_url
    from sweep.study.writer import load_study

    url = storage_url(storage)
    require_existing(url)
    return load_study(url, name), url


storage_option = click.option("--storage", envvar="SWEEP_STORAGE", default=None,
                              help="Study storage URL [default: sqlite:///studies.db; env SWEEP_STORAGE].")
lock_option = click.option("--no-lock", "no_lock", is_flag=True,
                           help="Measure without the host's measurement lock (figures may be spoiled by another "
                                "measurement; each trial is marked).")
models_dir_option = click.option("--models-dir", envvar="SWEEP_MODELS_DIR", type=click.Path(file_okay=False),
                                 default=None, help="A directory of your own GGUF files [env SWEEP_MODELS_DIR].")


@click.group(cls=_Group)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def main(debug: bool) -> None:
    """sweep: find a local-LLM configuration that stays invisible and is still correct."""
    from sweep import platforms

    platforms.name()  # a bad SWEEP_PLATFORM is bad input for every command, before any work


@main.command()
@click.argument("space", type=click.Path(path_type=Path))
@click.option("--study", "study_name", default=None, help="Study name [default: the space's name].")
@click.option("--trials", default=8, show_default=True, type=click.IntRange(min=1),
              help="Finished trials the study should hold; re-running continues to this count.")
@click.option("--timeout", "timeout", default=None, help="Wall-clock bound such as 8h; the trial in flight finishes.")
@click.option("--tasks", "tasks_file", type=click.Path(path_type=Path), default=None,
              help="Your own JSONL task file, or a bundled set by name (tasks-v1; default tasks-v2).")
@click.option("--quiet", is_flag=True, help="Print only the final summary.")
@click.option("--hardware-class", "hardware_class", default=None,
              help="Join a study of another hardware class anyway, by naming its class (or name a new study's).")
@lock_option
@storage_option
@models_dir_option
def run(space: Path, study_name: str | None, trials: int, timeout: str | None, tasks_file: Path | None,
        quiet: bool, hardware_class: str | None, no_lock: bool, storage: str | None, models_dir: str | None) -> None:
    """Run (or continue) a sweep of SPACE into the study."""
    from sweep.correctness.tasks import load_tasks, task_set_name
    from sweep.results.display import sweep_summary
    from sweep.results.progress import make_progress
    from sweep.study.orchestrator import RunOptions, run_study
    from sweep.study.space import load_space
    from sweep.study.storage import safe_url, storage_url

    timeout_s = parse_duration(timeout) if timeout else None
    sp = load_space(space, models_dir)  # everything is validated before the study is touched
    tasks = load_tasks(tasks_file)
    url = storage_url(storage)
    opts = RunOptions(url, study_name or sp.name, trials, tasks, task_set_name(tasks_file), timeout_s, not no_lock,
                      hardware_class)
    display = make_progress(quiet)
    try:
        result = run_study(sp, opts, on_progress=display)
    finally:
        if display:
            display.close()
    try:
        click.echo(sweep_summary(result.study, safe_url(url), sp.settings.prompts, len(tasks)))
    except Exception as exc:  # noqa: BLE001 - every trial is recorded by now: only the summary is missing
        from sweep.study.spool import transient

        if not transient(exc):
            raise
        click.echo(f"\nthe study's summary could not be read: the database went away ({type(exc).__name__}); "
                   f"`sweep status --study {opts.study}` shows it", err=True)
    if result.stopped_by_user:
        click.echo("stopped at your request; run the same command again to carry on", err=True)
        sys.exit(130)
    result.check()


@main.command()
@click.option("--study", "study_name", required=True)
@storage_option
def status(study_name: str, storage: str | None) -> None:
    """Summarise a running or finished study (safe to run beside a sweep)."""
    from sweep.errors import ExportError
    from sweep.results.display import status_text
    from sweep.results.front import choose
    study, url = _open_study(storage, study_name)
    try:
        pick = choose(study, allow_infeasible=True)
    except ExportError:
        pick = None
    click.echo(status_text(study, pick))


@main.command()
@click.option("--study", "study_name", required=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@storage_option
def pareto(study_name: str, as_json: bool, storage: str | None) -> None:
    """Print the study's Pareto front."""
    from sweep.results.display import front_table
    from sweep.results.front import constant_reference, pareto_front
    study, url = _open_study(storage, study_name)
    front, feasible = pareto_front(study)
    if as_json:
        click.echo(json.dumps({"study": study_name, "feasible_front": feasible, "objectives": StudyMeta.of(study).objectives,
                               "front": front}, indent=2))
    if not front:
        raise WorkFailed(f"study {study_name!r} has no complete trial yet")
    if as_json:
        return
    if not feasible:
        click.echo("No trial meets every budget; this is the front ignoring budgets.")
    click.echo(front_table(front, StudyMeta.of(study).objectives, constant_reference(study)))


@main.command()
@click.option("--study", "study_name", required=True)
@click.option("--repeats", default=2, show_default=True, type=click.IntRange(min=1), help="Runs of each trial.")
@click.option("--trial", "trial_numbers", type=int, multiple=True, help="Verify this trial (repeatable) instead of the front.")
@click.option("--tasks", "tasks_file", type=click.Path(path_type=Path), default=None,
              help="Task file to verify on [default: the study's own, whole].")
@click.option("--again", is_flag=True, help="Verify trials that already have a verification this large.")
@lock_option
@storage_option
def verify(study_name: str, repeats: int, trial_numbers: tuple[int, ...], tasks_file: Path | None, again: bool,
           no_lock: bool, storage: str | None) -> None:
    """Re-run the Pareto front on the whole task set, with repeats, and show what moves."""
    from sweep.correctness.tasks import load_tasks, task_set_name
    from sweep.results.display import verification_table
    from sweep.results.front import front_moves
    from sweep.verify import verify_study

    study, url = _open_study(storage, study_name)
    source = task_set_name(tasks_file) if tasks_file else StudyMeta.of(study).task_set
    tasks = load_tasks(source)
    verified, skipped = verify_study(study, url, tasks, repeats, list(trial_numbers) or None, again,
                                     on_event=lambda line: click.echo(line, err=True), task_set=source,
                                     lock=not no_lock)
    for n in skipped:
        click.echo(f"trial {n}: already verified on at least {len(tasks)} tasks x {repeats} runs (--again redoes it)",
                   err=True)
    click.echo(verification_table(study))
    moves = front_moves(study)
    click.echo("\n".join(moves) if moves else "The front holds: no trial moves on the verified figures.")
    from sweep.results.front import verifications

    broke = [n for n in verified if verifications(study)[n]["failed"]]
    if broke:
        raise WorkFailed(f"the verification of trial {', '.join(map(str, broke))} failed (see above)")


@main.command()
@click.option("--study", "study_name", required=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="File to write.")
@click.option("--format", "fmt", type=click.Choice(["json", "yaml", "python", "llama-server", "systemd"]),
              default="json", show_default=True)
@click.option("--trial", "trial_number", type=int, default=None, help="Export this trial instead of the policy's pick.")
@click.option("--allow-infeasible", is_flag=True, help="Export the closest trial when none meets every budget.")
@click.option("--server-binary", default=None,
              help="llama-server's path in the llama-server line and the systemd unit's ExecStart "
                   "[default: the one `sweep tools build` made, else llama-server on PATH].")
@click.option("--install", "install_dir", type=click.Path(path_type=Path), default=None,
              help="systemd: copy llama-server and the model into this directory of root's (e.g. /opt/sweep-llm) "
                   "and run the copies; a unit never runs files a user can rewrite.")
@click.option("--user", default=None, help="systemd: run as this existing user [default: DynamicUser=yes].")
@storage_option
def export(study_name: str, output: Path, fmt: str, trial_number: int | None, allow_infeasible: bool,
           server_binary: str | None, install_dir: Path | None, user: str | None, storage: str | None) -> None:
    """Write the chosen configuration, with provenance, to a file."""
    from sweep.results.export import budget_lines, export_record, install, render
    from sweep.results.front import choose, why_chosen
    if (install_dir or user) and fmt != "systemd":
        raise SweepError("--install and --user shape the systemd unit: use them with --format systemd")
    study, url = _open_study(storage, study_name)
    row = choose(study, allow_infeasible=allow_infeasible, trial=trial_number)
    record = export_record(study, row, url, server_binary)
    if install_dir:
        record, server_binary = install(record, install_dir, server_binary), None
    output.write_text(render(record, fmt, server_binary, user))
    click.echo(f"exported trial {row['number']} of study {study_name!r} to {output} ({fmt}): "
               + (f"trial {trial_number} as asked" if trial_number is not None else why_chosen(study, row)))
    click.echo("\n".join(budget_lines(record, "")))
    click.echo(record["llama_server"])


@main.command()
@click.option("--study", "study_name", required=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="JSON file to write.")
@storage_option
def table(study_name: str, output: Path, storage: str | None) -> None:
    """Write every trial of the study, with its figures, as a JSON table (for replays and notebooks)."""
    from sweep.results.table import make_table, save_table

    study, url = _open_study(storage, study_name)
    data = make_table(study, url, command=["sweep", *sys.argv[1:]])
    save_table(data, output)
    meta = data["meta"]
    click.echo(f"wrote {meta['n_rows']} trials ({meta['n_configs']} configurations) of study {study_name!r} to {output}")


@main.command()
@click.option("--study", "study_name", required=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("report.html"), show_default=True)
@storage_option
def report(study_name: str, output: Path, storage: str | None) -> None:
    """Write a self-contained HTML report with the front, importances and timelines."""
    from sweep.results.report import write_report
    study, url = _open_study(storage, study_name)
    click.echo(f"report written to {write_report(study, url, output)}")


@main.command()
@click.argument("trial_number", type=int)
@click.option("--study", "study_name", required=True)
@click.option("--png", type=click.Path(path_type=Path), default=None, help="Also draw the timeline into this PNG.")
@storage_option
def show(trial_number: int, study_name: str, png: Path | None, storage: str | None) -> None:
    """Print one trial's figures and draw its CPU timeline."""
    from sweep.measure.metrics import METRICS
    from sweep.results.display import config_summary, figures_table
    from sweep.results.front import trial_by_number, trial_series
    from sweep.results.timeline import ascii_timeline, png_timeline

    study, url = _open_study(storage, study_name)
    t = trial_by_number(study, trial_number)
    click.echo(f"trial {t.number} ({t.state.name}): {config_summary(t.user_attrs.get('config'))}")
    owner = t.user_attrs.get("owner")
    if owner:
        click.echo(f"measured on {owner['host']} by pid {owner['pid']}"
                   + (" WITHOUT the measurement lock" if t.user_attrs.get("measured_without_lock") else ""))
    if t.user_attrs.get("fail_reason"):
        click.echo(f"failed: {t.user_attrs['fail_reason']}: {t.user_attrs.get('fail_detail', '')}")
    click.echo(figures_table({k: v for k, v in t.user_attrs.items() if k in METRICS}))
    if t.user_attrs.get("machine_busy_active"):
        click.echo(f"WARNING: measured under others' load: {t.user_attrs.get('other_cpu_active_pct', 0):.0f}% of the "
                   "machine was someone else's while the model answered")
    stored = trial_series(study, t.number, url)
    if not stored or not stored["series"].get("t"):
        click.echo("(no time series stored for this trial)")
        return
    budgets = StudyMeta.of(study).budgets
    click.echo("")
    click.echo(ascii_timeline(stored["series"], budgets))
    if png:
        png_timeline(stored["series"], budgets, png, f"study {study_name}, trial {t.number}")
        click.echo(f"timeline written to {png}")


@main.command()
@click.argument("config_file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--tasks", "tasks_file", type=click.Path(path_type=Path), default=None)
@click.option("--prompts", type=click.IntRange(min=1), default=None, help="Override the number of prompts.")
@click.option("--idle", "idle_seconds", type=click.FloatRange(min=0), default=None, help="Override the idle window (s).")
@lock_option
def trial(config_file: Path, as_json: bool, tasks_file: Path | None, prompts: int | None, idle_seconds: float | None,
          no_lock: bool) -> None:
    """Run one configuration (a trial config or an exported file) outside any study."""
    from dataclasses import replace

    from sweep.correctness.tasks import load_tasks, stratified_subset
    from sweep.results.display import figures_table
    from sweep.study.space import load_trial
    from sweep.trial.runner import run_trial

    config, settings = load_trial(config_file)
    settings = replace(settings, prompts=prompts or settings.prompts,
                       idle_seconds=settings.idle_seconds if idle_seconds is None else idle_seconds)
    outcome = run_trial(config, settings, stratified_subset(load_tasks(tasks_file), settings.prompts),
                        lock=not no_lock, on_wait=lambda line: click.echo(line, err=True))
    if as_json:
        click.echo(json.dumps({"ok": outcome.ok, "reason": outcome.reason, "detail": outcome.detail,
                               "figures": outcome.figures, "by_kind": outcome.by_kind}, indent=2))
    else:
        click.echo(figures_table(outcome.figures))
    if not outcome.ok:
        raise WorkFailed(f"trial failed: {outcome.reason}: {outcome.detail[:300]}")


@main.command()
@click.argument("config_file", type=click.Path(path_type=Path))
@click.option("--budget", "budget_opts", multiple=True, metavar="NAME=VALUE",
              help="An open-load budget (response_p95_s=2.5, cpu_mean_share_pct=35, ...); repeatable. Default: "
                   "the file's budgets, each as its open-load figure.")
@click.option("--arrival", type=click.Choice(["poisson", "constant"]), default=None,
              help="The arrival process [the file's, else poisson].")
@click.option("--seconds", "arrival_seconds", type=click.FloatRange(min=5), default=None,
              help="Length of each rate's open-loop phase [the file's, else 60].")
@click.option("--low", type=click.FloatRange(min=0.01), default=1.0, show_default=True, help="First rate (events/min).")
@click.option("--high", type=click.FloatRange(min=0.01), default=600.0, show_default=True, help="Highest rate tried.")
@click.option("--steps", type=click.IntRange(min=0, max=10), default=4, show_default=True, help="Bisection steps.")
@click.option("--tasks", "tasks_file", type=click.Path(path_type=Path), default=None)
@click.option("--png", type=click.Path(path_type=Path), default=None, help="Draw the capacity curve here.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@lock_option
def capacity(config_file: Path, budget_opts: tuple[str, ...], arrival: str | None, arrival_seconds: float | None,
             low: float, high: float, steps: int, tasks_file: Path | None, png: Path | None, as_json: bool,
             no_lock: bool) -> None:
    """The highest arrival rate at which a configuration's budgets hold under open load."""
    from dataclasses import replace

    import yaml

    from sweep.capacity import find_capacity, open_budgets, png_curve
    from sweep.correctness.tasks import load_tasks, stratified_subset
    from sweep.results.display import capacity_line, capacity_step_line
    from sweep.study.space import load_trial

    config, settings = load_trial(config_file)
    budgets = open_budgets((yaml.safe_load(config_file.read_text()) or {}).get("budgets") or {})
    budgets.update(_budget_options(budget_opts))
    if not budgets:
        raise SweepError(f"{config_file}: no budget to judge a rate by: give --budget NAME=VALUE "
                         "(for example response_p95_s=2.5)")
    if low > high:
        raise SweepError(f"--low {low:g} is above --high {high:g}")
    settings = replace(settings, arrival=arrival or (settings.arrival if settings.arrival != "closed" else "poisson"),
                       arrival_seconds=arrival_seconds or settings.arrival_seconds)
    click.echo("budgets: " + ", ".join(f"{k} {'<=' if 'max' in b else '>='} {b.get('max', b.get('min')):g}"
                                       for k, b in budgets.items()) + "; and not saturated", err=as_json)
    result = find_capacity(config, settings, stratified_subset(load_tasks(tasks_file), settings.prompts), budgets,
                           low, high, steps, on_step=lambda st: click.echo(capacity_step_line(st), err=as_json),
                           lock=not no_lock, on_wait=lambda line: click.echo(line, err=True))
    if as_json:
        click.echo(json.dumps({"budgets": budgets, "capacity_per_min": result.best.rate_per_min if result.best else None,
                               "steps": [{"rate_per_min": s.rate_per_min, "holds": s.holds, "broken": s.broken,
                                          "ok": s.outcome.ok, "figures": s.outcome.figures} for s in result.steps]},
                              indent=2))
    else:
        click.echo(capacity_line(result, low))
    if png:
        png_curve(result, png, f"{config_file.name}: capacity under {settings.arrival} arrivals")
        click.echo(f"capacity curve written to {png}", err=as_json)


def _budget_options(opts: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """``--budget NAME=VALUE`` as budgets: a bound above for a figure to minimise, below for one to maximise."""
    from sweep.measure.metrics import METRICS
    from sweep.measure.open_load import FIGURES

    out = {}
    for opt in opts:
        name, sep, value = opt.partition("=")
        if not sep or name not in FIGURES:
            raise SweepError(f"--budget {opt}: expected NAME=VALUE with NAME an open-load figure "
                             f"({', '.join(FIGURES)})")
        try:
            bound = float(value)
        except ValueError:
            raise SweepError(f"--budget {opt}: {value!r} is not a number") from None
        out[name] = {"max" if METRICS[name].direction == "minimize" else "min": bound}
    return out


@main.command()
@storage_option
def fleet(storage: str | None) -> None:
    """Every study in the database, by hardware class: trials done, meeting budgets, the pick."""
    from sweep.results.display import fleet_table
    from sweep.results.front import fleet_summary
    from sweep.study.storage import require_existing, safe_url, storage_url

    url = storage_url(storage)
    require_existing(url)
    classes = fleet_summary(url)
    if not classes:
        raise SweepError(f"no sweep study in {safe_url(url)}")
    click.echo(fleet_table(classes))


@main.group()
def db() -> None:
    """The study database itself."""


@db.command("upgrade")
@storage_option
def db_upgrade(storage: str | None) -> None:
    """Bring sweep's tables in the database up to this version's schema, and record what the spool
    holds for it (writes)."""
    from sweep.study.spool import replay_storage
    from sweep.study.storage import SCHEMA_VERSION, SeriesStore, open_optuna_storage, safe_url, storage_url

    url = storage_url(storage)
    open_optuna_storage(url)
    store = SeriesStore(url)
    click.echo(f"{safe_url(url)}: sweep schema version {store.version} (this sweep: {SCHEMA_VERSION})")
    replayed = replay_storage(url, store, on_wait=lambda line: click.echo(line, err=True))
    if replayed:
        click.echo(f"recorded {replayed} spooled measurement(s)")


@main.group()
def models() -> None:
    """List and derive models."""


@models.command("list")
@models_dir_option
def models_list(models_dir: str | None) -> None:
    """Show every model and quantization available."""
    from sweep.models.registry import Registry, hash_status, model_name_of
    from sweep.results.display import grid

    registry = Registry(models_dir)
    files = registry.files()
    body = [[n, q, m.source, m.chat_format or "(from GGUF)", f"{m.size_bytes / 1e6:.0f} MB", hash_status(m.path),
             str(m.path)] for (n, q), m in sorted(files.items())]
    body += [[model_name_of(path), "BROKEN", "", reason[:80], "", "", str(path)] for path, reason in registry.broken.items()]
    click.echo(grid(body, ["model", "quant", "source", "chat format", "size", "hash", "path"]))


@models.command("quantize")
@click.argument("name")
@click.option("--to", "to", required=True, help="Comma-separated quantizations, e.g. Q8_0,Q4_0.")
@models_dir_option
def models_quantize(name: str, to: str, models_dir: str | None) -> None:
    """Derive quantized variants of NAME with llama.cpp's quantize API."""
    from sweep.models.registry import Registry

    for m in Registry(models_dir).quantize(name, [q.strip() for q in to.split(",") if q.strip()]):
        click.echo(f"{m.name}:{m.quant}  {m.size_bytes / 1e6:.0f} MB  {m.path}")


@main.group()
def tasks() -> None:
    """Check task files."""


@tasks.command("check")
@click.argument("file", type=click.Path(path_type=Path))
def tasks_check(file: Path) -> None:
    """Validate a JSONL task file."""
    from collections import Counter

    from sweep.correctness.tasks import load_tasks

    loaded = load_tasks(file)
    kinds = Counter(t.kind for t in loaded)
    click.echo(f"{file}: {len(loaded)} tasks ok ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))})")


@tasks.command("import")
@click.argument("fmt", metavar="FORMAT", type=click.Choice(["cybermetric", "cti-mcq", "cti-ate", "cti-rcm"]))
@click.argument("file", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="The JSONL task file to write (whole, or not at all).")
@click.option("--sample", type=click.IntRange(min=1), default=None,
              help="Keep N items, with equal counts of each answer (letter, CWE) where the labels allow; "
                   "cti-ate's technique lists have no one label and are sampled uniformly.")
@click.option("--seed", type=int, default=0, show_default=True, help="The seed of --sample's draw.")
@click.option("--skip-bad", is_flag=True, help="Leave out a bad item, naming it on stderr, instead of refusing the "
                                               "file (a file that cannot be read as FORMAT is still refused).")
def tasks_import(fmt: str, file: Path, out: Path, sample: int | None, seed: int, skip_bad: bool) -> None:
    """Turn a published benchmark FILE into a task file. FORMAT is cybermetric (CyberMetric's JSON),
    or cti-mcq, cti-ate or cti-rcm (CTIBench's TSV files). A bad item gives its file and row, exit 2,
    and nothing is written."""
    from collections import Counter

    from sweep.correctness.importers import balanced_sample, import_tasks, write_tasks

    skipped: list[str] = []

    def skip(message: str) -> None:
        skipped.append(message)
        click.echo(f"skipped: {message}", err=True)

    loaded = import_tasks(fmt, file, skip if skip_bad else None)
    chosen = balanced_sample(loaded, sample, seed) if sample else loaded
    write_tasks(chosen, out)
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(Counter(t.kind for t in chosen).items()))
    notes = [f"{len(chosen)} of {len(loaded)} drawn with seed {seed}"] if sample else []
    notes += [f"{len(skipped)} bad item{'s' if len(skipped) > 1 else ''} left out"] if skipped else []
    click.echo(f"{out}: {len(chosen)} tasks from {file} ({kinds}){''.join(f'; {n}' for n in notes)}")


@tasks.command("baseline")
@click.argument("file", type=click.Path(path_type=Path), required=False)
def tasks_baseline(file: Path | None) -> None:
    """What a constant answer scores on FILE (default: the bundled set): the bar a model must clear."""
    from sweep.correctness.tasks import best_constants, load_tasks
    from sweep.results.display import grid
    from sweep.verify import mean_interval

    def cell(scores: list[float]) -> str:
        m = mean_interval(scores)
        return f"{m['mean']:.3f} [{m['ci'][0]:.2f}, {m['ci'][1]:.2f}]"

    best = best_constants(load_tasks(file))
    body = [[kind, str(len(scores)), repr(answer), cell(scores)] for kind, (answer, scores) in best.items()]
    every = [s for _, scores in best.values() for s in scores]
    body.append(["all", str(len(every)), "(each kind's best)", cell(every)])
    click.echo(grid(body, ["kind", "items", "best constant answer", "correctness (95% CI)"]))


@main.group()
def tools() -> None:
    """llama.cpp's own programs (llama-server, llama-bench), built from the bindings' llama.cpp."""


@tools.command("build")
@click.option("--jobs", "-j", default=2, show_default=True, type=click.IntRange(min=1), help="Parallel compile jobs.")
@click.option("--force", is_flag=True, help="Build again even if built.")
@lock_option
def tools_build(jobs: int, force: bool, no_lock: bool) -> None:
    """Compile llama-server and llama-bench from the llama.cpp vendored in the installed
    llama-cpp-python's sdist (cached per version; holds the measurement lock while compiling)."""
    from sweep.models.tools import build

    info = build(jobs=jobs, force=force, log=lambda line: click.echo(line, err=True), lock=not no_lock,
                 on_wait=lambda line: click.echo(line, err=True))
    click.echo(f"llama.cpp {info['llama_cpp_commit']} (llama-cpp-python {info['llama_cpp_python']}), "
               f"built in {info['build_seconds']:.0f} s")


@tools.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def tools_list(as_json: bool) -> None:
    """Show the built programs, their llama.cpp commit and build flags."""
    from sweep.models.tools import bindings_version, listing
    from sweep.results.display import grid

    found = listing()
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    if not any(t["installed"] for t in found):
        click.echo(f"nothing built for the installed llama-cpp-python {bindings_version()}: run `sweep tools build`")
    for t in found:
        body = [[p, t["versions"].get(p, "?"), path] for p, path in t["programs"].items()]
        click.echo(f"llama-cpp-python {t['llama_cpp_python']}{' (installed)' if t['installed'] else ''}: llama.cpp "
                   f"{t['llama_cpp_commit']}, built {t['built_at']} in {t['build_seconds']:.0f} s")
        click.echo(f"  flags: {' '.join(t['cmake_flags'])}")
        click.echo(grid(body, ["program", "version", "path"]))
