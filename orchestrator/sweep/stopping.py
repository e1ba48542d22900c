"""How a trial that Tune stops (its trial scheduler, or the budget) ends the Ray Train run inside it.

Tune stops a function trial by calling its trainable's `stop()` (which runs `cleanup()`) and then ending its actor.
The Ray Train controller, an actor the trial function created, dies with it and takes its workers along, but the
placement group it reserved for them lives as long as the job that created it: the sweep driver. Left alone, every
stopped trial would keep its CPUs and GPUs reserved until the sweep ends, and the trials waiting for them would never
start. So the trial's `cleanup()` first aborts the controller as Ray Train's own Ctrl-C handler does
(`TrainController.abort`): it shuts the worker group down and releases its placement group; the checkpoints on
storage stay. The controller hands its handle to the trial actor through a one-slot Ray queue
(`ControllerChannel`), since the controller is created inside `TorchTrainer.fit()`.

Tune reuses a trial actor for the next queued trial (`reuse_actors`): the actor's process, its imports and its queue
serve trial after trial, which is most of a short trial's fixed cost. A trial its scheduler stops early hands its
actor on without `cleanup()`, so `reset_config()` aborts the Train run the same way and waits for the trial function
to return before the next trial starts on the actor.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import ray
from ray.train.v2._internal.execution.callback import ControllerCallback
from ray.util.queue import Empty, Queue

logger = logging.getLogger(__name__)

# How long a stopping trial waits for its controller to release the worker group (then Tune ends the actor anyway).
ABORT_TIMEOUT_S = 60.0


class TrainRun:
    """The Ray Train run of the trial this actor runs now; the actor runs its trials one after another."""

    def __init__(self) -> None:
        self.channel: Queue | None = None  # created with the actor's first run, kept for the next trials
        self.stopping = threading.Event()  # Tune stopped the trial: its run's end is not a failure
        self.running = False  # a Train run is under way: `abort` has a controller to end
        self.returned = threading.Event()  # the trial function returned: the actor is free for the next trial
        self.returned.set()

    def begin(self) -> None:
        """At the start of a trial function."""
        self.returned.clear()

    def open_channel(self) -> ControllerChannel:
        if self.channel is None:
            self.channel = Queue(1, actor_options={"num_cpus": 0})
        while not self.channel.empty():  # a handle an earlier trial's controller left: that run has ended
            self.channel.get_nowait()
        self.running = True
        return ControllerChannel(self.channel)

    def run_ended(self) -> None:
        self.running = False  # nothing left to abort

    def end(self) -> None:
        """At the end of a trial function, however it ends."""
        self.running = False
        self.returned.set()

    def abort(self) -> None:
        """Abort the running Train controller, if one started; called from the trial actor's `cleanup()`."""
        self.stopping.set()
        if self.channel is None or not self.running:
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

    def hand_on(self) -> None:
        """Before Tune starts the next trial on this actor: end this trial's run if Tune stopped it early, and wait
        for its function to return."""
        if not self.returned.is_set():
            self.abort()
            if not self.returned.wait(ABORT_TIMEOUT_S):
                logger.warning("the stopped trial's function did not return within %.0f s", ABORT_TIMEOUT_S)
        self.stopping.clear()


TRAIN_RUN = TrainRun()


class ControllerChannel(ControllerCallback):
    """On the Ray Train controller: puts the controller's own handle in the trial's queue once it starts."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def after_controller_start(self, train_run_context: Any) -> None:
        self.queue.put(ray.get_runtime_context().current_actor)


def stoppable(trial_function: Callable[[dict[str, Any]], None]) -> type:
    """Tune's trainable class of `trial_function` whose `cleanup()`, and `reset_config()` before the actor's next trial,
    first abort the trial's Train run."""
    from ray.tune.trainable.function_trainable import wrap_function  # the driver's; the controller never needs Tune

    base: type = wrap_function(trial_function)

    class StoppableTrial(base):
        def cleanup(self) -> None:
            # Through the module: this class is pickled by value, and the run's state must stay in the actor.
            from orchestrator.sweep import stopping

            stopping.TRAIN_RUN.abort()
            super().cleanup()

        def reset_config(self, new_config: dict[str, Any]) -> bool:
            from orchestrator.sweep import stopping

            stopping.TRAIN_RUN.hand_on()
            return bool(super().reset_config(new_config))

    return StoppableTrial
