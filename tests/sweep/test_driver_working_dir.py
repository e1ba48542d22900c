"""A remote cluster's sweep driver starts in the Ray job's working dir, which Ray's working_dir plugin deletes and
unpacks again whenever another runtime env on the node names the same package (the driver's own `ray.init`, trial
actors). The driver works in a private copy: its files stay, and torch's first kernel still runs (with the working
directory gone, oneMKL cannot load libtorch_cpu.so and exits the process: how spot sweeps' drivers died)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from orchestrator.sweep.driver import private_copy

# What Ray does to the job's folder while the driver runs, then the driver's first torch kernel.
REPLACED_UNDER_THE_DRIVER = textwrap.dedent(
    """
    import contextlib, os, shutil, sys
    from pathlib import Path
    from orchestrator.sweep.driver import private_copy
    job = Path(sys.argv[1])
    with (private_copy(job) if sys.argv[2] == "copy" else contextlib.nullcontext(job)) as sweep:
        shutil.rmtree(job)
        job.mkdir()
        import torch
        ones = torch.ones(64, 64)
        print("kernel", float((ones @ ones).sum()), "cwd", os.getcwd() == str(sweep))
    """
)


def _job_folder(tmp_path: Path) -> Path:
    job = tmp_path / "_ray_pkg_0123"
    job.mkdir(parents=True)
    (job / "sweep.yaml").write_text("name: s\n", encoding="utf-8")
    (job / "progress.json").write_text("{}", encoding="utf-8")
    return job


def test_the_copy_keeps_the_driver_s_files_and_working_dir_when_ray_replaces_the_job_folder(tmp_path: Path) -> None:
    job = _job_folder(tmp_path)
    start = os.getcwd()
    try:
        with private_copy(job) as sweep:
            assert sweep != job and os.getcwd() == str(sweep)
            shutil.rmtree(job)  # Ray's re-unpack
            job.mkdir()
            (sweep / "driver.log").write_text("running\n", encoding="utf-8")
            assert sorted(path.name for path in sweep.iterdir()) == ["driver.log", "progress.json", "sweep.yaml"]
            assert os.getcwd() == str(sweep)
        assert not sweep.exists()
        assert Path(os.getcwd()).is_dir()  # never left in the removed copy
    finally:
        os.chdir(start)


def test_torch_runs_in_the_copy_and_dies_without_it(tmp_path: Path) -> None:
    def run(mode: str) -> subprocess.CompletedProcess[str]:
        job = _job_folder(tmp_path / mode)
        return subprocess.run(
            [sys.executable, "-c", REPLACED_UNDER_THE_DRIVER, str(job), mode],
            cwd=job,
            capture_output=True,
            text=True,
            timeout=120,
        )

    copied = run("copy")
    assert copied.returncode == 0, copied.stderr
    assert "kernel 262144.0 cwd True" in copied.stdout
    in_place = run("in-place")
    assert in_place.returncode != 0
    assert "oneMKL FATAL ERROR" in in_place.stdout + in_place.stderr
