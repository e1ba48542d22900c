"""`resnet-orch status` on a sweep of many trials, and what saving its progress costs per event.

    .venv/bin/python bench/sweep_queue.py [--trials 200] [--events 2000] [--sweep ID] [--json]
    .venv/bin/python bench/sweep_queue.py --run 8 [--cpus-per-worker 1] [--json]

Without `--sweep`: a private RESNET_ORCH_HOME with a sweep of `--trials` one-step trials (`create_sweep`), driven
through `--events` progress saves as the driver makes them (each trial PENDING -> RUNNING, reports, SUCCEEDED, the
rest random reports), then `status ID` and `status ID --json` timed as a user runs them (the console script, a new
process each time: imports included), median of 5. With `--sweep ID`: the same timings on that sweep of the current
home (e.g. the 200-trial sweep of `tests/sweep/test_queue_at_scale.py`). Bytes written per save are the kernel's
count (/proc/self/io `wchar`) over the saves, next to the size of the whole progress (what a full rewrite per event
would write). The target: `status` under 2 s at 200 trials; its CPU seconds are shown too, and `--help`'s (the
start-up alone), since a shared machine's load stretches wall time. With --json the last line is one JSON object.

With `--run N`: a real sweep of N one-step trials, the 200-trial test's sweep cut to N, through `resnet-orch submit
--wait` on a private home's Ray head (started before the clock starts): its wall time and the whole machine's CPU
seconds over it (/proc/stat: every process the sweep starts, Ray's own included, so run it on a quiet machine), per
trial, and the 200-trial sweep's wall time at that rate.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESNET_ORCH = str(Path(sys.executable).with_name("resnet-orch"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
QUEUE_AT_SCALE = 200  # tests/sweep/test_queue_at_scale.py


def written_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def synthetic_sweep(trials: int, events: int, root: Path) -> tuple[str, dict[str, Any]]:
    """A sweep of `trials` trials driven through `events` progress saves; (its id, save figures)."""
    from orchestrator.sweep import layout
    from orchestrator.sweep.config import parse_sweep
    from orchestrator.sweep.layout import create_sweep, save_progress, sweep_paths
    from orchestrator.sweep.state import SweepState, TrialState, load_progress

    config = {
        "name": "queue-bench",
        "grid": {"seed": list(range(trials))},
        "model": {"arch": "test_resnet"},
        "recipe": {"steps_per_epoch": 1},
        "data": {"train": str(root / "shards")},
    }
    sweep_file = root / "sweep.yaml"
    sweep_file.write_text(json.dumps(config))
    record = create_sweep(sweep_file, parse_sweep(config))
    paths = sweep_paths(record.sweep_id)
    progress = load_progress(paths.progress)
    full = len(progress.model_dump_json(indent=2))
    progress.state = SweepState.RUNNING
    layout.STORAGE_COPY_S = float("inf")  # the copy to storage is timed, not per event: leave it out of the count
    rng = random.Random(0)
    before, started = written_bytes(), time.perf_counter()
    for event in range(events):
        trial = progress.trials[event % trials] if event < 3 * trials else rng.choice(progress.trials)
        if trial.state == TrialState.PENDING:
            progress.move(trial.id, TrialState.RUNNING)
        elif trial.state == TrialState.RUNNING and event < 3 * trials and event >= 2 * trials:
            progress.move(trial.id, TrialState.SUCCEEDED)
        trial.metrics = {"step": 1.0, "train_loss": rng.random(), "val_top1_err": rng.random()}
        trial.attempts = 1
        save_progress(record, paths, progress)
    seconds = time.perf_counter() - started
    per_save = (written_bytes() - before) / events
    return record.sweep_id, {
        "saves": events,
        "bytes_per_save": round(per_save),
        "full_progress_bytes": full,
        "bytes_ratio_to_full_rewrite": round(per_save / full, 4),
        "ms_per_save": round(1000 * seconds / events, 2),
    }


def _run(args: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one `resnet-orch` process; CPU is its user + system time, which other processes on a
    loaded machine hardly change."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([RESNET_ORCH, *args], capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"resnet-orch {' '.join(args)} failed: {done.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def time_status(sweep_id: str, repeats: int = 5) -> dict[str, float]:
    """Median wall and CPU seconds of `status`, `status --json` and, side by side, `--help` (the start-up alone)."""
    out = {}
    for name, args in (
        ("status", ["status", sweep_id]),
        ("status_json", ["status", sweep_id, "--json"]),
        ("help", ["--help"]),
    ):
        runs = [_run(args) for _ in range(repeats)]
        out[f"{name}_s"] = round(statistics.median(w for w, _ in runs), 3)
        out[f"{name}_cpu_s"] = round(statistics.median(c for _, c in runs), 3)
    return out


def machine_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat: all but idle and iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def run_queue(trials: int, cpus_per_worker: float, root: Path) -> dict[str, Any]:
    """Wall and machine CPU seconds of a real sweep of `trials` one-step trials (see the module's doc)."""
    from soak_stack import write_images

    from orchestrator.stack import local_stack
    from pipelines.sharding import shard_dataset

    shards = root / "shards"
    shard_dataset(write_images(root / "images", 8, 6), str(shards), shard_bytes=60_000)
    sweep = {
        "name": "queue",
        "grid": {"seed": list(range(trials))},
        "model": {"arch": "test_resnet", "base_width": 4, "num_classes": 8},
        "recipe": {"batch_size": 8, "epochs": 1, "steps_per_epoch": 1, "image_size": 32, "resize_size": 36},
        "data": {"train": str(shards), "backend": "torch", "num_threads": 1},
        "resources": {"workers": 1, "cpus_per_worker": cpus_per_worker},
        "checkpoint": {"every_steps": 1, "keep": 1},
        "max_failures": 1,
    }
    sweep_file = root / "sweep.yaml"
    sweep_file.write_text(json.dumps(sweep))  # YAML reads JSON
    home = Path(os.environ["RESNET_ORCH_HOME"])
    local_stack.ensure_ray(home)
    try:
        busy, started = machine_cpu_s(), time.perf_counter()
        done = subprocess.run([RESNET_ORCH, "submit", str(sweep_file), "--wait"], capture_output=True, text=True)
        wall, cpu = time.perf_counter() - started, machine_cpu_s() - busy
    finally:
        local_stack.down(home)
    if done.returncode != 0:
        raise SystemExit(f"the sweep failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    return {
        "queue_trials": trials,
        "queue_cpus_per_worker": cpus_per_worker,
        "queue_wall_s": round(wall, 1),
        "queue_machine_cpu_s": round(cpu, 1),
        "queue_wall_per_trial_s": round(wall / trials, 2),
        "queue_machine_cpu_per_trial_s": round(cpu / trials, 2),
        "queue_200_trials_projected_min": round(QUEUE_AT_SCALE * wall / trials / 60, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--sweep", help="time `status` on this sweep of the current RESNET_ORCH_HOME instead")
    parser.add_argument("--run", type=int, metavar="N", help="run a real sweep of N one-step trials instead")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0, help="with --run: each trial's one worker")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result: dict[str, Any] = {"bench": "queue", "machine": f"{os.cpu_count()} cores"}
    if args.run:
        with tempfile.TemporaryDirectory(prefix="queue-run-") as tmp:
            os.environ["RESNET_ORCH_HOME"] = str(Path(tmp) / "home")
            result |= run_queue(args.run, args.cpus_per_worker, Path(tmp))
    elif args.sweep:
        from orchestrator.sweep.layout import load_sweep_progress

        result |= {"sweep": args.sweep, "trials": len(load_sweep_progress(args.sweep).trials)}
        result |= time_status(args.sweep)
    else:
        with tempfile.TemporaryDirectory(prefix="queue-bench-") as tmp:
            os.environ["RESNET_ORCH_HOME"] = str(Path(tmp) / "home")
            sweep_id, saves = synthetic_sweep(args.trials, args.events, Path(tmp))
            result |= {"trials": args.trials, **saves, **time_status(sweep_id)}
    if not args.run:
        result["status_under_2s"] = max(result["status_s"], result["status_json_s"]) < 2.0
    result["load_average_1min"] = round(os.getloadavg()[0], 1)
    if not args.json:
        for key, value in result.items():
            print(f"{key:>28}: {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
