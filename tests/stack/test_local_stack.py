"""Fast checks of the local stack's bookkeeping: state file, paths, stopping stubborn processes and never a stranger."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.stack import local_stack as stack
from orchestrator.stack import processes
from orchestrator.stack.processes import ServiceRecord


def test_dead_service_is_reported_unhealthy(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    record = ServiceRecord("mlflow", gone.pid, "http://127.0.0.1:1", (1,), "/x.log", "1.00")
    state = stack.StackState("127.0.0.1", "b", "", "/tmp/r", "/c.json", {"mlflow": record})
    health = {h.name: h for h in stack.check_health(state)}
    assert not health["mlflow"].healthy and f"process {gone.pid} is gone" in health["mlflow"].detail
    assert health["s3"].detail == "not started"


def test_down_kills_a_group_that_ignores_sigterm_and_its_detached_child(tmp_path: Path) -> None:
    # A leader that ignores SIGTERM, with a child in a session of its own (like a Ray job driver).
    script = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    leader = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert leader.stdout is not None
    child_pid = int(leader.stdout.readline())
    time.sleep(0.5)  # let the leader install its SIGTERM handler
    paths = stack.StackPaths.from_env(tmp_path)
    paths.root.mkdir(parents=True)
    record = ServiceRecord("mlflow", leader.pid, "http://127.0.0.1:1", (), "/x.log", processes.identity(leader.pid))
    state = stack.StackState("127.0.0.1", "b", "", "/tmp/r", str(paths.credentials_file), {"mlflow": record})
    paths.state_file.write_text(json.dumps(state.to_json()))

    started = time.monotonic()
    assert stack.down(tmp_path, timeout_s=2) == ["mlflow"]
    assert time.monotonic() - started < 30
    assert leader.poll() is not None  # SIGKILLed after ignoring SIGTERM for 2 s
    stat = Path(f"/proc/{child_pid}/stat")
    assert not stat.exists() or stat.read_text().split(") ")[1][0] == "Z"
    assert not paths.state_file.exists()
    with pytest.raises(ProcessLookupError):
        os.killpg(leader.pid, 0)


def test_down_never_signals_a_process_that_reused_a_recorded_pid(tmp_path: Path) -> None:
    # A stranger (its own session, so its pid is also a process-group id) holding a pid the state records,
    # as after the service died and the pid was handed out again.
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    try:
        started_at = float(processes.identity(stranger.pid))
        paths = stack.StackPaths.from_env(tmp_path)
        paths.root.mkdir(parents=True)
        records = {
            "mlflow": ServiceRecord(
                "mlflow", stranger.pid, "http://127.0.0.1:1", (), "/x.log", f"{started_at - 1:.2f}"
            ),
            "s3": ServiceRecord("s3", stranger.pid, "http://127.0.0.1:1", (), "/x.log", "0.00"),
        }
        state = stack.StackState("127.0.0.1", "b", "", "/tmp/r", str(paths.credentials_file), records)
        paths.state_file.write_text(json.dumps(state.to_json()))
        assert {h.name: h.healthy for h in stack.check_health(state)} == {"s3": False, "mlflow": False, "ray": False}
        assert stack.down(tmp_path, timeout_s=2) == ["mlflow", "s3"]
        assert stranger.poll() is None  # still running: never signalled
    finally:
        stranger.kill()
        stranger.wait()
