"""An elastic trial (`resources.workers: {min: 1, max: 2}`) on a two-node cluster on this machine: its worker node is
killed mid-run, so Ray Train restarts the group smaller (1 worker, on the head); the node comes back, so after
`resize_check_s` it restarts the group larger (2 workers). Every restart resumes from the newest checkpoint, at any
world size. The trial trains exactly its 500 samples every epoch and its per-step losses equal, within 1e-3, those of
the same trial run at one worker on the head alone (accumulation changes only the order of the sums).

The head has 1 CPU for a worker; the other node joins and is killed by pid (`tests.ray_clusters`), never `ray stop`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.stack import processes
from tests.learnable_images import write_split
from tests.ray_clusters import REPO_ROOT, LocalCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

ENV = {
    # A killed node is declared dead within seconds, so the group restarts smaller at once.
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_failure_threshold": "5",
}
SAMPLES, BATCH, EPOCHS = 500, 20, 10
STEPS = SAMPLES // BATCH  # 25 steps an epoch, 2 micro-batches of 10
CHECKPOINT_EVERY = 5


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    started = LocalCluster(tmp_path / "cluster", head_cpus=1, head_resources={}, env=ENV)
    try:
        # A head that does not come up on a loaded machine (its raylet has 30 s to register) is started again.
        for tries_left in (2, 1, 0):
            try:
                started.start(timeout_s=300)
                break
            except (TimeoutError, processes.ProcessError):
                started.stop()
                if not tries_left:
                    raise
        yield started
    finally:
        left = started.stop()
    assert not left, f"processes of the cluster still running after stop: {[p.pid for p in left]}"


def join(cluster: LocalCluster) -> str:
    """Join a 1-CPU node; one whose raylet does not register in time on a loaded machine is started again."""
    for tries_left in (2, 1, 0):
        try:
            return cluster.add_node(cpus=1, timeout_s=300)
        except processes.ProcessError:
            if not tries_left:
                raise
    raise AssertionError("unreachable")


def config(train: str, storage: Path) -> dict[str, Any]:
    return {
        "trial_id": "-",
        "sweep_name": "elastic-cluster",
        "seed": 5,
        "model": {"arch": "test_resnet", "base_width": 8, "num_classes": 10},
        "recipe": {
            "batch_size": BATCH,
            "epochs": EPOCHS,
            "image_size": 48,
            "resize_size": 56,
            "lr": 0.1,
            "milestones": [EPOCHS // 2],
            "precision": "fp32",
        },
        "data": {"train": train, "backend": "torch", "num_threads": 1},
        "resources": {"workers": {"min": 1, "max": 2, "resize_check_s": 2}, "cpus_per_worker": 1},
        "checkpoint": {"every_steps": CHECKPOINT_EVERY, "keep": 50},
        "storage": str(storage),
        "max_failures": 3,
    }


def reports(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]


def wait_for(what: str, check: Callable[[], bool], driver: subprocess.Popen[str], timeout_s: float = 900) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if driver.poll() is not None:
            raise AssertionError(f"the driver ended (rc {driver.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(0.5)


def test_a_run_that_shrinks_to_one_worker_and_grows_back_keeps_the_math(cluster: LocalCluster, tmp_path: Path) -> None:
    root = write_split(tmp_path / "images", SAMPLES // 10, seed=1)
    train = tmp_path / "shards"
    done = CliRunner().invoke(app, ["data", "shard", str(root), str(train), "--shard-size", "200KB", "--json"])
    assert done.exit_code == 0, done.output
    work = tmp_path / "driver"
    work.mkdir()
    env = processes.child_env(**cluster.base_env(), RAY_ADDRESS=cluster.gcs_address)
    cmd = [sys.executable, "-m", "tests.training.elastic_driver", str(work), json.dumps(config(str(train), tmp_path))]
    with open(tmp_path / "driver.log", "w", encoding="utf-8") as out:
        driver = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    log = work / "drill.jsonl"
    try:
        wait_for("the reference run at one worker", (work / "ready").exists, driver)
        node = join(cluster)
        (work / "go").write_text("1", encoding="utf-8")
        wide = lambda: any(r["workers"] == 2 and r["step"] >= 10 for r in reports(log))  # noqa: E731
        wait_for("2 workers past step 10", wide, driver)
        cluster.kill_node(node)
        killed_at = max(r["step"] for r in reports(log))
        wait_for(
            "a report of the group restarted with 1 worker",
            lambda: any(r["workers"] == 1 and r["attempt"] >= 1 for r in reports(log)),
            driver,
        )
        join(cluster)
        driver.wait(timeout=1800)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == 0, (tmp_path / "driver.log").read_text(encoding="utf-8")[-5000:]
    results = json.loads((work / "results.json").read_text(encoding="utf-8"))
    reference, drill = results["reference"], results["drill"]
    assert reference["error"] is None and drill["error"] is None, (reference["error"], drill["error"])
    seen = reports(log)
    # The worker counts of the drill's attempts, in order: 2, then 1 after the kill, then 2 again after the node came
    # back (each attempt reports its own world size).
    by_attempt = {r["attempt"]: r["workers"] for r in seen}
    worlds = [by_attempt[attempt] for attempt in sorted(by_attempt)]
    assert worlds[0] == 2 and 1 in worlds and worlds[-1] == 2 and worlds.index(1) < len(worlds) - 1, worlds
    assert reference["metrics"]["workers"] == 1
    assert killed_at >= 10
    total = EPOCHS * STEPS
    assert len(reference["losses"]) == len(drill["losses"]) == total
    assert max(abs(a - b) for a, b in zip(reference["losses"], drill["losses"], strict=True)) <= 1e-3
    assert reference["epoch_sizes"] == drill["epoch_sizes"] == [SAMPLES] * EPOCHS
    # Every epoch's report (the last one sent for it, after any restart) counts exactly its samples.
    epoch_ends = {r["epoch"]: r["epoch_samples"] for r in sorted(seen, key=lambda r: r["step"]) if r["is_epoch_end"]}
    assert epoch_ends == dict.fromkeys(range(EPOCHS), SAMPLES)
