"""The chaos soak: N tiny sweeps on the local stack, each under faults drawn from a seeded schedule, and one JSON line
of what survived and what was lost.

    .venv/bin/python bench/chaos.py [--sweeps 10] [--seed 0] [--outage-s 10 30] [--json]

The stack is this machine's own: SeaweedFS S3 (the sweeps' storage: checkpoints, Tune state, MLflow artifacts),
`mlflow server` (sqlite) and the Ray head that `resnet-orch submit` starts for the soak's private RESNET_ORCH_HOME
(`bench/soak_stack.py`). Every sweep is one trial of the tiny `test_resnet` (base width 8, 32 px) on generated JPEG
shards read from local disk, 2 workers of 1 CPU, `--epochs` epochs of 4 steps, a checkpoint every 2 steps. Its
faults (`bench/soak_faults.py`): a worker SIGKILLed after a step or while a checkpoint is written, half the time a
second such kill in the restarted attempt, and one of: the driver SIGKILLed then `resnet-orch resume`, SeaweedFS or
`mlflow server` stopped for `--outage-s` seconds and started again on its port and data.

After each sweep (`bench/soak_checks.py`): its final state; per trial every epoch's samples (the train loop's count),
its per-step losses against a fault-free twin trial of the same config (one twin sweep first, a trial per seed the
schedule drew; 1e-4), exactly one MLflow run with every reported point once, one registered version; and that the
sweep left no driver, trial actor or placement group behind. The last line (`--json`) is one JSON object; `problems`
lists what was found.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from soak_checks import Findings, TrialEvidence, check_trial, expected_points, report_steps
from soak_faults import DRIVER_KILL, MLFLOW_OUTAGE, S3_OUTAGE, Fault, Shape, draw_schedule, fault_counts
from soak_stack import BUCKET, SoakStack, driver_pids, leftovers, submitted_id, write_images

STEPS_PER_EPOCH = 4
BATCH_SIZE = 16  # global: 8 per worker
EVERY_STEPS = 2
WORKERS = 2
CLASSES = 10
IMAGES_PER_CLASS = 12
# Trial seeds the schedule draws from: each is one distinct config, so one twin each.
SEEDS = (1, 2)
EXPERIMENT = "soak"
TWIN_EXPERIMENT = "soak-twins"


@dataclass
class SweepOutcome:
    index: int
    sweep_id: str
    seed: int
    faults: list[Fault]
    state: str
    wall_s: float
    struck: list[Fault] = field(default_factory=list)  # the outside faults carried out (one the trial outran is not)
    restarts: int = 0  # attempts beyond the first, over the sweep's trials (`status`)
    findings: Findings = field(default_factory=Findings)
    leftovers: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)  # what the soak carried out, with when

    @property
    def in_trial(self) -> list[Fault]:
        return [f for f in self.faults if f.chaos_entry() is not None]


def sweep_file(root: Path, shards: str, mlflow_url: str, *, seeds: list[int], epochs: int, retry_s: float,
               faults: list[Fault], twin: bool) -> Path:  # fmt: skip
    """A sweep of one trial per seed (a chaos sweep has one seed; the twin sweep one per config)."""
    chaos = [entry for fault in faults if (entry := fault.chaos_entry()) is not None]
    sweep: dict[str, Any] = {
        "name": "soak",
        **({"seed": seeds[0]} if len(seeds) == 1 else {"grid": {"seed": list(seeds)}}),
        "model": {"arch": "test_resnet", "base_width": 8, "num_classes": CLASSES},
        "recipe": {
            "lr": 0.1,
            "batch_size": BATCH_SIZE,
            "epochs": epochs,
            "steps_per_epoch": STEPS_PER_EPOCH,
            "image_size": 32,
            "resize_size": 36,
            "precision": "fp32",
        },
        "data": {"train": shards, "val": shards, "allow_val_equals_train": True, "num_threads": 1},
        "resources": {"workers": WORKERS, "cpus_per_worker": 1},
        "max_failures": 3,
        "checkpoint": {"every_steps": EVERY_STEPS, "keep": 2},
        "storage": f"s3://{BUCKET}/runs",
        "tracking": {
            "uri": mlflow_url,
            "experiment": TWIN_EXPERIMENT if twin else EXPERIMENT,
            "registered_model": TWIN_EXPERIMENT if twin else EXPERIMENT,
        },
        "outages": {"retry_s": retry_s},
        **({"chaos": chaos} if chaos else {}),
    }
    path = root / f"sweep-{'twin' if twin else 'chaos'}-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(sweep), encoding="utf-8")
    return path


def _state(sweep_id: str) -> tuple[str, dict[str, Any]]:
    from orchestrator.sweep import jobs
    from orchestrator.sweep.layout import load_sweep_record

    state, progress, _ = jobs.current_state(load_sweep_record(sweep_id))
    return state.value, progress.as_json()


def _strike(fault: Fault, stack: SoakStack, sweep_dir: Path, sweep_id: str, done: list[str]) -> None:
    """Carry out an outside fault now (blocking for an outage's length)."""
    t = time.monotonic()
    if fault.kind == DRIVER_KILL:
        pids = driver_pids(sweep_dir)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 300
        while _state(sweep_id)[0] != "INTERRUPTED":
            if time.monotonic() > deadline:
                raise RuntimeError(f"sweep {sweep_id} not INTERRUPTED 300 s after its driver {pids} was killed")
            time.sleep(2)
        resumed = stack.resnet_orch("resume", sweep_id)
        if resumed.returncode != 0:
            raise RuntimeError(f"`resnet-orch resume {sweep_id}` failed: {resumed.stdout}{resumed.stderr}")
        done.append(f"driver {pids} killed, resumed after {time.monotonic() - t:.0f} s")
        return
    if fault.kind == S3_OUTAGE:
        stack.s3.interrupt()
        time.sleep(fault.seconds)
        stack.s3.start()
    elif fault.kind == MLFLOW_OUTAGE:
        stack.mlflow.interrupt()
        time.sleep(fault.seconds)
        stack.mlflow.start()
    done.append(f"{fault.kind}: down {time.monotonic() - t:.0f} s (restart included)")


def run_sweep(
    stack: SoakStack, path: Path, outside: list[Fault], timeout_s: float, struck: list[Fault] | None = None
) -> tuple[str, str, float, list[str]]:
    """Submit the sweep, carry out its outside faults as its trial reaches their steps (appended to `struck`),
    follow it to its end. Returns (sweep id, final state, wall seconds, what was done)."""
    t0 = time.monotonic()
    submitted = stack.resnet_orch("submit", str(path))
    if submitted.returncode != 0:
        raise RuntimeError(f"`resnet-orch submit` failed: {submitted.stdout}{submitted.stderr}")
    sweep_id = submitted_id(submitted.stdout)
    sweep_dir = stack.home / "sweeps" / sweep_id
    pending = sorted(outside, key=lambda f: f.at_step)
    done: list[str] = []
    while True:
        state, progress = _state(sweep_id)
        if state not in ("PENDING", "RUNNING"):
            return sweep_id, state, time.monotonic() - t0, done
        if time.monotonic() - t0 > timeout_s:
            stack.resnet_orch("cancel", sweep_id)
            return sweep_id, f"TIMED_OUT after {timeout_s:.0f} s", time.monotonic() - t0, done
        step = max((t["metrics"].get("step", 0) for t in progress["trials"]), default=0)
        if pending and state == "RUNNING" and step >= pending[0].at_step:
            fault = pending.pop(0)
            _strike(fault, stack, sweep_dir, sweep_id, done)
            if struck is not None:
                struck.append(fault)
            continue
        time.sleep(1)


def final_train_state(storage: str, sweep_id: str, trial_id: str) -> Any:
    """The `TrainState` of the trial's newest complete checkpoint (its audit trail: losses, epoch reports)."""
    from orchestrator.training.checkpointing import latest_complete_checkpoint, read_checkpoint
    from orchestrator.training.trial import open_checkpoint, storage_location

    fs_path, fs = storage_location(storage)
    import pyarrow.fs

    newest = latest_complete_checkpoint(fs or pyarrow.fs.LocalFileSystem(), f"{fs_path}/{sweep_id}.{trial_id}")
    if newest is None:
        return None
    uri = f"s3://{newest}" if storage.startswith("s3://") else newest
    with open_checkpoint(uri).as_directory() as directory:
        return read_checkpoint(Path(directory))[1]


def trial_evidence(
    stack: SoakStack, sweep_id: str, trial: dict[str, Any], twin_losses: list[float], epochs: int
) -> TrialEvidence:
    from mlflow.tracking import MlflowClient

    from orchestrator.sweep.layout import load_sweep_record
    from orchestrator.sweep.tracking import TAG_KIND, TAG_SWEEP, TAG_TRIAL, metric_history

    record = load_sweep_record(sweep_id)
    state = final_train_state(record.storage, sweep_id, trial["id"])  # None: no complete checkpoint (all lost)
    client = MlflowClient(tracking_uri=stack.mlflow.url, registry_uri=stack.mlflow.url)
    experiment = client.get_experiment_by_name(record.experiment)
    runs = (
        [
            r.info.run_id
            for r in client.search_runs(
                [experiment.experiment_id],
                filter_string=f"tags.`{TAG_SWEEP}` = '{sweep_id}' and tags.`{TAG_TRIAL}` = '{trial['id']}'"
                f" and tags.`{TAG_KIND}` = 'trial'",
            )
        ]
        if experiment is not None
        else []
    )
    base = TrialEvidence(
        trial_id=f"{sweep_id}/{trial['id']}",
        epochs=epochs,
        samples_per_epoch=STEPS_PER_EPOCH * BATCH_SIZE,
        report_steps=report_steps(epochs, STEPS_PER_EPOCH, EVERY_STEPS),
        epoch_reports=state.epoch_reports if state is not None else [],
        step_losses=state.step_losses if state is not None else [],
        twin_losses=twin_losses,
        runs=runs,
        history={},
        versions=[
            v.version for v in client.search_model_versions(f"name = '{record.registered_model}'") if v.run_id in runs
        ],
    )
    history = {name: metric_history(client, runs[0], name) for name in expected_points(base)} if runs else {}
    return TrialEvidence(**{**asdict(base), "history": history})


def twin_losses(
    stack: SoakStack, root: Path, shards: str, seeds: list[int], epochs: int, timeout_s: float
) -> dict[int, list[float]]:
    """Per seed, the per-step losses of a fault-free trial of that config (no chaos, no outage): one sweep, whose
    trials share its driver's start and Tune's trial actor."""
    path = sweep_file(root, shards, stack.mlflow.url, seeds=seeds, epochs=epochs,
                      retry_s=180, faults=[], twin=True)  # fmt: skip
    sweep_id, state, _, _ = run_sweep(stack, path, [], timeout_s)
    if state != "SUCCEEDED":
        raise RuntimeError(f"the fault-free twin sweep {sweep_id} ended {state}")
    from orchestrator.sweep.layout import load_sweep_record

    storage = load_sweep_record(sweep_id).storage
    trials = _state(sweep_id)[1]["trials"]
    return {int(t["config"]["seed"]): list(final_train_state(storage, sweep_id, t["id"]).step_losses) for t in trials}


def one_sweep(
    stack: SoakStack, args: argparse.Namespace, index: int, seed: int, faults: list[Fault], twin: list[float]
) -> SweepOutcome:
    """Run one sweep under its faults and check it; an error of the soak itself is a problem of that sweep."""
    path = sweep_file(stack.root, str(stack.root / "shards"), stack.mlflow.url, seeds=[seed], epochs=args.epochs,
                      retry_s=args.retry_s, faults=faults, twin=False)  # fmt: skip
    outcome = SweepOutcome(index, "", seed, faults, "NOT RUN", 0.0)
    try:
        outside = [f for f in faults if f.chaos_entry() is None]
        outcome.sweep_id, outcome.state, outcome.wall_s, outcome.done = run_sweep(
            stack, path, outside, args.sweep_timeout_s, outcome.struck
        )
        _, progress = _state(outcome.sweep_id)
        for trial in progress["trials"]:
            outcome.restarts += max(0, int(trial.get("attempts", 0)) - 1)
            if trial["state"] != "SUCCEEDED":
                outcome.findings.problems.append(
                    f"{outcome.sweep_id}/{trial['id']}: {trial['state']} {trial.get('reason') or ''}"
                )
            evidence = trial_evidence(stack, outcome.sweep_id, trial, twin, args.epochs)
            outcome.findings.add(check_trial(evidence))
        outcome.leftovers = leftovers(outcome.sweep_id, stack.home / "sweeps" / outcome.sweep_id, stack)
    except Exception as exc:  # the soak goes on to the next sweep; this one counts as not finished
        outcome.findings.problems.append(f"sweep {index} ({outcome.sweep_id or 'not submitted'}): {exc!r}")
        if outcome.state == "SUCCEEDED":
            outcome.state = "UNCHECKED"
    return outcome


def soak(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    from pipelines.sharding import shard_dataset

    t0 = time.monotonic()
    rng = random.Random(args.seed)
    shape = Shape(args.epochs, STEPS_PER_EPOCH, EVERY_STEPS, WORKERS)
    outcomes: list[SweepOutcome] = []
    plan = [(rng.choice(SEEDS), draw_schedule(rng, shape, tuple(args.outage_s))) for _ in range(args.sweeps)]
    with SoakStack(root) as stack:
        shards = str(root / "shards")
        shard_dataset(write_images(root / "images", CLASSES, IMAGES_PER_CLASS), shards, shard_bytes=40_000)
        seeds = sorted({seed for seed, _ in plan})
        twins = twin_losses(stack, root, shards, seeds, args.epochs, args.sweep_timeout_s)
        for index, (seed, faults) in enumerate(plan):
            outcome = one_sweep(stack, args, index, seed, faults, twins[seed])
            outcomes.append(outcome)
            print(json.dumps(_sweep_line(outcome)), file=sys.stderr, flush=True)
    return summary(outcomes, args, time.monotonic() - t0)


def _sweep_line(outcome: SweepOutcome) -> dict[str, Any]:
    line = asdict(outcome)
    line["findings"] = {k: v for k, v in line["findings"].items() if v}
    return line


def summary(outcomes: list[SweepOutcome], args: argparse.Namespace, wall_s: float) -> dict[str, Any]:
    total = Findings()
    for outcome in outcomes:
        total.add(outcome.findings)
    return {
        "sweeps_run": len(outcomes),
        # In-trial kills as scheduled (each fires when its attempt reaches its step: `trial_restarts` counts the
        # restarts they and the driver kills caused), outside faults as carried out.
        "faults_injected": fault_counts([*o.in_trial, *o.struck] for o in outcomes),
        "outside_faults_outrun": sum(len(o.faults) - len(o.in_trial) - len(o.struck) for o in outcomes),
        "sweeps_finished": sum(o.state == "SUCCEEDED" for o in outcomes),
        "trial_restarts": sum(o.restarts for o in outcomes),
        "samples_lost": total.samples_lost,
        "samples_repeated": total.samples_repeated,
        "steps_differing_from_twin": total.steps_differing,
        "duplicate_runs": total.duplicate_runs,
        "missing_runs": total.missing_runs,
        "metric_points_lost": total.metric_points_lost,
        "metric_points_duplicated": total.metric_points_duplicated,
        "metric_points_wrong": total.metric_points_wrong,
        "duplicate_versions": total.duplicate_versions,
        "missing_versions": total.missing_versions,
        "leftovers": sum(len(o.leftovers) for o in outcomes),
        "wall_s": round(wall_s, 1),
        "sweep_wall_s": [round(o.wall_s, 1) for o in outcomes],
        "seed": args.seed,
        "outage_s": list(args.outage_s),
        "epochs": args.epochs,
        "problems": (total.problems + [f"{o.sweep_id}: left {x}" for o in outcomes for x in o.leftovers])[:50],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweeps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="the fault schedule's seed")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of 4 steps per trial")
    parser.add_argument("--outage-s", type=float, nargs=2, default=(10.0, 30.0), metavar=("MIN", "MAX"),
                        help="how long SeaweedFS or mlflow server stays down, drawn uniformly")  # fmt: skip
    parser.add_argument("--retry-s", type=float, default=600.0, help="the sweeps' outages.retry_s")
    parser.add_argument("--sweep-timeout-s", type=float, default=1800.0, help="a sweep still running then fails")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder, removed after")
    parser.add_argument("--json", action="store_true", help="print only the summary as one JSON line")
    args = parser.parse_args(argv)
    if args.workdir is not None:
        result = soak(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="resnet-orch-soak-") as tmp:
            result = soak(args, Path(tmp))
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    clean = result["sweeps_finished"] == result["sweeps_run"] and not result["problems"]
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
