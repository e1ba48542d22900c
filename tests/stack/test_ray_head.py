"""The one `ray start --head` command line (ray_head.head_launch) of the local head, for `up` and `submit` alike, and
its auth token."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest

from orchestrator.stack.processes import executable
from orchestrator.stack.ray_head import TRIAL_DRIVER_RESOURCE, TRIAL_DRIVER_SLOTS, ensure_auth_token, head_launch


def _flags(cmd: list[str]) -> dict[str, str]:
    return dict(arg[2:].split("=", 1) for arg in cmd if arg.startswith("--") and "=" in arg)


def test_every_port_is_given_and_distinct(tmp_path: Path) -> None:
    launch = head_launch("ray", tmp_path)
    flags = _flags(launch.cmd)
    port_flags = {name: int(value) for name, value in flags.items() if re.fullmatch(r"(.+-)?port", name)}
    # GCS, dashboard and the seven that default to fixed numbers (10001, 52365, ...).
    assert len(port_flags) == 9
    env_ports = [int(launch.env["DASHBOARD_METRIC_PORT"]), int(launch.env["AUTOSCALER_METRIC_PORT"])]
    assert len(set(port_flags.values()) | set(env_ports)) == 11
    assert (port_flags["port"], port_flags["dashboard-port"]) == (launch.gcs_port, launch.dashboard_port)


def test_loopback_head_stays_on_loopback_with_the_trial_driver_resource(tmp_path: Path) -> None:
    launch = head_launch("ray", tmp_path, num_cpus=3)
    flags = _flags(launch.cmd)
    assert launch.cmd[:3] == ["ray", "start", "--head"] and "--block" not in launch.cmd
    assert flags["node-ip-address"] == flags["dashboard-host"] == "127.0.0.1"
    assert flags["temp-dir"] == str(tmp_path) and flags["num-cpus"] == "3"
    assert json.loads(flags["resources"]) == {TRIAL_DRIVER_RESOURCE: TRIAL_DRIVER_SLOTS}
    assert launch.env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert launch.env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] == "0"


def test_stack_options_block_and_bind_elsewhere(tmp_path: Path) -> None:
    launch = head_launch("ray", tmp_path, host="10.0.0.5", block=True)
    flags = _flags(launch.cmd)
    assert "--block" in launch.cmd and "num-cpus" not in flags
    assert flags["node-ip-address"] == flags["dashboard-host"] == "10.0.0.5"
    # Off loopback Ray may pick the routable IP itself: the macOS switch would pin it to loopback.
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in launch.env


def test_the_auth_token_is_readable_by_this_user_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The head listens on 127.0.0.1, which every local user reaches; Ray itself writes the token 0644.
    monkeypatch.setenv("HOME", str(tmp_path))
    for key in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(key, raising=False)
    ensure_auth_token(executable("ray"))
    token = tmp_path / ".ray" / "auth_token"
    assert len(token.read_text().strip()) >= 32
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
