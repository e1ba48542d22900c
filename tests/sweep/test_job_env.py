"""Secrets stay home: what a driver job's runtime env carries (settings, never secrets), the 0600 file that brings a
local job its secrets, and one real sweep on a local Ray head whose secret values are then searched for everywhere
the cluster, MLflow, the sweep's storage and `status --json` keep anything."""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.stack.seaweedfs import SeaweedFS
from orchestrator.sweep import job_env
from orchestrator.sweep.job_env import (
    SECRETS_FILE_VAR,
    SETUP_HOOK,
    is_secret,
    job_settings,
    load_job_secrets,
    local_runtime_env,
    withheld,
)
from tests.sweep.test_end_to_end import alive_cleaners

RESNET_ORCH = str(Path(sys.executable).with_name("resnet-orch"))

ENVIRON = {
    "AWS_ENDPOINT_URL": "http://10.0.0.5:8333",
    "AWS_REGION": "eu-west-1",
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI",
    "AWS_SESSION_TOKEN": "FwoGZXIvYXdzE",
    "AWS_PROFILE": "laptop",
    "AWS_SHARED_CREDENTIALS_FILE": "/home/me/.aws/credentials",
    "MLFLOW_TRACKING_URI": "http://mlflow:5000",
    "MLFLOW_TRACKING_USERNAME": "alice",
    "MLFLOW_TRACKING_PASSWORD": "hunter2",
    "MLFLOW_TRACKING_TOKEN": "dapi123",
    "MLFLOW_S3_ENDPOINT_URL": "https://admin:pa55@minio:9000",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
    "RESNET_ORCH_HOME": "/home/me/.resnet-orch",
    "RAY_AUTH_MODE": "token",
    "HOME": "/home/me",
}
SECRETS = {
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SHARED_CREDENTIALS_FILE",  # by its name: where credentials are, which a remote node has no use for either
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_S3_ENDPOINT_URL",  # a URL with a password in it
}


def test_secrets_are_known_by_name_or_by_a_password_in_a_url() -> None:
    assert {k for k, v in ENVIRON.items() if is_secret(k, v)} == SECRETS
    assert is_secret("MLFLOW_OPENAI_API_KEY") and is_secret("AWS_CONTAINER_AUTHORIZATION_TOKEN")
    assert not is_secret("MLFLOW_TRACKING_URI", "http://[broken")  # not a URL: judged by its name


def test_a_remote_cluster_gets_settings_only() -> None:
    assert job_settings(ENVIRON, local=False) == {
        "AWS_ENDPOINT_URL": "http://10.0.0.5:8333",
        "AWS_REGION": "eu-west-1",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
        "RAY_AUTH_MODE": "token",
    }
    # What `submit` names (never shows) as left behind for the cluster's own identity.
    assert withheld(ENVIRON) == sorted(SECRETS)


