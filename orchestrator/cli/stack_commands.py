"""`resnet-orch up|down` and `resnet-orch stack status|env`: the local stack (Ray, MLflow, S3) on this machine.

The stack's record is the one record of what runs for this home: the Ray head that `submit` starts on the embedded
default is listed here and stopped by `down` too.

Exit codes: 0 done / all healthy, 1 a service failed or is unhealthy, 2 bad input (no traceback).
"""

from __future__ import annotations

import shlex

import typer
from rich.table import Table

from orchestrator.cli.errors import FAILED, USAGE_ERROR, fail, out, warn
from orchestrator.stack import local_stack as stack
from orchestrator.stack.ray_head import is_loopback

stack_app = typer.Typer(
    name="stack",
    help="Inspect the local stack started by `resnet-orch up` (or the Ray head started by `submit`).",
    no_args_is_help=True,
)


def _print_env(state: stack.StackState) -> None:
    for key, value in state.client_env().items():
        if key.startswith("AWS_SECRET"):
            continue  # a secret stays in its 0600 file; `resnet-orch stack env` prints it for `eval`
        out().print(f"  {key}={value}", highlight=False, soft_wrap=True)


def _running_stack() -> tuple[stack.StackState, list[stack.Health]]:
    """The recorded stack and its health; exits 2 on an unreadable state file, 1 when no stack was started."""
    try:
        state, health = stack.status()
    except stack.StackError as e:
        raise fail(str(e), USAGE_ERROR) from None
    if state is None:
        raise fail("no local stack is running; start one with `resnet-orch up`", FAILED)
    return state, health


def _services_table(state: stack.StackState, health: list[stack.Health], started: list[str] | None = None) -> Table:
    table = Table(title="resnet-orch local stack")
    table.add_column("service")
    table.add_column("url")
    table.add_column("pid", justify="right")
    table.add_column("state")
    table.add_column("detail")
    for item in health:
        record = state.services.get(item.name)
        if started is None:
            verdict = "[green]healthy[/green]" if item.healthy else "[red]unhealthy[/red]"
        else:
            verdict = "[green]started[/green]" if item.name in started else "[cyan]reused[/cyan]"
        table.add_row(
            item.name,
            record.url if record else "-",
            str(record.pid) if record else "-",
            verdict,
            item.detail,
        )
    return table


def up(
    host: str = typer.Option(stack.DEFAULT_HOST, "--host", help="interface every service binds to"),
    bucket: str = typer.Option(stack.DEFAULT_BUCKET, "--bucket", help="S3 bucket for MLflow artifacts and data"),
    num_cpus: int | None = typer.Option(None, "--num-cpus", min=1, help="CPUs the Ray head offers (default: all)"),
    timeout_s: float = typer.Option(180.0, "--timeout", min=1.0, help="seconds each service may take to answer"),
) -> None:
    """Start Ray (with dashboard), an MLflow server and SeaweedFS S3 here; reuse those already running."""
    if not is_loopback(host):
        warn(
            f"--host {host} exposes the MLflow server, S3 and the Ray dashboard beyond this machine; "
            "only Ray checks a token"
        )
    try:
        state, started = stack.up(host=host, bucket=bucket, num_cpus=num_cpus, timeout_s=timeout_s)
    except stack.StackError as e:
        raise fail(f"{e}\nrun `resnet-orch down` to clean up what did start", FAILED) from None
    out().print(_services_table(state, stack.check_health(state), started))
    out().print(f"Ray dashboard: {state.services[stack.RAY].url}", highlight=False)
    out().print("client environment (`eval $(resnet-orch stack env)` sets it, secret key included):")
    _print_env(state)


def down(
    timeout_s: float = typer.Option(60.0, "--timeout", min=1.0, help="seconds to wait for each service to exit"),
) -> None:
    """Stop the local stack (and the Ray head `submit` started): every process exits and every port closes."""
    try:
        stopped = stack.down(timeout_s=timeout_s)
    except stack.StackError as e:
        raise fail(str(e), FAILED) from None
    if not stopped:
        out().print("no local stack is running")
        return
    out().print(f"stopped: {', '.join(stopped)}", highlight=False)


@stack_app.command("status")
def status_command() -> None:
    """Health of each service of the local stack; exits 1 unless all are healthy."""
    state, health = _running_stack()
    out().print(_services_table(state, health))
    if any(item.detail == stack.NOT_STARTED for item in health):
        out().print("`resnet-orch up` starts the services not started; `resnet-orch down` stops them all")
    if not all(item.healthy for item in health):
        raise typer.Exit(FAILED)


@stack_app.command("env")
def env_command() -> None:
    """Print `export` lines that point Ray, MLflow, boto3 and DALI at the stack (for `eval`)."""
    state, _ = _running_stack()
    for key, value in state.client_env().items():
        print(f"export {key}={shlex.quote(value)}")


def register(app: typer.Typer) -> None:
    """Mount `up`, `down` and the `stack` sub-app on the top-level `resnet-orch` app."""
    app.command("up")(up)
    app.command("down")(down)
    app.add_typer(stack_app, name="stack")
