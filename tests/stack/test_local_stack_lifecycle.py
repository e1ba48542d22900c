"""`resnet-orch up` -> `stack status` -> `resnet-orch submit` of a sweep against the stack -> `down`; and the README's
quick start (`submit --wait` on the embedded default) -> `stack status` -> `down`.

Real processes throughout (Ray head with dashboard, `mlflow server`, SeaweedFS), driven through the CLI in
subprocesses as a user would. The sweep's shards are read from the stack's S3, its trial runs on the stack's
Ray, its runs, registered model and artifacts land in the stack's MLflow and S3. `down` must leave no process
of the stack alive (job driver and Ray workers included) and none of its ports open.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.stack import local_stack as stack
from orchestrator.stack.ray_head import TRIAL_DRIVER_RESOURCE, TRIAL_DRIVER_SLOTS

pytestmark = pytest.mark.slow

# `resnet-orch ...`, run with this interpreter (the console script may not be on PATH in a test run).
_CLI = "from orchestrator.cli import app; app()"

# A CPU-sized sweep: the tiny CI model on 32 px crops of the generated images, one epoch of two steps. As is, it is
# the quick start's shape (embedded MLflow and storage under the home, Ray started by `submit` itself); the stack's
# sweep adds its storage and tracking server.
_TINY_SWEEP = """
name: {name}
model: {{arch: test_resnet, num_classes: {classes}}}
recipe: {{image_size: 32, resize_size: 36, batch_size: 4, epochs: 1, steps_per_epoch: 2, precision: fp32}}
data: {{train: {shards}, val: {shards}, allow_val_equals_train: true, num_threads: 1}}
resources: {{workers: 1, cpus_per_worker: 1}}
"""
_ON_THE_STACK = """storage: {storage}
tracking: {{uri: {tracking_uri}, experiment: stack-e2e, registered_model: stack-e2e}}
"""


def _cli(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _CLI, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _descendants_and_group(pid: int) -> set[int]:
    """Every live process of a service: its process group and all descendants (Ray workers, job drivers)."""
    members: set[int] = set()
    parent_of: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2 :].split()
        if fields[0] == "Z":
            continue
        parent_of[int(entry)] = int(fields[1])
        if int(fields[2]) == pid:
            members.add(int(entry))
    changed = True
    while changed:
        changed = False
        for child, parent in parent_of.items():
            if parent in members | {pid} and child not in members:
                members.add(child)
                changed = True
    return members


def _listening_sockets(pids: set[int]) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state held by one of `pids` (from /proc)."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in inodes:  # 0A: LISTEN
                continue
            hex_addr, hex_port = cols[1].split(":")
            found.add((_decode_address(hex_addr), int(hex_port, 16)))
    return found


def _decode_address(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return ".".join(str(b) for b in reversed(raw))
    words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
    v6 = b"".join(words)
    if v6[:12] == b"\x00" * 10 + b"\xff\xff":  # IPv4-mapped (::ffff:a.b.c.d)
        return ".".join(str(b) for b in v6[12:])
    return ":".join(v6[i : i + 2].hex() for i in range(0, 16, 2))


def _classes(images_dir: Path) -> int:
    """Distinct class indexes in the fixture's labels.tsv (columns: file, wnid, class index, name)."""
    rows = (images_dir / "labels.tsv").read_text().splitlines()
    return len({row.split("\t")[2] for row in rows if row and not row.startswith("file")})


