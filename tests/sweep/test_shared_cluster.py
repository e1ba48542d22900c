"""A sweep on a cluster it shares: another user's job holds placement groups of its own, and Ray's Prometheus export
shows our live training metrics while a trial runs.

* A foreign job's placement groups (one held by its running driver, one detached and left by an ended job) survive
  our sweep's start, cancel and resume; a placement group left by an ended driver job of *this* sweep is removed by
  the resume (`orchestrator.sweep.cleanup`).
* During a trial the node's metrics export (`--metrics-export-port`) serves `ray_resnet_orch_images_per_s`,
  `..._train_loss` and `..._data_wait_frac` tagged with the sweep id, the trial id and each worker's rank.

One head of 3 CPUs (2 for the trial's workers, the rest for the foreign placement groups), started and stopped by
process (`tests.ray_clusters`), never with `ray stop`.
"""

from __future__ import annotations

import math
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.stack.seaweedfs import SeaweedFS
from orchestrator.sweep.cleanup import JOB_METADATA_SWEEP
from orchestrator.training import metric_names as m
from tests.ray_clusters import LocalCluster
from tests.sweep.remote_sweeps import follow, resnet_orch, running_past, submit

# A shared 2-core machine under load starts and stops a multi-node cluster slowly; 900 s cut one off in teardown.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

# Workers hand their metrics to the node every second rather than every 10 s (Ray's default).
FAST_METRICS = {"RAY_metrics_report_interval_ms": "1000"}

# Another user's job: a placement group for as long as it runs, and a detached one that outlives it.
_FOREIGN_JOB = """
import time, ray
from ray.util.placement_group import placement_group
ray.init()
held = placement_group([{"CPU": 0.25}], name="foreign-held")
kept = placement_group([{"CPU": 0.25}], name="foreign-detached", lifetime="detached")
ray.get([held.ready(), kept.ready()])
print("foreign placement groups ready", flush=True)
time.sleep(3600)
"""
# What a killed driver of ours can leave: a detached placement group created by a job of this sweep that has ended.
_OUR_ENDED_JOB = """
import ray
from ray.util.placement_group import placement_group
ray.init()
ray.get(placement_group([{"CPU": 0.25}], name="ours-left", lifetime="detached").ready())
"""


@pytest.fixture(scope="module")
def cluster(s3_server: SeaweedFS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("shared-cluster"), head_cpus=3, env=FAST_METRICS) as started:
        yield started


def _placement_groups(cluster: LocalCluster) -> dict[str, str]:
    """name -> state of every named placement group on the cluster (all pages: far fewer than the limit)."""
    from ray.util.state import list_placement_groups

    groups = list_placement_groups(address=cluster.dashboard_url, detail=True, limit=10_000)
    assert len(groups) < 10_000
    return {pg.name: pg.state for pg in groups if pg.name}


def _wait_for_job(cluster: LocalCluster, job_id: str, states: set[str], timeout_s: float = 120) -> str:
    from ray.job_submission import JobSubmissionClient

    jobs = JobSubmissionClient(cluster.dashboard_url)
    deadline = time.monotonic() + timeout_s
    while (state := jobs.get_job_status(job_id).value) not in states:
        assert time.monotonic() < deadline, jobs.get_job_logs(job_id)
        time.sleep(0.5)
    return state


def _scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The node's Prometheus export: series name -> [(labels, value)]."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    series: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return series


