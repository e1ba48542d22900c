"""The command line answers at once: importing it (what `--help`, `list`, `status` and `logs` pay before doing
anything) loads none of the heavy libraries, which the commands that need them import themselves."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "ray", "nvidia.dali", "mlflow")


def test_importing_the_cli_loads_no_heavy_library() -> None:
    # A fresh interpreter: this test process has imported them all already.
    code = f"import json, sys; import orchestrator.cli; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