def test_submit_to_a_remote_cluster_names_the_secrets_it_keeps(monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.sweep.jobs import remote_warnings
    from orchestrator.sweep.state import SweepRecord

    for key, value in ENVIRON.items():
        monkeypatch.setenv(key, value)
    record = SweepRecord(
        sweep_id="s-1",
        name="s",
        sweep_file="/sweeps/s.yaml",
        storage="s3://bucket/sweeps/s-1",
        tracking_uri="http://mlflow:5000",
        experiment="s",
        registered_model="s",
    )
    (warning,) = remote_warnings(record)
    assert warning.startswith(f"not sent to the cluster: {', '.join(sorted(SECRETS))}; secrets stay on this machine")
    assert [k for k in SECRETS if ENVIRON[k] in warning] == []


def test_a_local_job_names_a_0600_file_and_its_runtime_env_holds_no_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "home" / "job-secrets" / "s-1.json"
    runtime_env = local_runtime_env(ENVIRON, path)
    shown = json.dumps(runtime_env)
    assert [ENVIRON[k] for k in SECRETS if ENVIRON[k] in shown] == []
    assert runtime_env["worker_process_setup_hook"] == SETUP_HOOK
    assert runtime_env["env_vars"][SECRETS_FILE_VAR] == str(path)
    assert runtime_env["env_vars"]["AWS_PROFILE"] == "laptop"  # this machine's files exist for a local job
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert json.loads(path.read_text()) == {k: ENVIRON[k] for k in SECRETS}

    # What Ray's worker setup hook (and the driver) does in the job's processes.
    monkeypatch.setenv(SECRETS_FILE_VAR, str(path))
    for key in SECRETS:
        monkeypatch.delenv(key, raising=False)
    load_job_secrets()
    assert {k: os.environ[k] for k in SECRETS} == {k: ENVIRON[k] for k in SECRETS}
    job_env.forget_job_secrets(path)
    with pytest.raises(RuntimeError, match="secrets file is gone"):
        load_job_secrets()
    # No secrets, no file and no hook.
    bare = local_runtime_env({"AWS_REGION": "eu-west-1"}, tmp_path / "none.json")
    assert bare == {"env_vars": {"AWS_REGION": "eu-west-1"}} and not (tmp_path / "none.json").exists()


def test_the_driver_keeps_its_aws_keys_in_a_file_tune_cannot_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI")
    monkeypatch.setenv("AWS_SECURITY_TOKEN", "FwoGZXIvYXdzE")
    monkeypatch.setenv("AWS_PROFILE", "laptop")
    before = dict(os.environ)
    with job_env.aws_keys_in_a_file():
        # What Tune copies into each trial actor's runtime env: nothing.
        assert not set(job_env.TUNE_COPIED_AWS) & set(os.environ)
        path = Path(os.environ["AWS_SHARED_CREDENTIALS_FILE"])
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        credentials = boto3.session.Session().get_credentials()
        assert (credentials.access_key, credentials.secret_key, credentials.token) == (
            "AKIAEXAMPLE",
            "wJalrXUtnFEMI",
            "FwoGZXIvYXdzE",
        )
    assert dict(os.environ) == before and not path.exists()


# ---- a real sweep ---------------------------------------------------------------------------------------------

_SWEEP = """
name: secrets
model: {{arch: test_resnet, num_classes: 8}}
recipe: {{image_size: 32, resize_size: 36, batch_size: 4, epochs: 1, steps_per_epoch: 2, precision: fp32}}
data: {{train: {shards}, val: {shards}, allow_val_equals_train: true, num_threads: 1, backend: torch}}
resources: {{workers: 1, cpus_per_worker: 1}}
checkpoint: {{every_steps: 2, keep: 1}}
storage: s3://{bucket}/sweeps
tracking: {{uri: {tracking_uri}, experiment: secrets-e2e, registered_model: secrets-e2e}}
"""


@pytest.fixture
def canary() -> dict[str, str]:
    """Distinctive fake secrets: found anywhere, they leaked."""
    tag = secrets.token_hex(6)
    return {
        "AWS_ACCESS_KEY_ID": f"AKIACANARY{tag.upper()}",
        "AWS_SECRET_ACCESS_KEY": f"canary-secret-{tag}",
        "MLFLOW_TRACKING_USERNAME": f"canary-user-{tag}",
        "MLFLOW_TRACKING_PASSWORD": f"canary-password-{tag}",
        "MLFLOW_TRACKING_TOKEN": f"canary-token-{tag}",
    }


@pytest.fixture
def canary_s3(canary: dict[str, str]) -> Iterator[SeaweedFS]:
    """An S3 server that answers only the canary keys: a trial that reads or writes it proves they reached it."""
    with SeaweedFS(access_key=canary["AWS_ACCESS_KEY_ID"], secret_key=canary["AWS_SECRET_ACCESS_KEY"]) as server:
        server.create_bucket("data")
        yield server


@pytest.fixture
def hostile_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A RESNET_ORCH_HOME whose path a shell would split: the driver's command line must quote it."""
    from orchestrator.stack import local_stack

    home = tmp_path / "home dir; exit 3"
    monkeypatch.setenv("RESNET_ORCH_HOME", str(home))
    for key in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    try:
        yield home
    finally:
        local_stack.down(home)


def _leaks(text: str, canary: dict[str, str]) -> list[str]:
    return [name for name, value in canary.items() if value in text]


def _files_text(root: Path) -> str:
    """Every regular file under `root`, as text (logs, state files, sockets skipped)."""
    parts = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            parts.append(path.read_bytes().decode("utf-8", errors="replace"))
    return "\n".join(parts)


def test_a_local_sweep_runs_on_its_secrets_and_shows_them_nowhere(
    hostile_home: Path,
    canary: dict[str, str],
    canary_s3: SeaweedFS,
    mlflow_server: str,
    tiny_images_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlflow.tracking import MlflowClient
    from ray.job_submission import JobSubmissionClient

    from orchestrator.stack import local_stack
    from pipelines.sharding import shard_dataset

    # The head starts knowing where S3 is but holding no key: whatever the trial reads or writes there, it does with
    # the secrets its job brought.
    monkeypatch.setenv("AWS_ENDPOINT_URL", canary_s3.endpoint_url)
    monkeypatch.setenv("AWS_REGION", canary_s3.region)
    for key in canary:
        monkeypatch.delenv(key, raising=False)
    head = local_stack.ensure_ray(hostile_home)
    for key, value in canary.items():
        monkeypatch.setenv(key, value)
    shards = "s3://data/tiny"
    shard_dataset(tiny_images_dir, shards, shard_bytes=60_000)
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(_SWEEP.format(shards=shards, bucket="data", tracking_uri=mlflow_server))

    submitted = subprocess.run(
        [RESNET_ORCH, "submit", str(sweep_file), "--wait"], capture_output=True, text=True, timeout=600, check=False
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    (sweep_id,) = [line.split(": ")[1] for line in submitted.stdout.splitlines() if line.startswith("sweep id: ")]
    status = subprocess.run(
        [RESNET_ORCH, "status", sweep_id, "--json"], capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(status.stdout)["trials"][0]["state"] == "SUCCEEDED"
    head_env = Path(f"/proc/{head.pid}/environ").read_bytes().decode(errors="replace")
    assert _leaks(head_env, canary) == []  # the head never had them: the job's file brought them to the trial

    # The cluster: the job as the Jobs API and dashboard show it (submission and driver jobs), and its logs.
    jobs = JobSubmissionClient(head.url)
    info = jobs.get_job_info(sweep_id)
    env_vars = info.runtime_env["env_vars"]
    assert env_vars[SECRETS_FILE_VAR] == str(job_env.secrets_path(hostile_home, sweep_id))
    assert env_vars["AWS_ENDPOINT_URL"] == canary_s3.endpoint_url  # settings do travel
    # Every process of the job asks the state API of this head, not whichever Ray it finds on the machine: Ray
    # Train's placement-group cleaner then sees its controller end, and exits with it.
    assert env_vars["RAY_API_SERVER_ADDRESS"] == head.url
    assert alive_cleaners(head.url) == []
    assert not set(canary) & set(env_vars)
    listed = json.dumps([job.dict() for job in jobs.list_jobs()], default=str)
    seen = {
        "Jobs API": json.dumps(info.dict(), default=str) + listed,
        "job log": jobs.get_job_logs(sweep_id),
        "status --json": status.stdout,
        "submit output": submitted.stdout + submitted.stderr,
        "sweep folder": _files_text(hostile_home / "sweeps" / sweep_id),
        "Ray's files (logs, session)": _files_text(Path(local_stack.recorded(hostile_home).ray_temp_dir)),
        "MLflow server log": (tmp_path / "mlflow-server.log").read_text(errors="replace"),
    }
    assert f"sweep {sweep_id} finished: SUCCEEDED" in seen["job log"]  # the whole log: what we search is real
    # MLflow: every run's params, tags and artifacts, and the registered version's tags.
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    experiment = client.get_experiment_by_name("secrets-e2e")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2  # the sweep's parent run and its trial's
    seen["MLflow params and tags"] = json.dumps([(r.data.params, r.data.tags) for r in runs])
    for run in runs:
        local = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "artifacts" / run.info.run_id)))
        seen[f"MLflow artifacts of {run.info.run_id}"] = _files_text(local)
    (version,) = client.search_model_versions("name = 'secrets-e2e'")
    seen["registered model"] = json.dumps(version.tags)
    # The sweep's storage: its progress copy, Tune state and checkpoints.
    s3 = canary_s3.client()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="data", Prefix="sweeps/").get("Contents", [])]
    # The driver wrote its progress copy (boto3) and Tune's experiment state (pyarrow) with the keys it kept in a
    # credentials file; the trial wrote its checkpoint with the keys its worker loaded from the job's file.
    assert any(key.endswith("progress.json") for key in keys)
    assert any("experiment_state" in key for key in keys), keys
    assert any("checkpoint" in key for key in keys), keys
    seen["sweep storage"] = "\n".join(
        s3.get_object(Bucket="data", Key=key)["Body"].read().decode("utf-8", errors="replace") for key in keys
    )
    leaked = {where: names for where, text in seen.items() if (names := _leaks(text, canary))}
    assert leaked == {}
    assert not job_env.secrets_path(hostile_home, sweep_id).exists()  # the driver removed it when it ended
