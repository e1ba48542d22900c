"""`resnet-orch up|down|stack status`: what each says and exits with when no stack runs or its state is unreadable."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.testing import CliRunner

from orchestrator.cli import stack_commands
from orchestrator.stack import local_stack as stack


def _app() -> typer.Typer:
    app = typer.Typer()
    stack_commands.register(app)
    return app


def test_status_without_a_stack_exits_1(tmp_path: Path) -> None:
    result = CliRunner().invoke(_app(), ["stack", "status"], env={"RESNET_ORCH_HOME": str(tmp_path)})
    assert result.exit_code == 1
    assert "no local stack is running" in result.output


def test_down_without_a_stack_is_a_no_op(tmp_path: Path) -> None:
    result = CliRunner().invoke(_app(), ["down"], env={"RESNET_ORCH_HOME": str(tmp_path)})
    assert result.exit_code == 0
    assert "no local stack is running" in result.output


def test_unreadable_state_file_is_a_usage_error_naming_the_file(tmp_path: Path) -> None:
    state_file = stack.StackPaths.from_env(tmp_path).state_file
    state_file.parent.mkdir(parents=True)
    state_file.write_text("{not json")
    result = CliRunner().invoke(_app(), ["stack", "status"], env={"RESNET_ORCH_HOME": str(tmp_path)})
    assert result.exit_code == 2
    assert "state.json" in result.output and "delete the file" in result.output
    assert "Traceback" not in result.output
