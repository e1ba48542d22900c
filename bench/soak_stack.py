"""The local stack of the chaos soak (`bench/chaos.py`): SeaweedFS S3, `mlflow server` and the home's Ray head, each a
process of this machine that the soak stops and starts again on the same port and data, as an outage would.

SeaweedFS is the product's supervisor (`orchestrator.stack.seaweedfs`: `interrupt` keeps its ports and data), the
MLflow server is started and stopped through `orchestrator.stack.processes` on one fixed port, and the Ray head is the
one `resnet-orch submit` starts for this home (`local_stack.ensure_ray`), stopped by `local_stack.down`. Nothing here
signals a process the soak did not start.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import numpy as np

from orchestrator.stack import local_stack, mlflow_server, processes
from orchestrator.stack.seaweedfs import SeaweedFS

RESNET_ORCH = str(Path(sys.executable).with_name("resnet-orch"))
BUCKET = "soak"
# `mlflow server` took 90-220 s to start on this machine under load (docs/reliability.md).
MLFLOW_START_S = 400.0


def write_images(root: Path, classes: int, per_class: int, seed: int = 0) -> Path:
    """Small real JPEGs in ImageNet-style class folders (`n00000000/img0.JPEG`): random smooth colour fields, so
    decoding costs next to nothing and the soak's time goes to what it measures."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"n{c:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = (int(v) for v in rng.integers(40, 80, size=2))
            small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
            Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR).save(folder / f"img{i}.JPEG", quality=90)
    return root


class RestartableMlflow:
    """`mlflow server` (sqlite, artifacts proxied into S3) on one port for the soak's whole life: `interrupt()` stops
    its process group by pid, `start()` brings it back on the same port and database."""

    def __init__(self, s3: SeaweedFS, root: Path) -> None:
        self.port = processes.free_port()
        self.url = f"http://{processes.LOOPBACK}:{self.port}"
        self._cmd = mlflow_server.server_command(
            host=processes.LOOPBACK,
            port=self.port,
            backend_store_uri=f"sqlite:///{root / 'mlflow.db'}",
            artifacts_destination=f"s3://{BUCKET}/mlflow",
        )
        self._env = mlflow_server.server_env(s3.settings)
        self._log = root / "mlflow-server.log"
        self._record: processes.ServiceRecord | None = None

    def start(self) -> None:
        self._record = processes.start(
            "mlflow",
            self._cmd,
            self._env,
            log=self._log,
            url=self.url,
            ports=(self.port,),
            probe=lambda: mlflow_server.healthy(self.url),
            timeout_s=MLFLOW_START_S,
        )

    def interrupt(self) -> None:
        record, self._record = self._record, None
        if record is not None:
            processes.stop(record, timeout_s=15)


class SoakStack:
    """S3, MLflow and a private RESNET_ORCH_HOME under `root`; while it is entered this process's environment points
    at them (AWS_*, RESNET_ORCH_HOME, token auth), so `resnet-orch` commands and the library calls here see the same
    stack. Leaving stops everything it started, the home's Ray head included."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.s3 = SeaweedFS(data_dir=root / "s3")
        self._mlflow: RestartableMlflow | None = None
        self._env = contextlib.ExitStack()

    def __enter__(self) -> SoakStack:
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self.s3.start()
            self.s3.create_bucket(BUCKET)
            self._env.enter_context(
                processes.environment(
                    remove=("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI"),
                    RESNET_ORCH_HOME=str(self.home),
                    RAY_AUTH_MODE="token",
                    **self.s3.aws_env(),
                )
            )
            self._mlflow = RestartableMlflow(self.s3, self.root)
            self._mlflow.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            local_stack.down(self.home)
        if self._mlflow is not None:
            self._mlflow.interrupt()
        self.s3.stop()
        self._env.close()

    @property
    def mlflow(self) -> RestartableMlflow:
        if self._mlflow is None:
            raise RuntimeError("the soak's stack is not up; enter it first")
        return self._mlflow

    def resnet_orch(self, *args: str, timeout_s: float = 900) -> subprocess.CompletedProcess[str]:
        """The installed console script, as a user runs it, in this stack's environment."""
        return subprocess.run([RESNET_ORCH, *args], capture_output=True, text=True, timeout=timeout_s, check=False)

    @property
    def ray_temp_dir(self) -> str | None:
        state = local_stack.recorded(self.home)
        return state.ray_temp_dir if state is not None else None

    @property
    def dashboard_url(self) -> str | None:
        state = local_stack.recorded(self.home)
        ray = state.services.get(local_stack.RAY) if state is not None else None
        return ray.url if ray is not None else None


def submitted_id(stdout: str) -> str:
    ids = [line.removeprefix("sweep id: ") for line in stdout.splitlines() if line.startswith("sweep id: ")]
    if len(ids) != 1:
        raise RuntimeError(f"`resnet-orch submit` printed no sweep id:\n{stdout}")
    return ids[0]


# ---- the sweep's own processes ------------------------------------------------------------------------------------

# Ray processes of the head that outlive every sweep (`ray::<title>`): its agents, the detached actors Ray Train and
# Ray Data share across runs (`sweep/cleanup.py`), and idle pooled workers. Any other `ray::` process under the head
# belongs to a sweep (its job supervisor, Tune trial actor, Train controller and workers, their queues and helpers),
# and only one sweep runs on the soak's private head at a time.
SHARED_RAY_TITLES = ("DashboardAgent", "RuntimeEnvAgent", "_AutoscalingCoordinatorActor", "TrainStateActor", "IDLE")


def driver_pids(sweep_dir: Path) -> list[int]:
    """The sweep's driver processes (`python -m orchestrator.sweep.driver SWEEP_DIR`)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if "orchestrator.sweep.driver" in cmdline and str(sweep_dir) in cmdline:
            found.append(int(proc.info["pid"]))
    return found


def sweep_ray_processes(ray_temp_dir: str) -> list[str]:
    """`pid: title` of the Ray processes under this head's raylet that are not shared by every sweep."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if "raylet" not in cmdline or ray_temp_dir not in cmdline:
            continue
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                title = " ".join(child.cmdline()).strip()
                name = title.removeprefix("ray::")
                if title.startswith("ray::") and not name.startswith(SHARED_RAY_TITLES):
                    found.append(f"{child.pid}: {title}")
    return found


def leftover_placement_groups(sweep_id: str, dashboard_url: str) -> list[str]:
    """Placement groups still alive that the sweep's ended driver jobs created (`sweep.cleanup`)."""
    from orchestrator.sweep.cleanup import orphan_placement_groups

    with processes.environment(RAY_ADDRESS=dashboard_url):
        return [f"{pg} (job {job})" for pg, job in orphan_placement_groups(sweep_id)]


def leftovers(sweep_id: str, sweep_dir: Path, stack: SoakStack, grace_s: float = 60.0) -> list[str]:
    """What the ended sweep left running: its driver, its Ray processes, its placement groups. Ray tears actors down
    asynchronously, so each is given `grace_s` to go before it counts."""
    deadline = time.monotonic() + grace_s
    while True:
        temp_dir, url = stack.ray_temp_dir, stack.dashboard_url
        found = [f"driver {pid}" for pid in driver_pids(sweep_dir)]
        found += sweep_ray_processes(temp_dir) if temp_dir else []
        found += leftover_placement_groups(sweep_id, url) if url else []
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(2)
