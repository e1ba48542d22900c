"""Bounded exponential backoff: the one way S3 and MLflow calls ride out a service that went away for a while.

An object store or tracking server that restarts (a deploy, a node drain, a crash) is gone for seconds to minutes;
a training run of days must not die of it. `retry` calls a function again after 0.5, 1, 2, 4 ... seconds (capped at
`max_delay_s`) while its error is transient, until `max_wait_s` have passed since the first failure; then the last
error is raised. An error that waiting cannot cure (bad credentials, a missing bucket, a full disk) is raised at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

# A few minutes: longer than a service restart or a rolling deploy, short enough that a service that is really gone
# is reported while someone still watches the run.
DEFAULT_MAX_WAIT_S = 180.0


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying: `max_wait_s` after the first failure, sleeps doubling from `first_delay_s` up to
    `max_delay_s`. `max_wait_s=0`: one try."""

    max_wait_s: float = DEFAULT_MAX_WAIT_S
    first_delay_s: float = 0.5
    max_delay_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_wait_s < 0 or self.first_delay_s <= 0 or self.max_delay_s < self.first_delay_s:
            raise ValueError(
                f"RetryPolicy({self.max_wait_s}, {self.first_delay_s}, {self.max_delay_s}): need max_wait_s >= 0 and "
                "0 < first_delay_s <= max_delay_s"
            )

    def delays(self) -> list[float]:
        """The sleeps between tries, in order, whose sum stays within `max_wait_s` (the last one cut to fit)."""
        out: list[float] = []
        delay, total = self.first_delay_s, 0.0
        while total < self.max_wait_s:
            step = min(delay, self.max_wait_s - total)
            out.append(step)
            total += step
            delay = min(delay * 2, self.max_delay_s)
        return out


# For a quick look (`validate`, `status`) and best-effort copies that the next write repeats: no waiting.
ONE_TRY = RetryPolicy(max_wait_s=0)


class RetriesExhausted(RuntimeError):
    """A transient error outlasted the policy's bound; `__cause__` is the last error."""


def retry(
    call: Callable[[], T],
    *,
    what: str,
    transient: Callable[[BaseException], bool],
    policy: RetryPolicy,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`call()`, tried again after each transient error (`transient(error)`) along `policy.delays()`.

    Raises the call's own error when it is not transient, `RetriesExhausted` (naming `what`, the tries and the wait;
    the last error as its cause) when the bound is spent. Each retry is logged as a warning with the error.
    """
    delays = policy.delays()
    waited = 0.0
    for tries in range(1, len(delays) + 2):
        try:
            result = call()
        except Exception as exc:
            if not transient(exc):
                raise
            if tries > len(delays):
                raise RetriesExhausted(
                    f"{what}: still failing after {tries} tries over {waited:.0f} s ({type(exc).__name__}: {exc})"
                ) from exc
            delay = delays[tries - 1]
            logger.warning("%s failed (%s: %s); retry %d in %.1f s", what, type(exc).__name__, exc, tries, delay)
            sleep(delay)
            waited += delay
            continue
        if tries > 1:
            logger.warning("%s succeeded after %d tries (%.1f s of waiting)", what, tries, waited)
        return result
    raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover
