"""The user's path on a real local Ray cluster: submit, queue, a killed worker, MLflow runs and registry, pull;
and a driver killed mid-sweep, then `resume`. Each test has its own RESNET_ORCH_HOME and Ray head."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RESNET_ORCH = str(Path(sys.executable).with_name("resnet-orch"))


def resnet_orch(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run the installed `resnet-orch` console script (the user's entry point) in this test's environment."""
    return subprocess.run([RESNET_ORCH, *args], capture_output=True, text=True, timeout=timeout, check=False)


def _sweep_file(tmp_path: Path, shards: str, epochs: int = 1, **overrides: Any) -> Path:
    """The shipped quickstart, pointed at the test shards, made tiny: 2 trials of 2 CPU workers each."""
    sweep = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    sweep["data"].update(train=shards, val=shards)
    sweep["recipe"].update(epochs=epochs, steps_per_epoch=4, batch_size=16)
    sweep["checkpoint"] = {"every_steps": 2, "keep": 2}
    sweep.update(overrides)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep), encoding="utf-8")
    return path


def _submitted_id(stdout: str) -> str:
    ids = [line.removeprefix("sweep id: ") for line in stdout.splitlines() if line.startswith("sweep id: ")]
    assert len(ids) == 1, stdout
    return ids[0]


def _status(sweep_id: str) -> dict[str, Any]:
    done = resnet_orch("status", sweep_id, "--json")
    assert done.returncode == 0, done.stderr
    payload: dict[str, Any] = json.loads(done.stdout)
    return payload


def _top1_err(model: torch.nn.Module, shards: str, image_size: int, resize_size: int) -> float:
    """Top-1 error over the val shards on one rank, with the training loop's own counting (padding ignored)."""
    from orchestrator.training.accounting import batch_sums
    from pipelines.loader import LoaderSpec
    from pipelines.loader_factory import make_loader

    spec = LoaderSpec(
        uri=shards, split="val", batch_size=16, image_size=image_size, resize_size=resize_size, num_threads=1
    )
    loader = make_loader(spec, rank=0, world_size=1, device=torch.device("cpu"))
    loader.set_epoch(0)
    sums = torch.zeros(4, dtype=torch.float64)
    with torch.no_grad():
        for batch in loader:
            logits = model(batch.images).float()
            sums += batch_sums(logits, batch.labels, torch.zeros((), dtype=torch.float64))
    samples, _, correct1, _ = sums.tolist()
    return 1.0 - correct1 / samples


