"""The `resnet-orch` command: one typer app that mounts each area's commands from its own module."""

from __future__ import annotations

import typer

from models import summary as model_summary
from orchestrator.cli import data_commands as cli_data
from orchestrator.cli import stack_commands as cli_stack
from orchestrator.cli import sweep_commands as cli_sweep

app = typer.Typer(
    name="resnet-orch",
    help="ImageNet sweeps of the ResNet family (He et al., 2015) on Ray, with DALI input and MLflow tracking.",
    no_args_is_help=True,
    add_completion=False,
)
cli_sweep.register(app)  # validate, submit, resume, status, list, logs, cancel, pull, report, ui
cli_stack.register(app)  # up, down, stack status
app.add_typer(cli_data.app, name="data")  # data shard, data check
app.command("summary", help="Layers, parameters and multiply-adds of a registered model.")(model_summary.summary)
