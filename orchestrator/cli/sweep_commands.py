"""`resnet-orch validate|submit|resume|status|list|logs|cancel|pull|report|ui`: the sweep commands.

Bad input (a sweep file, an unknown sweep id) prints one clear message and exits 2, with no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestrator.sweep.config import ConfigError, ModelConfig, SweepConfig, TrialConfig, load_sweep
from orchestrator.sweep.layout import (
    SweepNotFound,
    create_sweep,
    embedded_artifact_root,
    embedded_tracking_uri,
    list_sweep_ids,
    load_sweep_progress,
    load_sweep_record,
    resolve_sweep_id,
    save_progress,
    sweep_paths,
    trial_storage,
)
from orchestrator.sweep.state import SweepProgress, SweepRecord, SweepState, TrialState, save_model
from orchestrator.training.metric_names import BEST_METRIC, EPOCH, IMAGES_PER_S

# Ray reads its auth mode when it is imported: token auth stays on (Ray 2.60's default for clusters, brief).
os.environ.setdefault("RAY_AUTH_MODE", "token")
# MLflow prints run links to stdout when a run on a tracking server ends (`cancel` ends them): stdout is ours.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def _out() -> Console:
    # Built per call, so the terminal width (or COLUMNS) of this invocation applies.
    return Console()


def _err() -> Console:
    return Console(stderr=True)


USAGE_ERROR = 2


def _fail(message: str, code: int = USAGE_ERROR) -> typer.Exit:
    # Text, not markup: messages quote YAML paths like `grid.depth[1]` that rich would read as tags.
    _err().print(Text("error: ", style="red") + Text(message), highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _load(path: Path) -> SweepConfig:
    try:
        return load_sweep(path)
    except ConfigError as exc:
        raise _fail(str(exc)) from None


def _sweep_id(text: str | None) -> str:
    try:
        return resolve_sweep_id(text)
    except SweepNotFound as exc:
        raise _fail(str(exc)) from None


def _macs(trial: TrialConfig, cache: dict[str, int]) -> int:
    from models import get_model
    from models.summary import count_macs

    kwargs = trial.model.model_kwargs()
    key = json.dumps([trial.model.registry_name, kwargs, trial.recipe.image_size], sort_keys=True)
    if key not in cache:
        cache[key] = count_macs(get_model(trial.model.registry_name, **kwargs), trial.recipe.image_size)
    return cache[key]


# ---- validate ---------------------------------------------------------------------------------------------------


def validate(
    sweep_file: Path = typer.Argument(..., help="the sweep YAML"),
    as_json: bool = typer.Option(False, "--json", help="print the trials as one JSON object"),
) -> None:
    """Check a sweep file and print its expanded trials (nothing is submitted)."""
    config = _load(sweep_file)
    trials = config.expand(storage_root=trial_storage("<sweep id>", config))
    cache: dict[str, int] = {}
    described: list[dict[str, Any]] = [
        {"id": t.trial_id, "macs_per_image": _macs(t, cache), "config": t.model_dump(mode="json")} for t in trials
    ]
    if as_json:
        _out().print_json(json.dumps({"sweep": config.name, "trials": described}))
        return
    _out().print(f"{sweep_file}: valid; sweep [bold]{config.name}[/bold]: {len(trials)} trials")
    for item in described:
        _out().print(f"\n[bold]{item['id']}[/bold]  {item['macs_per_image'] / 1e9:.3f} GMACs per image")
        _out().print_json(json.dumps(item["config"]))


# ---- submit / resume --------------------------------------------------------------------------------------------


def _job_client(address: str) -> Any:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def _is_this_machine(url: str) -> bool:
    """Whether `url`'s host is this machine (by name or by one of its addresses)."""
    import socket
    from urllib.parse import urlparse

    import psutil

    host = urlparse(url).hostname or ""
    if host in ("localhost", socket.gethostname()):
        return True
    try:
        ip = socket.gethostbyname(host)
    except OSError:
        return False
    local_ips = {a.address for addrs in psutil.net_if_addrs().values() for a in addrs}
    return ip.startswith("127.") or ip in local_ips


