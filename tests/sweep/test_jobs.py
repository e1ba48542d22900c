"""The driver job's side of a sweep: which cluster is this machine (what a driver gets from it: test_job_env.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.sweep.jobs import is_this_machine, started_here


@pytest.mark.parametrize(
    ("url", "local"),
    [("http://127.0.0.1:8265", True), ("http://localhost:8265", True), ("http://192.0.2.1:8265", False)],
)
def test_local_cluster_detection(url: str, local: bool) -> None:
    # A head on this machine shares RESNET_ORCH_HOME with its driver; a remote one (192.0.2.0/24 is TEST-NET) does not.
    assert is_this_machine(url) is local


def test_an_address_this_home_did_not_start_is_another_cluster(home: Path) -> None:
    # A port-forward to a cluster elsewhere answers on 127.0.0.1 too: its driver cannot run this machine's venv
    # on this machine's sweep folder (that sent the job a command line the cluster lacks: INTERRUPTED at once).
    assert started_here("http://127.0.0.1:8265") is False