def _wait_for_job(state: stack.StackState, job_id: str, timeout_s: float = 420) -> str:
    """Follow the sweep's Ray job to its end through the stack's Jobs API (with the auth token)."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    token_path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    token = os.environ.get("RAY_AUTH_TOKEN") or token_path.read_text().strip()
    client = JobSubmissionClient(state.services[stack.RAY].url, headers={"Authorization": f"Bearer {token}"})
    deadline = time.monotonic() + timeout_s
    status = client.get_job_status(job_id)
    while not status.is_terminal() and time.monotonic() < deadline:
        time.sleep(2)
        status = client.get_job_status(job_id)
    logs: str = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-5000:]
    return logs


def test_up_status_sweep_down(tmp_path: Path, tiny_images_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "RESNET_ORCH_HOME": str(home), "RAY_AUTH_MODE": "token"}

    first = _cli("up", "--num-cpus", "2", env=env)
    try:
        assert first.returncode == 0, first.stdout + first.stderr
        state, health = stack.status(home)
        assert state is not None
        assert [(h.name, h.healthy) for h in health] == [("s3", True), ("mlflow", True), ("ray", True)]
        for record in state.services.values():
            assert record.url.startswith("http://127.0.0.1:")
            assert record.url in first.stdout

        # Every socket any stack process listens on is bound to loopback.
        before = {name: _descendants_and_group(r.pid) for name, r in state.services.items()}
        all_pids = set().union(*before.values())
        sockets = _listening_sockets(all_pids)
        assert {port for _, port in sockets} >= {p for r in state.services.values() for p in r.ports}
        assert {address for address, _ in sockets} == {"127.0.0.1"}, sockets

        # A second `up` reuses all three: same pids, nothing started.
        second = _cli("up", env=env)
        assert second.returncode == 0, second.stdout + second.stderr
        assert second.stdout.count("reused") == 3, second.stdout
        state_again, _ = stack.status(home)
        assert state_again == state

        status_run = _cli("stack", "status", env=env)
        assert status_run.returncode == 0, status_run.stdout + status_run.stderr
        assert status_run.stdout.count("healthy") == 3

        # A dead service: `stack status` says so, and `up` restarts that one only.
        os.killpg(state.services[stack.MLFLOW].pid, signal.SIGKILL)
        dead = _cli("stack", "status", env=env)
        assert dead.returncode == 1
        assert [(h.name, h.healthy) for h in stack.status(home)[1]] == [("s3", True), ("mlflow", False), ("ray", True)]
        third = _cli("up", env=env)
        assert third.returncode == 0, third.stdout + third.stderr
        assert (third.stdout.count("reused"), third.stdout.count("started")) == (2, 1), third.stdout
        restarted, health = stack.status(home)
        assert restarted is not None and all(h.healthy for h in health)
        assert restarted.services[stack.MLFLOW].pid != state.services[stack.MLFLOW].pid
        assert {n: restarted.services[n] for n in (stack.S3, stack.RAY)} == {
            n: state.services[n] for n in (stack.S3, stack.RAY)
        }
        state = restarted
        all_pids |= _descendants_and_group(state.services[stack.MLFLOW].pid)
        exports = _cli("stack", "env", env=env)
        assert f"export RAY_API_SERVER_ADDRESS={state.services[stack.RAY].url}\n" in exports.stdout
        assert f"export MLFLOW_TRACKING_URI={state.services[stack.MLFLOW].url}\n" in exports.stdout

        # A sweep through `resnet-orch submit`, pointed at the stack by the variables `stack env` prints:
        # shards in the stack's S3, trials on its Ray, runs and the registered model in its MLflow.
        client_env = state.client_env()
        for key, value in client_env.items():
            monkeypatch.setenv(key, value)
        from pipelines.sharding import shard_dataset

        shards = f"s3://{state.bucket}/data/tiny"
        shard_dataset(tiny_images_dir, shards, shard_bytes=60_000)
        sweep_file = tmp_path / "sweep.yaml"
        sweep_file.write_text(
            _TINY_SWEEP.format(name="stack-e2e", classes=_classes(tiny_images_dir), shards=shards)
            + _ON_THE_STACK.format(storage=tmp_path / "storage", tracking_uri=client_env["MLFLOW_TRACKING_URI"])
        )
        submitted = _cli("submit", str(sweep_file), env={**env, **client_env})
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        job_id = next(line.split()[1] for line in submitted.stdout.splitlines() if line.startswith("job: "))
        assert f"dashboard: {state.services[stack.RAY].url}" in submitted.stdout
        logs = _wait_for_job(state, job_id)
        assert "finished: SUCCEEDED" in logs
        # The trial driver ran on the stack head's trial-driver resource, not on a CPU.
        assert f"/{TRIAL_DRIVER_SLOTS:.1f} {TRIAL_DRIVER_RESOURCE}" in logs  # Tune's resource line

        from mlflow.tracking import MlflowClient

        mlflow_client = MlflowClient(tracking_uri=client_env["MLFLOW_TRACKING_URI"])
        experiment = mlflow_client.get_experiment_by_name("stack-e2e")
        assert experiment is not None
        runs = mlflow_client.search_runs([experiment.experiment_id])
        assert {run.info.status for run in runs} == {"FINISHED"}
        trial_runs = [run for run in runs if "val_top1_err" in run.data.metrics]
        assert len(trial_runs) == 1
        (version,) = mlflow_client.search_model_versions("name='stack-e2e'")
        assert version.run_id == trial_runs[0].info.run_id
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=client_env["AWS_ENDPOINT_URL"],
            aws_access_key_id=client_env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=client_env["AWS_SECRET_ACCESS_KEY"],
            region_name=client_env["AWS_REGION"],
        )
        listed = s3.list_objects_v2(Bucket=state.bucket, Prefix=f"mlflow/{experiment.experiment_id}/")
        keys = [obj["Key"] for obj in listed.get("Contents", [])]
        # Artifacts went through the MLflow server into the stack's S3: the trial's checkpoint among them.
        assert any(key.endswith(f"{trial_runs[0].info.run_id}/artifacts/checkpoint/model.pt") for key in keys), keys

        # Processes of the job (its driver, Ray workers) exist now and must be gone after `down` too.
        all_pids |= _descendants_and_group(state.services[stack.RAY].pid)
        sockets |= _listening_sockets(all_pids)
    finally:
        stopped = _cli("down", env=env)

    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "stopped: ray, mlflow, s3" in stopped.stdout
    survivors = [pid for pid in all_pids if Path(f"/proc/{pid}").exists() and _alive(pid)]
    assert survivors == []
    assert _listening_sockets_anywhere({port for _, port in sockets}) == set()
    assert not (home / "stack" / "state.json").exists()

    after = _cli("stack", "status", env=env)
    assert after.returncode == 1
    assert "no local stack is running" in after.stderr
    again = _cli("down", env=env)
    assert again.returncode == 0 and "no local stack is running" in again.stdout


def test_the_head_a_local_submit_starts_is_listed_and_stopped_by_down(
    tmp_path: Path, tiny_images_dir: Path, tiny_shards_local: str
) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "RESNET_ORCH_HOME": str(home), "RAY_AUTH_MODE": "token", "COLUMNS": "200"}
    for key in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(
        _TINY_SWEEP.format(name="quickstart-head", classes=_classes(tiny_images_dir), shards=tiny_shards_local)
    )
    pids: set[int] = set()
    ports: set[int] = set()
    temp_dir = ""
    try:
        submitted = _cli("submit", str(sweep_file), "--wait", env=env, timeout=900)
        assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]

        # One record of what runs for this home: the Ray head `submit` started is the stack's Ray.
        state, health = stack.status(home)
        assert state is not None and list(state.services) == [stack.RAY]
        assert [(h.name, h.healthy) for h in health] == [("s3", False), ("mlflow", False), ("ray", True)]
        head = state.services[stack.RAY]
        assert f"dashboard: {head.url}" in submitted.stdout
        listed = _cli("stack", "status", env=env)
        assert listed.returncode == 1  # S3 and MLflow were never started
        assert head.url in listed.stdout and "healthy" in listed.stdout and "not started" in listed.stdout

        pids = _descendants_and_group(head.pid)
        ports = set(head.ports) | {port for _, port in _listening_sockets(pids)}
        temp_dir = state.ray_temp_dir
        assert len(pids) > 1 and ports >= set(head.ports)
        stopped = _cli("down", env=env)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert "stopped: ray" in stopped.stdout
    finally:
        stack.down(home)  # what an assertion above left running

    assert [pid for pid in pids if _alive(pid)] == []
    assert _listening_sockets_anywhere(ports) == set()
    assert _processes_naming(temp_dir) == [] and _processes_naming(str(home)) == []
    again = _cli("down", env=env)
    assert again.returncode == 0 and "no local stack is running" in again.stdout


def _processes_naming(text: str) -> list[str]:
    """Command lines of live processes that mention `text` (a home, a Ray temp dir)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or not _alive(int(entry)):
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(cmdline)
    return found


def _alive(pid: int) -> bool:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return raw[raw.rfind(")") + 2] != "Z"


def _listening_sockets_anywhere(ports: set[int]) -> set[int]:
    """Which of `ports` any process on this machine still listens on."""
    still = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            port = int(cols[1].split(":")[1], 16)
            if cols[3] == "0A" and port in ports:
                still.add(port)
    return still
