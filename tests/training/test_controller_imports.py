"""What a trial's Ray Train controller imports to unpickle our callbacks. The controller is a new process for every
trial (and again after a driver restart): the callbacks' modules must not pull in torch, torchvision or MLflow, which
would cost each trial seconds of CPU before its workers start."""

from __future__ import annotations

import json
import subprocess
import sys

from orchestrator.sweep.stopping import ControllerChannel
from orchestrator.sweep.trial_notices import PlacementNotice, RestartNotice
from orchestrator.training.controller_callbacks import FailFastCallback, ReporterCallback

CONTROLLER_SIDE = (FailFastCallback, ReporterCallback, RestartNotice, PlacementNotice, ControllerChannel)
HEAVY = ("torch", "torchvision", "mlflow", "nvidia.dali", "ray.tune")


def test_the_controller_side_callbacks_import_nothing_heavy() -> None:
    modules = sorted({cls.__module__ for cls in CONTROLLER_SIDE})
    probe = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} or m in {HEAVY!r})))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
