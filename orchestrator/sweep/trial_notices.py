"""The notices a trial's Ray Train controller sends its Tune trial: the workers restart, wait for nodes, started.

These callbacks run on the controller, a new process for every trial: this module imports Ray Train's callback
bases and nothing heavier (no torch, no MLflow), so unpickling them costs the controller nothing it does not load
anyway.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from ray.train.v2._internal.execution.callback import WorkerGroupCallback
from ray.train.v2.api.callback import UserCallback

from orchestrator.training import metric_names

RESTART_KEY = "resnet_orch_restarting"
# A result carrying only this key tells the sweep driver whether the trial's workers wait for nodes (1) or started (0).
WAITING_KEY = "resnet_orch_waiting_for_nodes"
WAITING_FOR_NODES = "waiting for nodes"
# A worker group not started this long after asking for its placement group waits for nodes (the autoscaler's, or
# running trials' to free up); starting workers on nodes that are up takes less. The variable overrides it (drills).
WAITING_GRACE_S = 5.0
WAITING_GRACE_ENV = "RESNET_ORCH_WAITING_GRACE_S"


def tune_queue() -> Any:
    """The queue from the Ray Train controller to this Tune trial's driver: every item put there is a result of the
    trial (the trial's reports, `trial.build_trainer`, and the notices below)."""
    from ray.train._internal.session import get_session

    session = get_session()
    if session is None:
        raise RuntimeError("a trial notice needs a Tune trial's session; create it inside the trial function")
    return session._get_or_create_inter_actor_queue()


class RestartNotice(UserCallback):
    """On the Ray Train controller: tells the sweep driver at once that the trial's workers failed and restart.

    It goes through the same controller -> Tune queue as the trial's reports (a result with only `RESTART_KEY`), so
    `status` shows RESTARTING while Ray Train replaces the worker group.
    """

    def __init__(self) -> None:
        self._queue = tune_queue()

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        self._queue.put({RESTART_KEY: 1})


class PlacementNotice(WorkerGroupCallback):
    """On the Ray Train controller: tells the sweep driver that the trial's workers wait for nodes (their placement
    group is not ready `WAITING_GRACE_S` after it was asked for), and when they started.

    A Ray Train callback of the controller's own kind (not a `UserCallback`, which has no worker-group hooks); Ray
    Train runs the `RunConfig.callbacks` that are not user callbacks alongside its own.
    """

    def __init__(self) -> None:
        self._queue = tune_queue()
        self._grace_s = float(os.environ.get(WAITING_GRACE_ENV, WAITING_GRACE_S))
        self._timer: threading.Timer | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Pickled to the controller before any group starts: a timer is created there, never shipped.
        return {**self.__dict__, "_timer": None}

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def before_worker_group_start(self, worker_group_context: Any) -> None:
        self._cancel()
        self._timer = threading.Timer(self._grace_s, self._queue.put, args=({WAITING_KEY: 1},))
        self._timer.daemon = True
        self._timer.start()

    def after_worker_group_start(self, worker_group: Any) -> None:
        self._cancel()
        # The live worker count, before the group's first report (which carries it too).
        self._queue.put({WAITING_KEY: 0, metric_names.WORKERS: len(worker_group.get_workers())})

    def before_worker_group_shutdown(self, worker_group: Any) -> None:
        self._cancel()

    def before_worker_group_abort(self, worker_group_context: Any) -> None:
        self._cancel()
