"""infra/aws/spot-watch.sh against a fake EC2 instance metadata service: silent while `spot/instance-action` is 404,
then one `ray drain-node` for preemption with EC2's deadline less the script's margin."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "infra" / "aws" / "spot-watch.sh"
NOTICE_AHEAD_S = 120  # EC2 announces a reclaim two minutes ahead
MARGIN_S = 10  # the script's margin

pytestmark = pytest.mark.skipif(shutil.which("wget") is None, reason="the script uses wget, as the image has it")


class FakeImds(BaseHTTPRequestHandler):
    """IMDSv2: a token for a PUT, the instance action (for that token) once `notice` is set."""

    notice: str | None = None
    polls = 0

    def do_PUT(self) -> None:
        self._answer(200, "token-1" if self.path == "/latest/api/token" else "")

    def do_GET(self) -> None:
        if self.path != "/latest/meta-data/spot/instance-action" or self.headers["X-aws-ec2-metadata-token"] != (
            "token-1"
        ):
            self._answer(401, "")
            return
        type(self).polls += 1
        self._answer(404, "") if self.notice is None else self._answer(200, self.notice)

    def _answer(self, code: int, body: str) -> None:
        self.send_response(code)
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def imds() -> Iterator[str]:
    FakeImds.notice, FakeImds.polls = None, 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeImds)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_a_spot_notice_drains_the_node_for_preemption_with_ec2s_deadline(imds: str, tmp_path: Path) -> None:
    calls = tmp_path / "ray-args.json"
    fake_ray = tmp_path / "ray"
    fake_ray.write_text(f'#!/usr/bin/env python3\nimport json, sys\njson.dump(sys.argv[1:], open("{calls}", "w"))\n')
    fake_ray.chmod(0o755)
    env = {**os.environ, "IMDS_URL": imds, "POLL_S": "0.2", "RAY_EXE": str(fake_ray), "RAY_HEAD_IP": "10.0.0.5"}
    watcher = subprocess.Popen([str(SCRIPT)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while FakeImds.polls < 3:  # it polls and stays quiet while there is no notice
            assert watcher.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        assert not calls.exists()
        reclaim = datetime.now(UTC) + timedelta(seconds=NOTICE_AHEAD_S)
        FakeImds.notice = json.dumps({"action": "terminate", "time": reclaim.strftime("%Y-%m-%dT%H:%M:%SZ")})
        output, _ = watcher.communicate(timeout=60)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    assert watcher.returncode == 0, output
    args = json.loads(calls.read_text())
    assert args[:4] == [
        "drain-node",
        "--address=10.0.0.5:6379",
        "--reason=DRAIN_NODE_REASON_PREEMPTION",
        f"--reason-message=EC2 spot interruption: {FakeImds.notice}",
    ]
    remaining = int(args[4].removeprefix("--deadline-remaining-seconds="))
    # The notice's time has whole seconds; the script ran within seconds of it being set.
    assert NOTICE_AHEAD_S - MARGIN_S - 5 <= remaining <= NOTICE_AHEAD_S - MARGIN_S
    assert "draining this node for preemption" in output
