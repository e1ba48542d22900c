"""`python -m orchestrator.cli ...`: the `resnet-orch` command without its console script."""

from orchestrator.cli import app

app()
