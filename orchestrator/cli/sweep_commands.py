"""`resnet-orch validate|submit|resume|status|list|logs|cancel|pull|report|ui`: the sweep commands.

Each parses its arguments, calls the sweep library (`orchestrator.sweep`: layout, jobs, tracking, report) and
prints. Bad input (a sweep file, an unknown sweep id) prints one clear message and exits 2, with no traceback.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from orchestrator.cli.errors import FAILED, err, fail, out, warn
from orchestrator.sweep import jobs
from orchestrator.sweep.config import ConfigError, ModelConfig, SweepConfig, load_sweep
from orchestrator.sweep.layout import (
    SweepNotFound,
    create_sweep,
    embedded_tracking_uri,
    list_sweep_ids,
    load_sweep_progress,
    load_sweep_record,
    orch_home,
    preview,
    resolve_sweep_id,
)
from orchestrator.sweep.state import SweepProgress, SweepRecord, SweepState, TrialState
from orchestrator.training.metric_names import BEST_METRIC, EPOCH, IMAGES_PER_S, PREEMPTIONS, WORKERS


def _load(path: Path) -> SweepConfig:
    try:
        return load_sweep(path)
    except ConfigError as exc:
        raise fail(str(exc)) from None


def _check_data(sweep_file: Path, config: SweepConfig, *, on_this_machine: bool = True) -> None:
    """Refuse (exit 2) a sweep whose shard sets are incomplete or do not fit its models; warn about those not
    reachable from here."""
    from orchestrator.sweep.data_check import DataError, check_data

    try:
        warnings = check_data(config, on_this_machine=on_this_machine)
    except DataError as exc:
        raise fail("\n".join(f"{sweep_file}: {line}" for line in str(exc).splitlines())) from None
    for warning in warnings:
        warn(f"{sweep_file}: {warning}")


def _sweep_id(text: str | None) -> str:
    try:
        return resolve_sweep_id(text)
    except SweepNotFound as exc:
        raise fail(str(exc)) from None


# ---- validate ---------------------------------------------------------------------------------------------------


def validate(
    sweep_file: Path = typer.Argument(..., help="the sweep YAML"),
    as_json: bool = typer.Option(False, "--json", help="print the trials as one JSON object"),
) -> None:
    """Check a sweep file and its data, and print its expanded trials (nothing is submitted)."""
    from orchestrator.sweep.estimate import add_estimates

    config = _load(sweep_file)
    _check_data(sweep_file, config)
    described = add_estimates(config, preview(config), orch_home())
    if as_json:
        out().print_json(json.dumps({"sweep": config.name, "trials": described}))
        return
    out().print(f"{sweep_file}: valid; sweep [bold]{config.name}[/bold]: {len(described)} trials")
    for item in described:
        out().print(f"\n[bold]{item['id']}[/bold]  {item['macs_per_image'] / 1e9:.3f} GMACs per image")
        for line in item["estimate"]:
            out().print(line, highlight=False, soft_wrap=True)
        out().print_json(json.dumps(item["config"]))


# ---- submit / resume --------------------------------------------------------------------------------------------


def _cluster(address: str | None) -> tuple[str, bool]:
    from orchestrator.stack.local_stack import StackError

    try:
        return jobs.resolve_cluster(address)
    except jobs.AddressError as exc:
        raise fail(str(exc)) from None
    except StackError as exc:
        raise fail(str(exc), code=FAILED) from None


def _submit(record: SweepRecord, *, resume: bool, address: str, local: bool) -> None:
    if not local:
        for warning in jobs.remote_warnings(record):
            warn(warning)
    try:
        job_id = jobs.submit_driver(record, resume=resume, address=address, local=local)
    except jobs.SubmitError as exc:
        raise fail(str(exc), code=FAILED) from None
    out().print(f"sweep id: {record.sweep_id}", highlight=False, soft_wrap=True)
    out().print(f"job: {job_id}", highlight=False)
    out().print(f"dashboard: {address}", highlight=False)
    hint = "; browse it with `resnet-orch ui`" if record.tracking_uri == embedded_tracking_uri() else ""
    out().print(
        f"mlflow: {record.tracking_uri} (experiment {record.experiment}{hint})", highlight=False, soft_wrap=True
    )
    # The driver decides on the cluster whether the sweep can ever run there (trial shape, storage): wait for it.
    refused = jobs.wait_admitted(load_sweep_record(record.sweep_id))
    if refused is not None:
        raise fail(f"sweep {record.sweep_id} refused by the cluster: {refused}")


def submit(
    sweep_file: Path = typer.Argument(..., help="the sweep YAML"),
    address: str | None = typer.Option(None, "--address", help="Ray dashboard/Jobs address; default: a local head"),
    wait: bool = typer.Option(False, "--wait", help="follow the sweep until it ends"),
) -> None:
    """Queue a sweep's trials on a Ray cluster; prints the sweep id."""
    config = _load(sweep_file)
    # Paths of a remote cluster's nodes may not exist here: only a sweep for this machine's Ray must find them here.
    remote = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    _check_data(sweep_file, config, on_this_machine=not remote)
    url, local = _cluster(address)
    try:
        record = create_sweep(sweep_file, config, ray_address=url)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    _submit(record, resume=False, address=url, local=local)
    if wait:
        raise typer.Exit(_follow(record.sweep_id))


