"""The `resnet-orch` command (minimal until the lead's app lands: it mounts the sweep commands)."""

from __future__ import annotations

import typer

from orchestrator import cli_sweep

app = typer.Typer(name="resnet-orch", help="ResNet sweeps on Ray, tracked in MLflow.", no_args_is_help=True)
cli_sweep.register(app)
