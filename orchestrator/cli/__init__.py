"""The `resnet-orch` command: one typer app that mounts each area's commands from its own module.

Importing this package loads typer, rich and the light parts of the library only; torch, Ray, DALI and MLflow are
imported inside the commands that use them, so `--help`, `list` and `status` answer at once.
"""

from __future__ import annotations

import typer

from orchestrator.cli import data_commands, model_commands, stack_commands, sweep_commands
from orchestrator.sweep.jobs import set_client_defaults

app = typer.Typer(
    name="resnet-orch",
    help="ImageNet sweeps of the ResNet family (He et al., 2015) on Ray, with DALI input and MLflow tracking.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _client_defaults() -> None:
    set_client_defaults()


sweep_commands.register(app)  # validate, submit, resume, status, list, logs, cancel, pull, report, ui
stack_commands.register(app)  # up, down, stack status, stack env
app.add_typer(data_commands.app, name="data")  # data shard, data check
model_commands.register(app)  # summary
