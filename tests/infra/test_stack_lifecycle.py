"""`resnet-orch up` -> `stack status` -> a Ray job and an MLflow run against the stack -> `down`.

Real processes throughout (Ray head with dashboard, `mlflow server`, SeaweedFS), driven through the CLI in
subprocesses as a user would. `down` must leave no process of the stack alive and none of its ports open.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from orchestrator import stack
from orchestrator.ray_head import TRIAL_DRIVER_SLOTS

pytestmark = pytest.mark.slow

# The lead mounts cli_stack on `resnet-orch`; this runs the same commands without depending on that.
_CLI = "import typer; from orchestrator import cli_stack; app = typer.Typer(); cli_stack.register(app); app()"

_JOB_SCRIPT = textwrap.dedent(
    """
    import os, tempfile
    import mlflow, ray

    ray.init()  # the job's driver: RAY_ADDRESS is set by the Jobs API

    @ray.remote
    def square(x: int) -> int:
        return x * x

    total = sum(ray.get([square.remote(i) for i in range(5)]))
    mlflow.set_experiment("stack-smoke")
    with mlflow.start_run() as run:
        mlflow.log_metric("sum_of_squares", total)
        path = os.path.join(tempfile.mkdtemp(), "note.txt")
        with open(path, "w") as f:
            f.write("artifact through the MLflow server into S3")
        mlflow.log_artifact(path)
    print("RESULT", run.info.run_id, total, int(ray.cluster_resources().get("resnet_orch_trial_driver", 0)))
    """
)


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


def _run_job(state: stack.StackState, script: Path) -> tuple[str, str]:
    from ray.job_submission import JobStatus, JobSubmissionClient

    token_path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    token = os.environ.get("RAY_AUTH_TOKEN") or token_path.read_text().strip()
    client = JobSubmissionClient(state.services[stack.RAY].url, headers={"Authorization": f"Bearer {token}"})
    job_id = client.submit_job(
        entrypoint=f"python {script}",
        runtime_env={"env_vars": {"MLFLOW_TRACKING_URI": state.services[stack.MLFLOW].url}},
    )
    deadline = time.monotonic() + 240
    status = client.get_job_status(job_id)
    while not status.is_terminal() and time.monotonic() < deadline:
        time.sleep(1)
        status = client.get_job_status(job_id)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs
    return job_id, logs


def test_up_status_job_down(tmp_path: Path) -> None:
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

        # A real job on the stack's Ray, logging to its MLflow, whose artifact lands in its S3.
        script = tmp_path / "job.py"
        script.write_text(_JOB_SCRIPT)
        _, logs = _run_job(state, script)
        result_line = next(line for line in logs.splitlines() if line.startswith("RESULT "))
        run_id, total, driver_slots = result_line.split()[1:]
        assert int(total) == 0 + 1 + 4 + 9 + 16
        # `resnet-orch submit` places trial drivers on this resource: the stack's head must offer it.
        assert int(driver_slots) == TRIAL_DRIVER_SLOTS

        from mlflow.tracking import MlflowClient

        run = MlflowClient(tracking_uri=state.services[stack.MLFLOW].url).get_run(run_id)
        assert run.data.metrics["sum_of_squares"] == 30.0
        s3_env = state.client_env()
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=s3_env["AWS_ENDPOINT_URL"],
            aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"],
            region_name=s3_env["AWS_REGION"],
        )
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=state.bucket, Prefix="mlflow/").get("Contents", [])]
        assert any(key.endswith(f"{run_id}/artifacts/note.txt") for key in keys), keys

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