def resume(
    sweep: str = typer.Argument(..., help="sweep id (or a unique prefix)"),
    address: str | None = typer.Option(
        None, "--address", help="Ray address; default: the sweep's own cluster, or the local head"
    ),
    wait: bool = typer.Option(False, "--wait", help="follow the sweep until it ends"),
) -> None:
    """Resume a sweep whose driver died: finished trials are kept, the others continue from their checkpoints."""
    sweep_id = _sweep_id(sweep)
    record = load_sweep_record(sweep_id)
    try:
        jobs.check_resumable(record)
    except jobs.NotResumable as exc:
        raise fail(str(exc)) from None
    url, local = _cluster(jobs.resume_address(record, address))
    _submit(record, resume=True, address=url, local=local)
    if wait:
        raise typer.Exit(_follow(sweep_id))


def _follow(sweep_id: str) -> int:
    from rich.live import Live

    with Live(console=out(), refresh_per_second=1) as live:
        state, progress = jobs.watch(sweep_id, lambda s, p: live.update(_status_table(sweep_id, s, p)))
    if state != SweepState.SUCCEEDED:
        reason = f": {progress.error}" if progress.error else ""
        err().print(
            f"sweep {sweep_id} {state}{reason}; `resnet-orch logs {sweep_id}` shows the driver's log",
            highlight=False,
            soft_wrap=True,
        )
    return 0 if state == SweepState.SUCCEEDED else 1


# ---- status / list / logs / cancel ------------------------------------------------------------------------------


