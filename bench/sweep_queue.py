"""`resnet-orch status` on a sweep of many trials, and what saving its progress costs per event.

    .venv/bin/python bench/sweep_queue.py [--trials 200] [--events 2000] [--sweep ID] [--json]

Without `--sweep`: a private RESNET_ORCH_HOME with a sweep of `--trials` one-step trials (`create_sweep`), driven
through `--events` progress saves as the driver makes them (each trial PENDING -> RUNNING, reports, SUCCEEDED, the
rest random reports), then `status ID` and `status ID --json` timed as a user runs them (the console script, a new
process each time: imports included), median of 5. With `--sweep ID`: the same timings on that sweep of the current
home (e.g. the 200-trial sweep of `tests/sweep/test_queue_at_scale.py`). Bytes written per save are the kernel's
count (/proc/self/io `wchar`) over the saves, next to the size of the whole progress (what a full rewrite per event
would write). The target: `status` under 2 s at 200 trials; its CPU seconds are shown too, and `--help`'s (the
start-up alone), since a shared machine's load stretches wall time. With --json the last line is one JSON object.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--sweep", help="time `status` on this sweep of the current RESNET_ORCH_HOME instead")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result: dict[str, Any] = {"bench": "queue", "machine": f"{os.cpu_count()} cores"}
    if args.sweep:
        from orchestrator.sweep.layout import load_sweep_progress

        result |= {"sweep": args.sweep, "trials": len(load_sweep_progress(args.sweep).trials)}
        result |= time_status(args.sweep)
    else:
        with tempfile.TemporaryDirectory(prefix="queue-bench-") as tmp:
            os.environ["RESNET_ORCH_HOME"] = str(Path(tmp) / "home")
            sweep_id, saves = synthetic_sweep(args.trials, args.events, Path(tmp))
            result |= {"trials": args.trials, **saves, **time_status(sweep_id)}
    result["status_under_2s"] = max(result["status_s"], result["status_json_s"]) < 2.0
    result["load_average_1min"] = round(os.getloadavg()[0], 1)
    if not args.json:
        for key, value in result.items():
            print(f"{key:>28}: {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