def _started_here(url: str) -> bool:
    """Whether `url` is the dashboard of a Ray head this RESNET_ORCH_HOME started (`submit`'s own or the stack's).

    Only such a head runs this venv's Python and shares this home's sweep folder with the driver. Any other address
    is a cluster with files of its own, even one answering on 127.0.0.1: a `kubectl port-forward` or `ray dashboard`
    tunnel (docs/cluster.md), another home's stack. Judging by the host alone sent such sweeps a driver command line
    that does not exist on the cluster: the job failed at once and the sweep read INTERRUPTED.
    """
    from urllib.parse import urlparse

    from orchestrator.stack import local_stack as stack
    from orchestrator.stack.ray_head import running_head

    ours = []
    head = running_head()
    if head is not None:
        ours.append(head.dashboard_url)
    state, _ = stack.status()
    if state is not None and stack.RAY in state.services:
        ours.append(state.services[stack.RAY].url)
    port = urlparse(url).port
    return _is_this_machine(url) and any(urlparse(u).port == port and _is_this_machine(u) for u in ours)


def _cluster(address: str | None) -> tuple[str, bool]:
    """(dashboard URL, is_local): the given address, RAY_ADDRESS, or this home's local head (started if needed)."""
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if address:
        if "://" not in address:
            # Ray's own rule: an address without a scheme is a GCS address (HEAD:6379); ask it for the dashboard.
            from ray.dashboard.utils import get_address_for_submission_client

            try:
                address = get_address_for_submission_client(address)
            except Exception as exc:  # unreachable or not a Ray cluster: say so, no traceback
                raise _fail(
                    f"--address {address}: no Ray cluster answers there ({exc}); give the dashboard URL "
                    "http://HEAD:8265 or the GCS address HEAD:6379"
                ) from None
        return address, _started_here(address)
    from orchestrator.stack import local_stack as stack
    from orchestrator.stack.ray_head import RayHeadError, start_head

    state, health = stack.status()
    if state is not None and any(h.name == stack.RAY and h.healthy for h in health):
        return state.services[stack.RAY].url, True  # `resnet-orch up` runs one here: reuse its Ray head
    try:
        head = start_head()
    except RayHeadError as exc:
        raise _fail(str(exc), code=1) from None
    return head.dashboard_url, True


def _warn_unreachable_from_cluster(record: SweepRecord) -> None:
    """A driver on another cluster cannot use this machine's files: say which settings point at them."""
    if not record.storage.startswith("s3://"):
        _err().print(
            f"warning: storage {record.storage} is a path on the cluster's nodes; `status` here shows the driver "
            "job only (set `storage: s3://...` in the sweep to follow its trials from here)",
            highlight=False,
            soft_wrap=True,
        )
    if record.tracking_uri.startswith("sqlite:"):
        _err().print(
            f"warning: MLflow store {record.tracking_uri} is a file on this machine; the cluster's driver writes "
            "to its own copy (set MLFLOW_TRACKING_URI or `tracking.uri` to a server both reach)",
            highlight=False,
            soft_wrap=True,
        )


# AWS settings that name a profile or a file on this machine: on a remote cluster botocore would fail on them
# (ProfileNotFound, missing file) instead of using the nodes' own credentials (instance profile, IRSA).
_MACHINE_LOCAL_AWS = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
)


def driver_env(environ: Mapping[str, str], *, local: bool) -> dict[str, str]:
    """The variables the sweep driver (and, through the job's runtime_env, every trial worker) gets from here."""
    env = {
        k: v for k, v in environ.items() if k.startswith(("AWS_", "MLFLOW_", "RESNET_ORCH_")) or k == "RAY_AUTH_MODE"
    }
    if not local:
        # This machine's home and AWS profile files mean nothing on another cluster.
        for key in ("RESNET_ORCH_HOME", *_MACHINE_LOCAL_AWS):
            env.pop(key, None)
    return env