@pytest.mark.slow
def test_quickstart_end_to_end(orch_home: Path, mlflow_server: str, sample_shards_local: str, tmp_path: Path) -> None:
    # The quick start's shape over 3 epochs: trial 001 runs 3 x 2 steps and rank 1 dies after step 5 (in its third
    # epoch, first attempt only); trial 000 stops at step 3, before it.
    path = _sweep_file(
        tmp_path,
        sample_shards_local,
        epochs=3,
        grid={"steps_per_epoch": [1, 2]},
        chaos={"kill_rank": 1, "at_step": 5},
        tracking={"uri": mlflow_server, "experiment": "e2e", "registered_model": "quickstart-e2e"},
    )
    sweep = yaml.safe_load(path.read_text())
    sweep["recipe"]["eval"] = {"protocols": ["ten_crop"]}  # the paper's testing, after each trial's last epoch
    path.write_text(yaml.safe_dump(sweep), encoding="utf-8")
    submitted = resnet_orch("submit", str(path), "--wait")
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    sweep_id = _submitted_id(submitted.stdout)
    assert f"mlflow: {mlflow_server}" in submitted.stdout
    assert "dashboard: http://127.0.0.1:" in submitted.stdout

    status = _status(sweep_id)
    assert status["state"] == "SUCCEEDED"
    trials = {t["id"]: t for t in status["trials"]}
    assert list(trials) == ["000-steps_per_epoch1", "001-steps_per_epoch2"]
    assert [t["state"] for t in trials.values()] == ["SUCCEEDED", "SUCCEEDED"]
    assert [t["attempts"] for t in trials.values()] == [1, 2]  # one restart, in the killed trial only
    for trial in trials.values():
        assert {"train_loss", "val_top1_err", "val_top5_err", "images_per_s"} <= set(trial["metrics"])
        assert 0.0 <= trial["metrics"]["val_top1_err"] <= 1.0
    assert trials["001-steps_per_epoch2"]["metrics"]["step"] == 6
    driver_log = (orch_home / "sweeps" / sweep_id / "driver.log").read_text()
    assert driver_log.count("trial 001-steps_per_epoch2: restarting") == 1
    assert "trial 000-steps_per_epoch1: restarting" not in driver_log

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    experiment = client.get_experiment_by_name("e2e")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("resnet_orch.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("resnet_orch.kind") == "trial"]
    assert len(parents) == 1 and len(children) == 2
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert {c.info.run_id for c in children} == {t["mlflow_run_id"] for t in trials.values()}
    attempts = {c.data.tags["resnet_orch.trial_id"]: c.data.tags["resnet_orch.attempts"] for c in children}
    assert attempts == {"000-steps_per_epoch1": "1", "001-steps_per_epoch2": "2"}
    assert {c.info.status for c in runs} == {"FINISHED"}
    # Three complete validation passes per trial, the killed one included: every sample of the 1,000, every epoch.
    for child in children:
        run_id = child.info.run_id
        steps_per_epoch = int(child.data.tags["resnet_orch.trial_id"][-1])
        assert [m.value for m in _history(client, run_id, "val_samples")] == [1000.0] * 3
        assert [m.value for m in _history(client, run_id, "epoch_samples")] == [16.0 * steps_per_epoch] * 3
        val_losses = [m.value for m in _history(client, run_id, "val_loss")]
        assert len(val_losses) == 3 and all(math.isfinite(v) and v > 0 for v in val_losses)
        assert len(_history(client, run_id, "val_top1_err")) == 3
    killed = next(c for c in children if c.data.tags["resnet_orch.trial_id"] == "001-steps_per_epoch2")
    assert killed.data.params["model.depth"] == "18"
    assert "system/cpu_utilization_percentage" in killed.data.metrics
    # The final 10-crop numbers went to MLflow with the last epoch's report, as `status` shows them.
    final = trials["001-steps_per_epoch2"]["metrics"]["final_ten_crop_top1_err"]
    assert killed.data.metrics["final_ten_crop_top1_err"] == pytest.approx(final, abs=1e-12)
    assert [a.path for a in client.list_artifacts(killed.info.run_id, "curves")] == ["curves/curves.png"]
    assert "checkpoint/model.pt" in [a.path for a in client.list_artifacts(killed.info.run_id, "checkpoint")]
    assert [a.path for a in client.list_artifacts(parents[0].info.run_id, "curves")] == ["curves/figure4.png"]

    versions = client.search_model_versions("name = 'quickstart-e2e'")
    assert len(versions) == 2
    champion = client.get_model_version_by_alias("quickstart-e2e", "champion")
    best = min(float(v.tags["val_top1_err"]) for v in versions)
    assert float(champion.tags["val_top1_err"]) == best

    out = tmp_path / "champion.pt2"
    pulled = resnet_orch("pull", "quickstart-e2e@champion", "-o", str(out), "--tracking-uri", mlflow_server)
    assert pulled.returncode == 0, pulled.stderr
    model = torch.export.load(str(out)).module()
    logged = float(champion.tags["val_top1_err"])
    assert math.isclose(_top1_err(model, sample_shards_local, 64, 72), logged, abs_tol=1e-6)
    assert status["champion"]["version"] == str(champion.version)
    assert status["champion"]["val_top1_err"] == logged

    report_dir = tmp_path / "report"
    reported = resnet_orch("report", sweep_id, "-o", str(report_dir))
    assert reported.returncode == 0, reported.stderr
    report_md = (report_dir / "report.md").read_text()
    # Validated on its training images (the quick start's allow_val_equals_train): the row is marked.
    row = "| 000-steps_per_epoch1 † | ResNet-18 (B) | SUCCEEDED | 1000 classes, 1,000 images | 10-crop |"
    assert row in report_md
    assert f"Champion: quickstart-e2e version {champion.version} (val top-1 error " in report_md
    assert (report_dir / "report.png").stat().st_size > 0
    assert (report_dir / "curves.png").stat().st_size > 0  # Figure 4 style, from the MLflow history
    for trial in trials.values():
        assert trial["metrics"]["final_ten_crop_samples"] == 1000


def _history(client: MlflowClient, run_id: str, metric: str) -> list[Any]:
    return sorted(client.get_metric_history(run_id, metric), key=lambda m: m.step)


def _driver_pid(sweep_dir: Path) -> int | None:
    import psutil
    import ray  # noqa: F401  (puts Ray's bundled psutil on sys.path)

    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if "orchestrator.sweep.driver" in cmdline and str(sweep_dir) in cmdline:
            return int(proc.info["pid"])
    return None


def alive_cleaners(dashboard_url: str, grace_s: float = 60.0) -> list[str]:
    """Ray Train's placement-group cleaners still alive on the head; Ray ends actors asynchronously, so each one is
    given `grace_s` after its run to go."""
    from ray.util.state import list_actors

    deadline = time.monotonic() + grace_s
    while True:
        actors = list_actors(address=dashboard_url, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)
        alive = [a.actor_id for a in actors if a.class_name == "PlacementGroupCleaner"]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(2)


@pytest.mark.slow
def test_driver_killed_then_resume(orch_home: Path, sample_shards_local: str, tmp_path: Path) -> None:
    from orchestrator.training.checkpointing import count_attempts

    path = _sweep_file(tmp_path, sample_shards_local, grid={"seed": [1, 2]})
    submitted = resnet_orch("submit", str(path))
    assert submitted.returncode == 0, submitted.stderr
    sweep_id = _submitted_id(submitted.stdout)
    sweep_dir = orch_home / "sweeps" / sweep_id

    deadline = time.monotonic() + 600
    while _status(sweep_id)["trials"][0]["state"] != "SUCCEEDED":
        assert time.monotonic() < deadline, resnet_orch("logs", sweep_id).stdout[-3000:]
        time.sleep(2)
    pid = _driver_pid(sweep_dir)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # the sweep's driver dies; its trials' actors go with it

    deadline = time.monotonic() + 120
    while _status(sweep_id)["state"] != "INTERRUPTED":
        assert time.monotonic() < deadline
        time.sleep(2)
    first = _status(sweep_id)["trials"]
    assert first[0]["state"] == "SUCCEEDED"
    assert first[1]["state"] in ("PENDING", "RUNNING")

    resumed = resnet_orch("resume", sweep_id, "--wait")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    status = _status(sweep_id)
    assert status["state"] == "SUCCEEDED"
    assert [t["state"] for t in status["trials"]] == ["SUCCEEDED", "SUCCEEDED"]
    assert "restoring the Tune experiment at" in (sweep_dir / "driver.log").read_text()
    # Not re-run: the finished trial started exactly one attempt and kept its MLflow run.
    storage = json.loads((sweep_dir / "record.json").read_text())["storage"]
    import pyarrow.fs

    run_dir = f"{storage}/{sweep_id}.{status['trials'][0]['id']}"  # the Ray Train run: `TrialConfig.run_name`
    assert count_attempts(pyarrow.fs.LocalFileSystem(), run_dir) == 1
    assert status["trials"][0]["mlflow_run_id"] == first[0]["mlflow_run_id"]
    embedded = f"sqlite:///{orch_home / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=embedded, registry_uri=embedded)
    experiment = client.get_experiment_by_name("quickstart")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags["resnet_orch.kind"] for r in runs) == ["sweep", "trial", "trial"]
    assert len(client.search_model_versions("name = 'quickstart'")) == 2
    # The killed attempt's Train controller died without a goodbye: Ray Train's placement-group cleaner saw it end
    # through this head's state API, removed its placement group and exited (`jobs.submit_driver`).
    from orchestrator.stack import local_stack

    assert alive_cleaners(local_stack.recorded(orch_home).services[local_stack.RAY].url) == []