def _fmt(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def _status_table(sweep_id: str, state: SweepState, progress: SweepProgress) -> Table:
    caption = f"champion: {progress.champion.describe()}" if progress.champion is not None else None
    table = Table(title=f"{sweep_id}: {state}", caption=caption)
    table.add_column("trial", no_wrap=True)
    for column in ("model", "residual", "shortcut"):
        table.add_column(column)
    # The state is what a user scans for: never cut to "STO…" on a narrow terminal (the other columns give way).
    table.add_column("state", min_width=len(TrialState.SUCCEEDED), overflow="fold")
    # Live workers (`2/2`) and preemptions once a trial's workers reported them: a sweep that has not started yet
    # keeps its table narrow.
    spot = any(WORKERS in trial.metrics or PREEMPTIONS in trial.metrics for trial in progress.trials)
    for column in ("attempt", *(("workers", "preemptions") if spot else ()), "epoch", "best top-1 err %", "images/s"):
        table.add_column(column)
    for trial in progress.trials:
        model = trial.config["model"]
        metrics = trial.metrics
        live = (trial.workers, _fmt(metrics.get(PREEMPTIONS), digits=0))
        table.add_row(
            trial.id,
            ModelConfig.model_validate(model).registry_name,
            "yes" if model["residual"] else "no",
            model["shortcut"],
            trial.state.value + (f" ({trial.waiting})" if trial.waiting else ""),
            str(trial.attempts),
            *(live if spot else ()),
            _fmt(metrics.get(EPOCH), digits=0),
            _fmt(metrics.get(BEST_METRIC), 100.0),
            _fmt(metrics.get(IMAGES_PER_S), digits=1),
        )
    return table


def _reason_lines(progress: SweepProgress) -> list[Text]:
    """Why a trial failed, in its own words (the restart policy's verdict, the error): one line per trial that did,
    under the table, where a long sentence stays readable at any terminal width."""
    return [Text(f"{trial.id}: {trial.reason}") for trial in progress.trials if trial.reason]


def status(
    sweep: str | None = typer.Argument(None, help="sweep id (or a unique prefix); default: the newest"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Show a sweep's trials: state, attempts, epoch, top-1 error, throughput."""
    sweep_id = _sweep_id(sweep)
    state, progress, _ = jobs.current_state(load_sweep_record(sweep_id))
    if as_json:
        payload = progress.as_json()
        payload["state"] = state.value
        typer.echo(json.dumps(payload))
        return
    out().print(_status_table(sweep_id, state, progress))
    for line in _reason_lines(progress):
        out().print(line, soft_wrap=True)
    if state == SweepState.BUDGET_EXHAUSTED:
        # Not an error: the sweep did what its `budget:` allowed (the line names the limit and what was spent).
        out().print(Text(f"{progress.error}; unfinished trials stopped or never started", style="yellow"))
    elif progress.error:
        err().print(Text(f"sweep error: {progress.error}", style="red"), soft_wrap=True)


def list_sweeps() -> None:
    """List the sweeps under RESNET_ORCH_HOME."""
    table = Table(title="sweeps")
    table.add_column("sweep", no_wrap=True)
    for column in ("state", "trials done", "created"):
        table.add_column(column)
    for sweep_id in list_sweep_ids():
        record = load_sweep_record(sweep_id)
        state, progress, _ = jobs.current_state(record)
        done = sum(t.state.is_final for t in progress.trials)  # finished, or stopped early by the scheduler
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created_at))
        table.add_row(sweep_id, state.value, f"{done}/{len(progress.trials)}", created)
    out().print(table)


def logs(
    sweep: str = typer.Argument(..., help="sweep id (or a unique prefix)"),
    trial: str | None = typer.Argument(None, help="a trial id: its error and Tune log instead of the driver's"),
) -> None:
    """Print the driver's log (the Ray job log), or one trial's."""
    sweep_id = _sweep_id(sweep)
    text = jobs.driver_log(load_sweep_record(sweep_id))
    if trial is None:
        typer.echo(text or "(no log yet)")
        return
    progress = load_sweep_progress(sweep_id)
    try:
        status = progress.trial(trial)
    except KeyError as exc:
        raise fail(f"{exc.args[0]}; trials: {', '.join(t.id for t in progress.trials)}") from None
    typer.echo(f"{status.id}: {status.state} after {status.attempts} attempt(s)")
    for line in (text or "").splitlines():
        if status.id in line:
            typer.echo(line)
    if status.error:
        typer.echo(status.error)


def cancel(sweep: str = typer.Argument(..., help="sweep id (or a unique prefix)")) -> None:
    """Stop a sweep: its driver job and all its running trials."""
    sweep_id = _sweep_id(sweep)
    for warning in jobs.cancel(sweep_id):
        warn(warning)
    out().print(f"sweep {sweep_id}: CANCELLED")


# ---- models and reports ----------------------------------------------------------------------------------------


PULL_FORMATS = ("export", "torchscript", "state-dict")  # `sweep.model_files.PullFormat`, without importing it


def pull(
    model: str = typer.Argument(..., help="NAME@ALIAS or NAME/VERSION, e.g. quickstart@champion"),
    output: Path = typer.Option(..., "-o", "--output", help="the file to write, e.g. model.pt2"),
    fmt: str = typer.Option(
        "export",
        "--format",
        help="export: a torch.export program (torch.export.load); torchscript: torch.jit.load; "
        "state-dict: the weights with the model's registry name and kwargs (torch.load, weights_only=True)",
    ),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="default: the embedded store"),
) -> None:
    """Download a registered model as one file that needs neither MLflow nor resnet-orch to load."""
    if fmt not in PULL_FORMATS:
        raise fail(f"--format {fmt!r}: choose one of {', '.join(PULL_FORMATS)}")
    from mlflow.exceptions import MlflowException

    from orchestrator.sweep.layout import tracking_uri as resolved_tracking_uri
    from orchestrator.sweep.model_files import write_model_file

    try:
        write_model_file(resolved_tracking_uri(tracking_uri), model, output, fmt)  # type: ignore[arg-type]
    except MlflowException as exc:
        raise fail(f"{model}: {exc.message}") from None
    out().print(f"{model} -> {output} ({fmt})", highlight=False, soft_wrap=True)


