"""The sweep driver: the entrypoint of the Ray Job that `resnet-orch submit` / `resume` starts.

    python -m orchestrator.sweep.driver SWEEP_DIR [--resume]

It reads the sweep's folder (RESNET_ORCH_HOME/sweeps/<id> when the cluster is local; the job's uploaded working
dir on a remote cluster), connects to the cluster the job runs on and runs the sweep with Tune. Its log goes to
the job's log and to the sweep's `driver.log`, so `resnet-orch logs SWEEP` works after the cluster is gone. Its
progress goes to the sweep's `progress.json` and a copy into the sweep's storage, where a client off the cluster
reads it (`sweep.save_progress`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from orchestrator.sweep import job_env
from orchestrator.sweep.config import load_sweep
from orchestrator.sweep.layout import SweepPaths, save_progress
from orchestrator.sweep.state import SweepState, load_progress, load_record

logger = logging.getLogger("orchestrator.sweep.driver")  # __name__ is "__main__" under `python -m`


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.sweep.driver")
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--resume", action="store_true", help="restore the sweep's Tune state instead of starting")
    args = parser.parse_args(argv)
    # On this machine's head the job's secrets come in a file (`job_env`); Ray loads it into the workers, not here.
    # Any AWS keys it holds then go into a file of its own: Tune would copy them into every trial actor's runtime env.
    job_env.load_job_secrets()
    try:
        with job_env.aws_keys_in_a_file():
            return _run(args.sweep_dir.resolve(), resume=args.resume)
    finally:
        job_env.forget_job_secrets(os.environ.get(job_env.SECRETS_FILE_VAR))


def _run(sweep_dir: Path, *, resume: bool) -> int:
    paths = SweepPaths(sweep_dir)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout), logging.FileHandler(paths.driver_log)]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers)

    import ray

    from orchestrator.sweep.scheduling import SchedulingError, run_sweep

    record = load_record(paths.record)
    config = load_sweep(paths.sweep_file)
    ray.init(address="auto", log_to_driver=True)
    try:
        state = run_sweep(record, config, paths, resume=resume)
    except SchedulingError as exc:
        # The cluster can never run this sweep as configured: a final answer, not an interruption to resume.
        logger.error("sweep %s cannot run: %s", record.sweep_id, exc)
        progress = load_progress(paths.progress)
        progress.state = SweepState.FAILED
        progress.error = str(exc)
        save_progress(record, paths, progress)
        return 2
    logger.info("sweep %s finished: %s", record.sweep_id, state)
    return 0 if state == SweepState.SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main())