@pytest.mark.slow
def test_cancel_stops_the_job_and_frees_the_cluster(orch_home: Path, sample_shards_local: str, tmp_path: Path) -> None:
    path = _sweep_file(tmp_path, sample_shards_local, grid={"seed": [1, 2]})
    path.write_text(path.read_text().replace("steps_per_epoch: 4", "steps_per_epoch: 40"), encoding="utf-8")
    submitted = resnet_orch("submit", str(path))
    assert submitted.returncode == 0, submitted.stderr
    sweep_id = _submitted_id(submitted.stdout)
    deadline = time.monotonic() + 600
    while _status(sweep_id)["trials"][0]["attempts"] < 1:  # training has reported: the workers hold the CPUs
        assert time.monotonic() < deadline, resnet_orch("logs", sweep_id).stdout[-3000:]
        time.sleep(2)

    cancelled = resnet_orch("cancel", sweep_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == f"sweep {sweep_id}: CANCELLED"
    status = _status(sweep_id)
    assert status["state"] == "CANCELLED"
    assert [t["state"] for t in status["trials"]] == ["CANCELLED", "CANCELLED"]
    client = MlflowClient(tracking_uri=f"sqlite:///{orch_home / 'mlflow' / 'mlflow.db'}")
    run = client.get_run(status["trials"][0]["mlflow_run_id"])
    assert run.info.status == "KILLED"

    # The trial's actors went with the job: no Train controller or worker is left holding the head's CPUs.
    temp_dir = json.loads((orch_home / "stack" / "state.json").read_text())["ray_temp_dir"]
    deadline = time.monotonic() + 60
    while _train_actors(temp_dir):
        assert time.monotonic() < deadline, _train_actors(temp_dir)
        time.sleep(1)


def _train_actors(ray_temp_dir: str) -> list[str]:
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if "raylet" in cmdline and ray_temp_dir in cmdline:
            for child in proc.children(recursive=True):
                try:
                    title = " ".join(child.cmdline())
                except psutil.NoSuchProcess:
                    continue
                if "RayTrainWorker" in title or "TrainController" in title:
                    found.append(title)
    return found


@pytest.mark.slow
def test_asha_sweep_of_four_on_the_sample(
    orch_home: Path, mlflow_server: str, sample_shards_local: str, tmp_path: Path
) -> None:
    # lr 50 blows the classifier up in a few steps: both such trials are worse at their first epoch end than the
    # median of those before them, and ASHA (rung at 1 epoch, reduction factor 2) stops them there.
    path = _sweep_file(
        tmp_path,
        sample_shards_local,
        grid={"lr": [0.05, 50.0], "seed": [1, 2]},
        scheduler={"type": "asha", "metric": "val_loss", "mode": "min", "grace_epochs": 1, "reduction_factor": 2},
        max_concurrent_trials=1,
        tracking={"uri": mlflow_server, "experiment": "asha", "registered_model": "asha-e2e"},
    )
    sweep = yaml.safe_load(path.read_text())
    sweep["recipe"].update(epochs=2, steps_per_epoch=3)
    path.write_text(yaml.safe_dump(sweep), encoding="utf-8")
    submitted = resnet_orch("submit", str(path), "--wait")
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    sweep_id = _submitted_id(submitted.stdout)
    status = _status(sweep_id)
    assert status["state"] == "SUCCEEDED"
    states = {t["id"]: t["state"] for t in status["trials"]}
    assert states["000-lr0.05-seed1"] == "SUCCEEDED"
    assert states["002-lr50-seed1"] == "STOPPED" and states["003-lr50-seed2"] == "STOPPED"
    table = resnet_orch("status", sweep_id).stdout
    assert table.count("STOPPED") == sum(s == "STOPPED" for s in states.values())

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    for trial in status["trials"]:
        run = client.get_run(trial["mlflow_run_id"])
        assert run.info.status == "FINISHED"
        assert run.data.tags.get("stopped_early") == ("true" if trial["state"] == "STOPPED" else None)
    versions = client.search_model_versions("name = 'asha-e2e'")
    assert len(versions) == sum(s == "SUCCEEDED" for s in states.values())