def _submit_driver(record: SweepRecord, *, resume: bool, address: str, local: bool) -> str:
    paths = sweep_paths(record.sweep_id)
    env = driver_env(os.environ, local=local)
    runtime_env: dict[str, Any] = {"env_vars": env}
    if local:
        # The head runs this venv's Python; the sweep folder is on this machine.
        env["RESNET_ORCH_HOME"] = str(paths.root.parents[1])
        entrypoint = f"{sys.executable} -m orchestrator.sweep.driver {paths.root}"
    else:
        # A remote cluster gets the sweep folder as the job's working dir (its image has the package).
        runtime_env["working_dir"] = str(paths.root)
        entrypoint = "python -m orchestrator.sweep.driver ."
        _warn_unreachable_from_cluster(record)
    if resume:
        entrypoint += " --resume"
        # No driver runs now, so this is the only writer: the sweep waits for its new driver, it is no longer the
        # CANCELLED/FAILED/INTERRUPTED it was (`--wait` would stop at once), and a remote driver gets the latest
        # progress in its working dir.
        progress = load_sweep_progress(record.sweep_id)
        progress.state = SweepState.PENDING
        progress.error = None
        save_progress(record, paths, progress)
    suffix = f"-resume-{int(time.time())}" if resume else ""
    job_id: str = _job_client(address).submit_job(
        entrypoint=entrypoint, runtime_env=runtime_env, submission_id=f"{record.sweep_id}{suffix}"
    )
    updated = record.model_copy(
        update={"job_id": job_id, "dashboard_url": address, "ray_address": address, "local": local}
    )
    save_model(paths.record, updated)
    return job_id


def _announce(record: SweepRecord, job_id: str, address: str) -> None:
    _out().print(f"sweep id: {record.sweep_id}", highlight=False, soft_wrap=True)
    _out().print(f"job: {job_id}", highlight=False)
    _out().print(f"dashboard: {address}", highlight=False)
    hint = "; browse it with `resnet-orch ui`" if record.tracking_uri == embedded_tracking_uri() else ""
    _out().print(
        f"mlflow: {record.tracking_uri} (experiment {record.experiment}{hint})", highlight=False, soft_wrap=True
    )


def submit(
    sweep_file: Path = typer.Argument(..., help="the sweep YAML"),
    address: str | None = typer.Option(None, "--address", help="Ray dashboard/Jobs address; default: a local head"),
    wait: bool = typer.Option(False, "--wait", help="follow the sweep until it ends"),
) -> None:
    """Queue a sweep's trials on a Ray cluster; prints the sweep id."""
    config = _load(sweep_file)
    url, local = _cluster(address)
    record = create_sweep(sweep_file, config, ray_address=url)
    job_id = _submit_driver(record, resume=False, address=url, local=local)
    _announce(record, job_id, url)
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
    state, _, _ = _current(record)
    if state in (SweepState.RUNNING, SweepState.PENDING):
        raise _fail(f"sweep {sweep_id} is {state}; `resnet-orch cancel {sweep_id}` first, or wait for it")
    if state == SweepState.SUCCEEDED:
        raise _fail(f"sweep {sweep_id} already succeeded; nothing to resume")
    # A sweep on another cluster resumes there unless told otherwise; a local one on this home's head.
    url, local = _cluster(address or (None if record.local else record.dashboard_url))
    job_id = _submit_driver(record, resume=True, address=url, local=local)
    _announce(record, job_id, url)
    if wait:
        raise typer.Exit(_follow(sweep_id))


def _job_status(record: SweepRecord) -> str | None:
    """The driver job's status, or None when the cluster is unreachable."""
    if record.job_id is None or record.dashboard_url is None:
        return None
    try:
        return str(_job_client(record.dashboard_url).get_job_status(record.job_id).value)
    except Exception:  # an unreachable or restarted cluster: the job is gone with it
        return None


_JOB_TO_SWEEP = {
    "PENDING": SweepState.PENDING,
    "RUNNING": SweepState.RUNNING,
    "SUCCEEDED": SweepState.SUCCEEDED,
    "FAILED": SweepState.FAILED,
    "STOPPED": SweepState.CANCELLED,
}


def _current(record: SweepRecord) -> tuple[SweepState, SweepProgress, str | None]:
    """(state, progress, driver job status): the recorded state, corrected when the driver is gone without having
    written a final state."""
    progress = load_sweep_progress(record.sweep_id)
    if progress.state.is_terminal:
        return progress.state, progress, None
    job = _job_status(record)
    if job in ("PENDING", "RUNNING"):
        return (SweepState.RUNNING if progress.state == SweepState.RUNNING else SweepState.PENDING), progress, job
    # The job ended (or is out of reach) after the progress above was read, maybe just after the driver wrote its
    # final state and exited: read again before calling the sweep interrupted.
    progress = load_sweep_progress(record.sweep_id)
    if progress.state.is_terminal:
        return progress.state, progress, job
    if job == "STOPPED":
        # Stopped from outside (`ray job stop`, or a `cancel` whose write did not reach the storage copy).
        return SweepState.CANCELLED, progress, job
    if progress.state == SweepState.PENDING:
        if record.job_id is None:
            return SweepState.PENDING, progress, job  # never submitted
        if not record.local and job is not None:
            # No word from the remote driver reached this machine (its storage is not readable here, or it never
            # started): the job's own end is all we know.
            return _JOB_TO_SWEEP[job], progress, job
    return SweepState.INTERRUPTED, progress, job


