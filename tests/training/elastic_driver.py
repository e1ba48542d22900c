"""The driver of `test_elastic_cluster`, run as its own process on the cluster's head (`python -m`): it connects while
the head is the only node, so Ray Train's controller (placed on the driver's node) survives the worker node's kill.

    python -m tests.training.elastic_driver WORKDIR CONFIG_JSON

Runs the trial of CONFIG_JSON as `reference` (the head's 1 CPU: one worker), writes WORKDIR/ready, waits for
WORKDIR/go, runs it again as `drill` (reports appended to WORKDIR/drill.jsonl) and writes WORKDIR/results.json: each
run's error, attempts, per-step losses and epoch sizes.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import ray

from orchestrator.sweep.config import TrialConfig
from orchestrator.training.checkpointing import read_checkpoint
from orchestrator.training.trial import TrialResult, open_checkpoint, run_trial


def summary(result: TrialResult) -> dict[str, Any]:
    found: dict[str, Any] = {"error": result.error, "attempts": result.attempts, "metrics": result.metrics}
    if result.checkpoint_path is not None:
        with open_checkpoint(result.checkpoint_path).as_directory() as directory:
            state = read_checkpoint(Path(directory))[1]
        found |= {"losses": state.step_losses, "epoch_sizes": state.epoch_sizes}
    return found


def main(workdir: Path, config: dict[str, Any]) -> None:
    ray.init()  # RAY_ADDRESS: the cluster's GCS
    results = {"reference": summary(run_trial(TrialConfig.model_validate(config | {"trial_id": "reference"})))}
    (workdir / "ready").write_text("1", encoding="utf-8")
    while not (workdir / "go").exists():
        time.sleep(0.2)
    log = workdir / "drill.jsonl"

    def record(metrics: dict[str, Any]) -> None:
        with open(log, "a", encoding="utf-8") as out:
            out.write(json.dumps(metrics) + "\n")

    drill = run_trial(TrialConfig.model_validate(config | {"trial_id": "drill"}), reporter=record)
    results["drill"] = summary(drill)
    (workdir / "results.json").write_text(json.dumps(results), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]), json.loads(sys.argv[2]))
