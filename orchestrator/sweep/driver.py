"""The sweep driver: the entrypoint of the Ray Job that `resnet-orch submit` / `resume` starts.

    python -m orchestrator.sweep.driver SWEEP_DIR [--resume] [--from-working-dir]

It reads the sweep's folder (RESNET_ORCH_HOME/sweeps/<id> when the cluster is local; a private copy of the job's
uploaded working dir on a remote cluster, `private_copy`), connects to the cluster the job runs on and runs the sweep
with Tune. Its log goes to the job's log and to the sweep's `driver.log`, so `resnet-orch logs SWEEP` works after the
cluster is gone. Its progress goes to the sweep's `progress.json` and a copy into the sweep's storage, where a client
off the cluster reads it (`sweep.save_progress`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from orchestrator.sweep import job_env
from orchestrator.sweep.config import load_sweep
from orchestrator.sweep.layout import SweepPaths, save_progress
from orchestrator.sweep.state import SweepState, load_progress, load_record

logger = logging.getLogger("orchestrator.sweep.driver")  # __name__ is "__main__" under `python -m`

# The driver's exit code when the cluster can never run the sweep as configured; `submit` reports it as refused.
REFUSED_EXIT_CODE = 2
# The log lines of the driver's verdict, for a client that cannot read the sweep's storage (it reads the job's log).
REFUSED_MARK = "cannot run: "
ADMITTED_MARK = "admitted: "


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.sweep.driver")
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--resume", action="store_true", help="restore the sweep's Tune state instead of starting")
    parser.add_argument(
        "--from-working-dir", action="store_true", help="SWEEP_DIR is the Ray job's working dir: work in a copy of it"
    )
    args = parser.parse_args(argv)
    # On this machine's head the job's secrets come in a file (`job_env`); Ray loads it into the workers, not here.
    # Any AWS keys it holds then go into a file of its own: Tune would copy them into every trial actor's runtime env.
    job_env.load_job_secrets()
    try:
        with job_env.aws_keys_in_a_file():
            if not args.from_working_dir:
                return _run(args.sweep_dir.resolve(), resume=args.resume)
            with private_copy(args.sweep_dir) as sweep_dir:
                return _run(sweep_dir, resume=args.resume)
    finally:
        job_env.forget_job_secrets(os.environ.get(job_env.SECRETS_FILE_VAR))


@contextlib.contextmanager
def private_copy(working_dir: Path) -> Iterator[Path]:
    """The sweep folder copied into a private temporary folder, which is also the working directory within the block.

    Ray's working_dir plugin unpacks a job's package anew (rmtree, then unzip) whenever another runtime env on the node
    names the same package, as this driver's own `ray.init` and the trial actors' envs do: the folder the job started
    in is deleted and recreated under the running driver. Files the driver wrote there vanish, and its working
    directory is gone, so oneMKL inside torch cannot load libtorch_cpu.so and ends the process at its first kernel.
    """
    with tempfile.TemporaryDirectory(prefix="resnet-orch-driver-sweep-") as folder:  # 0700
        copy = Path(folder) / working_dir.resolve().name
        shutil.copytree(working_dir, copy)
        os.chdir(copy)
        try:
            yield copy
        finally:
            os.chdir(tempfile.gettempdir())  # not a folder about to be removed


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
        logger.error("sweep %s %s%s", record.sweep_id, REFUSED_MARK, exc)
        progress = load_progress(paths.progress)
        progress.state = SweepState.FAILED
        progress.error = str(exc)
        save_progress(record, paths, progress)
        return REFUSED_EXIT_CODE
    logger.info("sweep %s finished: %s", record.sweep_id, state)
    return 0 if state == SweepState.SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main())
