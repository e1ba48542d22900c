"""`resnet-orch summary`: the table's rows and totals, options that change the model, exit code 2 on bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from orchestrator.cli import app

REPO_ROOT = Path(__file__).resolve().parents[2]


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["summary", *args], env={"COLUMNS": "200"})
    return result.exit_code, result.output


def test_cli_prints_layers_params_and_multiply_adds() -> None:
    code, out = invoke("resnet50", "--shortcut", "B")
    assert code == 0, out
    assert "layer3.5" in out
    assert "1024 x 14 x 14" in out
    assert "25,557,032" in out
    assert "4.09 G" in out
    assert "shortcut=B variant=v1.5" in out


def test_cli_options_change_the_model() -> None:
    code, out = invoke("resnet50", "--shortcut", "A", "--variant", "v1", "--stages")
    assert code == 0, out
    assert "22,780,456" in out  # option A: the plain net's count
    assert "3.50 G" in out
    assert "layer3.5" not in out
    code, out = invoke("resnet18", "--plain", "--image-size", "112")
    assert code == 0, out
    assert "residual=False" in out
    assert "at 112x112" in out
    code, out = invoke("cifar_resnet110")
    assert code == 0, out
    assert "at 32x32" in out  # the CIFAR stem's own resolution by default
    assert "1,727,962" in out


def test_cli_bad_input_exits_2_with_the_valid_choices() -> None:
    code, out = invoke("resnet19")
    assert code == 2
    assert "unknown model 'resnet19'" in out
    assert "resnet18" in out
    assert "Traceback" not in out
    code, out = invoke("resnet18", "--shortcut", "D")
    assert (code, "choose one of 'A', 'B', 'C'" in out) == (2, True)
    code, out = invoke("cifar_resnet20", "--variant", "v1")
    assert (code, "cifar_resnet20 has no option 'variant'" in out) == (2, True)


def test_python_dash_m_entry_point() -> None:
    # A fresh interpreter, the command as a module (`resnet-orch` without its console script).
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "summary", "test_resnet", "--stages"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "143,312" in proc.stdout