def report(
    sweep: str = typer.Argument(..., help="sweep id (or a unique prefix)"),
    output: Path = typer.Option(Path("."), "-o", "--output", help="folder for report.md, report.png, curves.png"),
) -> None:
    """Our top-1/top-5 errors per trial next to the paper's Tables 2-4 and 6, each with how it was measured; the
    training curves (Figure 4 style) from MLflow."""
    from mlflow.exceptions import MlflowException

    from orchestrator.sweep.report import write_report
    from orchestrator.sweep.tracking import sweep_curves

    sweep_id = _sweep_id(sweep)
    progress = load_sweep_progress(sweep_id)
    record = load_sweep_record(sweep_id)
    run_ids = {t.id: t.mlflow_run_id for t in progress.trials if t.mlflow_run_id is not None}
    try:
        curves = sweep_curves(record.tracking_uri, run_ids)
    except (MlflowException, OSError) as exc:
        warn(f"no curves: the MLflow store at {record.tracking_uri} did not answer ({type(exc).__name__}: {exc})")
        curves = {}
    champion = progress.champion.describe() if progress.champion is not None else None
    text, md, png, curves_png = write_report(progress.as_json()["trials"], sweep_id, output, curves, champion)
    typer.echo(text)
    written = [str(path) for path in (md, png, curves_png) if path is not None]
    out().print(f"wrote {', '.join(written)}", highlight=False)


def ui(
    port: int = typer.Option(5000, "--port"),
    host: str = typer.Option("127.0.0.1", "--host"),
) -> None:
    """Open the embedded MLflow store in the MLflow UI (blocks until Ctrl-C)."""
    import subprocess

    from orchestrator.stack.mlflow_server import ui_command
    from orchestrator.sweep.layout import embedded_artifact_root

    root = embedded_artifact_root()
    root.mkdir(parents=True, exist_ok=True)
    cmd = ui_command(backend_store_uri=embedded_tracking_uri(), artifact_root=root, host=host, port=port)
    out().print(f"MLflow UI on http://{host}:{port} (Ctrl-C to stop)")
    raise typer.Exit(subprocess.call(cmd))


def register(app: typer.Typer) -> None:
    """Mount the sweep commands on the top-level `resnet-orch` app."""
    app.command("validate")(validate)
    app.command("submit")(submit)
    app.command("resume")(resume)
    app.command("status")(status)
    app.command("list")(list_sweeps)
    app.command("logs")(logs)
    app.command("cancel")(cancel)
    app.command("pull")(pull)
    app.command("report")(report)
    app.command("ui")(ui)
