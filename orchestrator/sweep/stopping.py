"""How a trial that Tune stops (its trial scheduler, or the budget) ends the Ray Train run inside it.

Tune stops a function trial by calling its trainable's `stop()` (which runs `cleanup()`) and then ending its actor.
The Ray Train controller, an actor the trial function created, dies with it and takes its workers along, but the
placement group it reserved for them lives as long as the job that created it: the sweep driver. Left alone, every
stopped trial would keep its CPUs and GPUs reserved until the sweep ends, and the trials waiting for them would never
start. So the trial's `cleanup()` first aborts the controller as Ray Train's own Ctrl-C handler does
(`TrainController.abort`): it shuts the worker group down and releases its placement group; the checkpoints on
storage stay. The controller hands its handle to the trial actor through a one-slot Ray queue
(`ControllerChannel`), since the controller is created inside `TorchTrainer.fit()`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import ray
from ray.train.v2._internal.execution.callback import ControllerCallback
from ray.tune.trainable.function_trainable import wrap_function
from ray.util.queue import Empty, Queue

logger = logging.getLogger(__name__)

# How long a stopping trial waits for its controller to release the worker group (then Tune ends the actor anyway).
ABORT_TIMEOUT_S = 60.0


class TrainRun:
    """The Ray Train run of the trial this actor runs (one per trial actor: Tune does not reuse them here)."""

    def __init__(self) -> None:
        self.channel: Queue | None = None
        self.stopping = threading.Event()

    def open_channel(self) -> ControllerChannel:
        self.channel = Queue(1, actor_options={"num_cpus": 0})
        return ControllerChannel(self.channel)

    def abort(self) -> None:
        """Abort the running Train controller, if one started; called from the trial actor's `cleanup()`."""
        self.stopping.set()
        if self.channel is None:
            return
        try:
            controller = self.channel.get(block=False)
        except Empty:
            return  # the controller never started (or is gone already): nothing holds a placement group
        try:
            ray.get(controller.abort.remote(), timeout=ABORT_TIMEOUT_S)
        except ray.exceptions.RayActorError:
            pass  # `abort` ends the controller actor: its caller always sees it die
        except ray.exceptions.GetTimeoutError:
            logger.warning("the Train controller did not abort within %.0f s", ABORT_TIMEOUT_S)


TRAIN_RUN = TrainRun()


class ControllerChannel(ControllerCallback):
    """On the Ray Train controller: puts the controller's own handle in the trial's queue once it starts."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def after_controller_start(self, train_run_context: Any) -> None:
        self.queue.put(ray.get_runtime_context().current_actor)


def stoppable(trial_function: Callable[[dict[str, Any]], None]) -> type:
    """Tune's trainable class of `trial_function` whose `cleanup()` first aborts the trial's Train run."""
    base: type = wrap_function(trial_function)

    class StoppableTrial(base):
        def cleanup(self) -> None:
            # Through the module: this class is pickled by value, and the run's state must stay in the actor.
            from orchestrator.sweep import stopping

            stopping.TRAIN_RUN.abort()
            super().cleanup()

    return StoppableTrial
