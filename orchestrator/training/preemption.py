"""What a step boundary does about a preemption notice: decided here, without Ray, done by the train loop.

Ray Train's preemption watcher sees a node of the worker group drained for preemption (a spot reclaim, announced
with a deadline) and hands every worker the notice (`ray.train.get_preemption_info()`, a barrier on which all ranks
agree on rank 0's view). At the deadline Ray Train restarts the worker group from the latest checkpoint, charging
`FailureConfig.max_preemption_failures` (the sweep's `max_preemptions`), not `max_failures`.

The train loop polls at every step boundary, so the notice is acted on at the first boundary after it arrived: one
just-in-time checkpoint of the step just completed (or the checkpoint that boundary writes anyway: a periodic one or
the epoch's end), and training continues. A restart then loses at most the step that was running when the notice
came; the steps trained after the checkpoint, until the node goes, are trained again. A notice naming nodes already
handled in this attempt changes nothing; one naming a further node is a further preemption and checkpoints again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class NoticeDecision:
    """What one step boundary does: count a new preemption, and write a checkpoint for it."""

    new_preemption: bool = False
    write_checkpoint: bool = False


@dataclass
class PreemptionNotices:
    """The preempted nodes this attempt has already checkpointed for (an attempt starts with none)."""

    handled: frozenset[str] = field(default_factory=frozenset)

    def decide(self, preempted_nodes: Iterable[str] | None, *, checkpoint_due: bool) -> NoticeDecision:
        """The boundary's decision for the notice `preempted_nodes` (None: no notice), where `checkpoint_due` says
        the boundary writes a checkpoint anyway (a periodic one or the epoch's end), which then serves the notice."""
        if preempted_nodes is None:
            return NoticeDecision()
        nodes = frozenset(preempted_nodes)
        if nodes <= self.handled:
            return NoticeDecision()
        self.handled |= nodes
        return NoticeDecision(new_preemption=True, write_checkpoint=not checkpoint_due)