def test_foreign_placement_groups_survive_and_live_metrics_reach_prometheus(
    cluster: LocalCluster,
    tiny_shards_s3: str,
    s3_bucket: str,
    mlflow_server: str,
    remote_client: dict[str, str],
    tmp_path: Path,
) -> None:
    from ray.job_submission import JobSubmissionClient

    jobs = JobSubmissionClient(cluster.dashboard_url)
    foreign = jobs.submit_job(entrypoint=f"{sys.executable} -c '{_FOREIGN_JOB}'")
    deadline = time.monotonic() + 120
    while _placement_groups(cluster) != {"foreign-held": "CREATED", "foreign-detached": "CREATED"}:
        assert time.monotonic() < deadline, jobs.get_job_logs(foreign)
        time.sleep(0.5)

    sweep_id = submit(
        tmp_path,
        cluster,
        remote_client,
        name="shared",
        grid="{seed: [3]}",
        epochs=6,
        steps=8,
        every=4,
        shards=tiny_shards_s3,
        bucket=s3_bucket,
        mlflow=mlflow_server,
    )
    (trial_id,) = ["000-seed3"]
    follow(sweep_id, cluster, remote_client, running_past(trial_id, 4))  # trained a window

    # The node's Prometheus export, while the trial trains: each live series per rank, with the sweep's tags.
    wanted = [f"ray_{m.LIVE_PREFIX}{name}" for name in (m.IMAGES_PER_S, m.TRAIN_LOSS, m.DATA_WAIT_FRAC, m.STEP)]
    deadline = time.monotonic() + 120
    while True:
        series = _scrape(cluster.head_metrics_port)
        ours = {
            name: {s[0]["rank"]: s[1] for s in series.get(name, []) if s[0].get("sweep") == sweep_id} for name in wanted
        }
        if all(set(ranks) == {"0", "1"} for ranks in ours.values()):
            break
        assert time.monotonic() < deadline, {name: series.get(name) for name in wanted}
        time.sleep(1)
    for name in wanted:
        for labels, _ in series[name]:
            if labels.get("sweep") == sweep_id:
                assert labels["trial"] == trial_id and labels["rank"] in ("0", "1")
    progress = follow(sweep_id, cluster, remote_client, lambda p: True)[0]
    reported_step = progress.trial(trial_id).metrics["step"]
    for rank, step in ours[f"ray_{m.LIVE_PREFIX}{m.STEP}"].items():
        # The live step was set at or before this report's step, after the first window (4 steps) was reported.
        assert 1 <= step <= max(reported_step, 4) + 8 and step == int(step), (rank, step, reported_step)
    for rank, loss in ours[f"ray_{m.LIVE_PREFIX}{m.TRAIN_LOSS}"].items():
        # Cross-entropy over 8 classes starts near ln 8; a live value is a real loss, not a default 0.
        assert 0 < loss < 3 * math.log(8), (rank, loss)
    assert _placement_groups(cluster) == {"foreign-held": "CREATED", "foreign-detached": "CREATED"}

    # A placement group an ended driver job of this sweep left behind.
    ours_left = jobs.submit_job(
        entrypoint=f"{sys.executable} -c '{_OUR_ENDED_JOB}'", metadata={JOB_METADATA_SWEEP: sweep_id}
    )
    assert _wait_for_job(cluster, ours_left, {"SUCCEEDED", "FAILED"}) == "SUCCEEDED", jobs.get_job_logs(ours_left)
    assert _placement_groups(cluster)["ours-left"] == "CREATED"

    cancelled = resnet_orch("cancel", sweep_id, env=remote_client)
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    assert cancelled.stdout.strip() == f"sweep {sweep_id}: CANCELLED"
    groups = _placement_groups(cluster)
    assert (groups["foreign-held"], groups["foreign-detached"], groups["ours-left"]) == ("CREATED",) * 3

    resumed = resnet_orch("resume", sweep_id, env=remote_client)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    progress, _, _ = follow(sweep_id, cluster, remote_client, lambda p: p.state.value == "SUCCEEDED")
    assert progress.trial(trial_id).metrics["step"] == 48
    # The resumed driver removed what this sweep's ended job left, and nothing of the foreign job's.
    groups = _placement_groups(cluster)
    assert (groups["foreign-held"], groups["foreign-detached"]) == ("CREATED", "CREATED")
    assert groups.get("ours-left", "REMOVED") == "REMOVED"  # the state API may have forgotten it already
    log = resnet_orch("logs", sweep_id, env=remote_client).stdout
    assert "removed placement group" in log and f"of sweep {sweep_id}" in log
    assert jobs.get_job_status(foreign).value == "RUNNING"
    jobs.stop_job(foreign)
    _wait_for_job(cluster, foreign, {"STOPPED", "SUCCEEDED", "FAILED"})