# How long `--wait` keeps following a sweep whose cluster does not answer (a dashboard slow on a busy head, a
# dropped tunnel) before it calls the sweep interrupted.
_UNREACHABLE_GRACE_S = 60.0


def _follow(sweep_id: str) -> int:
    from rich.live import Live

    record = load_sweep_record(sweep_id)
    unreachable_since: float | None = None
    with Live(console=_out(), refresh_per_second=1) as live:
        while True:
            state, progress, job = _current(record)
            live.update(_status_table(sweep_id, state, progress))
            if state.is_terminal:
                break
            if state == SweepState.INTERRUPTED:
                if job is not None:
                    break  # the job ended without the driver's final word: it died
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since > _UNREACHABLE_GRACE_S:
                    break
            else:
                unreachable_since = None
            time.sleep(2)
    if state != SweepState.SUCCEEDED:
        reason = f": {progress.error}" if progress.error else ""
        _err().print(
            f"sweep {sweep_id} {state}{reason}; `resnet-orch logs {sweep_id}` shows the driver's log",
            highlight=False,
            soft_wrap=True,
        )
    return 0 if state == SweepState.SUCCEEDED else 1


# ---- status / list / logs / cancel ------------------------------------------------------------------------------


def _fmt(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def _status_table(sweep_id: str, state: SweepState, progress: SweepProgress) -> Table:
    table = Table(title=f"{sweep_id}: {state}")
    table.add_column("trial", no_wrap=True)
    for column in ("model", "residual", "shortcut", "state", "attempt", "epoch", "best top-1 err %", "images/s"):
        table.add_column(column)
    for trial in progress.trials:
        model = trial.config["model"]
        metrics = trial.metrics
        table.add_row(
            trial.id,
            ModelConfig.model_validate(model).registry_name,
            "yes" if model["residual"] else "no",
            model["shortcut"],
            trial.state.value,
            str(trial.attempts),
            _fmt(metrics.get(EPOCH), digits=0),
            _fmt(metrics.get(BEST_METRIC), 100.0),
            _fmt(metrics.get(IMAGES_PER_S), digits=1),
        )
    return table


def status(
    sweep: str | None = typer.Argument(None, help="sweep id (or a unique prefix); default: the newest"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Show a sweep's trials: state, attempts, epoch, top-1 error, throughput."""
    sweep_id = _sweep_id(sweep)
    state, progress, _ = _current(load_sweep_record(sweep_id))
    if as_json:
        payload = progress.as_json()
        payload["state"] = state.value
        typer.echo(json.dumps(payload))
        return
    _out().print(_status_table(sweep_id, state, progress))
    if progress.error:
        _err().print(Text(f"sweep error: {progress.error}", style="red"), soft_wrap=True)


def list_sweeps() -> None:
    """List the sweeps under RESNET_ORCH_HOME."""
    table = Table(title="sweeps")
    table.add_column("sweep", no_wrap=True)
    for column in ("state", "trials done", "created"):
        table.add_column(column)
    for sweep_id in list_sweep_ids():
        record = load_sweep_record(sweep_id)
        state, progress, _ = _current(record)
        done = sum(t.state == TrialState.SUCCEEDED for t in progress.trials)
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created_at))
        table.add_row(sweep_id, state.value, f"{done}/{len(progress.trials)}", created)
    _out().print(table)


def logs(
    sweep: str = typer.Argument(..., help="sweep id (or a unique prefix)"),
    trial: str | None = typer.Argument(None, help="a trial id: its error and Tune log instead of the driver's"),
) -> None:
    """Print the driver's log (the Ray job log), or one trial's."""
    sweep_id = _sweep_id(sweep)
    text = _driver_log(load_sweep_record(sweep_id))
    if trial is None:
        typer.echo(text or "(no log yet)")
        return
    progress = load_sweep_progress(sweep_id)
    try:
        status = progress.trial(trial)
    except KeyError as exc:
        raise _fail(f"{exc.args[0]}; trials: {', '.join(t.id for t in progress.trials)}") from None
    typer.echo(f"{status.id}: {status.state} after {status.attempts} attempt(s)")
    for line in (text or "").splitlines():
        if status.id in line:
            typer.echo(line)
    if status.error:
        typer.echo(status.error)


def _driver_log(record: SweepRecord) -> str | None:
    """The driver's log: the Ray job's, else the copy a driver on this machine kept in the sweep folder."""
    if record.job_id and record.dashboard_url:
        try:
            return str(_job_client(record.dashboard_url).get_job_logs(record.job_id))
        except Exception:  # the cluster is gone: fall back to the copy the driver kept
            pass
    path = sweep_paths(record.sweep_id).driver_log
    return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else None


def cancel(sweep: str = typer.Argument(..., help="sweep id (or a unique prefix)")) -> None:
    """Stop a sweep: its driver job and all its running trials."""
    sweep_id = _sweep_id(sweep)
    record = load_sweep_record(sweep_id)
    if record.job_id and record.dashboard_url:
        client = _job_client(record.dashboard_url)
        try:
            client.stop_job(record.job_id)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and client.get_job_status(record.job_id).value in ("PENDING", "RUNNING"):
                time.sleep(1)
        except Exception as exc:  # the cluster is gone: nothing runs any more, record the cancel
            _err().print(f"warning: could not reach the Ray job ({exc}); marking the sweep cancelled")
    # The driver is stopped: this is now the only writer of the sweep's progress (here and in its storage).
    progress = load_sweep_progress(sweep_id)
    stopped = [t.mlflow_run_id for t in progress.trials if not t.state.is_terminal and t.mlflow_run_id]
    progress.cancel_unfinished()
    save_progress(record, sweep_paths(sweep_id), progress)
    if progress.parent_run_id is not None:
        stopped.append(progress.parent_run_id)
    if stopped:
        from orchestrator.sweep.tracking import mark_killed

        try:
            mark_killed(record.tracking_uri, stopped)
        except Exception as exc:  # an unreachable tracking server must not undo the cancel
            _err().print(f"warning: could not mark the MLflow runs killed ({exc})")
    _out().print(f"sweep {sweep_id}: CANCELLED")


# ---- models and reports ----------------------------------------------------------------------------------------


def pull(
    model: str = typer.Argument(..., help="NAME@ALIAS or NAME/VERSION, e.g. quickstart@champion"),
    output: Path = typer.Option(..., "-o", "--output", help="the TorchScript file to write"),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="default: the embedded store"),
) -> None:
    """Download a registered model as TorchScript (`torch.jit.load(path)`; no MLflow or resnet-orch needed)."""
    from mlflow.exceptions import MlflowException

    from orchestrator.sweep.tracking import save_torchscript

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or embedded_tracking_uri()
    try:
        save_torchscript(uri, model, output)
    except MlflowException as exc:
        raise _fail(f"{model}: {exc.message}") from None
    _out().print(f"{model} -> {output}", highlight=False)


def report(
    sweep: str = typer.Argument(..., help="sweep id (or a unique prefix)"),
    output: Path = typer.Option(Path("."), "-o", "--output", help="folder for report.md and report.png"),
) -> None:
    """Our top-1/top-5 errors per trial next to the paper's Tables 2-4."""
    from orchestrator.sweep.report import markdown, plot_comparison, rows_from_trials

    sweep_id = _sweep_id(sweep)
    progress = load_sweep_progress(sweep_id)
    rows = rows_from_trials(progress.as_json()["trials"])
    output.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, f"Sweep {sweep_id}")
    (output / "report.md").write_text(text, encoding="utf-8")
    plot_comparison(rows, output / "report.png", sweep_id)
    typer.echo(text)
    _out().print(f"wrote {output / 'report.md'} and {output / 'report.png'}")


def ui(
    port: int = typer.Option(5000, "--port"),
    host: str = typer.Option("127.0.0.1", "--host"),
) -> None:
    """Open the embedded MLflow store in the MLflow UI (blocks until Ctrl-C)."""
    root = embedded_artifact_root()
    root.mkdir(parents=True, exist_ok=True)
    mlflow_exe = Path(sys.executable).with_name("mlflow")
    cmd = [
        str(mlflow_exe),
        "ui",
        "--backend-store-uri",
        embedded_tracking_uri(),
        "--default-artifact-root",
        root.as_uri(),
        "--host",
        host,
        "--port",
        str(port),
    ]
    _out().print(f"MLflow UI on http://{host}:{port} (Ctrl-C to stop)")
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
