"""The `scheduler:`, `search:`/`num_samples` and `budget:` keys of `sweep.yaml`: what a sweep stops early, samples,
and may spend.

Declared here, next to `config.py` (which holds them on `SweepConfig`), with their cross-field checks
(`check_tuning`). Sampling a search space uses Ray Tune's own search-space API (`ray.tune.search.sample`), imported
only when a sweep has a `search:`, with one seeded generator: the same file always gives the same trials.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from orchestrator.sweep.config_errors import PathError
from orchestrator.sweep.strict import Strict
from orchestrator.training import metric_names

if TYPE_CHECKING:
    from orchestrator.sweep.config import SweepConfig


class SchedulerConfig(Strict):
    """A Ray Tune trial scheduler that stops trials early, judged at epoch ends by `metric`.

    `asha`: asynchronous successive halving (Li et al. 2018, arXiv:1810.05934): at `grace_epochs` x
    `reduction_factor`^k epochs, a trial continues only if it is in the top 1/`reduction_factor` of the trials that
    reached that rung. `median_stopping`: after `grace_epochs`, a trial stops when its best result is worse than the
    median of the other trials' running averages at the same epoch (Golovin et al. 2017, Google Vizier).
    """

    type: Literal["asha", "median_stopping"]
    metric: str = metric_names.VAL_TOP1_ERR
    mode: Literal["min", "max"] = "min"
    grace_epochs: int = Field(default=1, gt=0)
    reduction_factor: float = Field(default=3.0, gt=1)  # asha only
    min_samples_required: int = Field(default=3, gt=0)  # median_stopping only

    @field_validator("metric")
    @classmethod
    def _schedulable(cls, metric: str) -> str:
        if metric not in metric_names.SCHEDULABLE:
            raise ValueError(
                f"{metric!r} is not reported at every epoch end; choose one of {', '.join(metric_names.SCHEDULABLE)}"
            )
        return metric

    @model_validator(mode="after")
    def _own_keys(self) -> SchedulerConfig:
        if self.type == "asha" and "min_samples_required" in self.model_fields_set:
            raise PathError(("scheduler", "min_samples_required"), "applies to median_stopping only; remove it")
        if self.type == "median_stopping" and "reduction_factor" in self.model_fields_set:
            raise PathError(("scheduler", "reduction_factor"), "applies to asha only; remove it")
        return self


SearchKind = Literal["uniform", "loguniform", "randint", "choice"]


class SearchDomain(Strict):
    """One axis of `search:`, exactly one of `{uniform: [lo, hi]}`, `{loguniform: [lo, hi]}`, `{randint: [lo, hi]}`
    (hi excluded) or `{choice: [a, b, ...]}`: Ray Tune's `tune.uniform`, `tune.loguniform`, `tune.randint`,
    `tune.choice`."""

    uniform: tuple[float, float] | None = Field(default=None, strict=False)
    loguniform: tuple[float, float] | None = Field(default=None, strict=False)
    randint: tuple[int, int] | None = Field(default=None, strict=False)
    choice: list[Any] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> SearchDomain:
        given = [kind for kind in ("uniform", "loguniform", "randint", "choice") if getattr(self, kind) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of uniform, loguniform, randint, choice, e.g. {loguniform: [0.01, 0.5]}"
                + (f" (got {', '.join(given)})" if given else "")
            )
        kind = given[0]
        if kind == "choice":
            if not self.choice:
                raise ValueError("choice: is empty; list at least one value")
            return self
        lo, hi = getattr(self, kind)
        if not lo < hi:
            raise ValueError(f"{kind}: [{lo}, {hi}] needs low < high")
        if kind == "loguniform" and lo <= 0:
            raise ValueError(f"loguniform: [{lo}, {hi}] needs a positive low bound, e.g. [0.01, 0.5]")
        return self

    @property
    def kind(self) -> SearchKind:
        for kind in ("uniform", "loguniform", "randint", "choice"):
            if getattr(self, kind) is not None:
                return kind
        raise AssertionError("unreachable: _one_kind guarantees a kind")

    def extremes(self) -> list[Any]:
        """The values that bound what this domain can draw (each is checked against the recipe field)."""
        if self.choice is not None:
            return list(self.choice)
        lo, hi = getattr(self, self.kind)
        return [lo, hi - 1] if self.kind == "randint" else [lo, hi]

    def tune_domain(self) -> Any:
        """The Ray Tune `Domain` of this axis."""
        from ray import tune

        if self.choice is not None:
            return tune.choice(self.choice)
        lo, hi = getattr(self, self.kind)
        return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[self.kind](lo, hi)


class BudgetConfig(Strict):
    """What a sweep may spend, over all its runs (`resume` included): when reached, running trials stop (their last
    checkpoint kept), pending ones do not start, and the sweep ends BUDGET_EXHAUSTED."""

    max_gpu_hours: float | None = Field(default=None, gt=0, examples=[500.0])
    max_wall_hours: float | None = Field(default=None, gt=0, examples=[48.0])

    @model_validator(mode="after")
    def _some_limit(self) -> BudgetConfig:
        if self.max_gpu_hours is None and self.max_wall_hours is None:
            raise ValueError("give max_gpu_hours, max_wall_hours or both (hours), or remove budget:")
        return self


def sample_search(search: Mapping[str, SearchDomain], count: int, seed: int) -> list[dict[str, Any]]:
    """`count` draws of every axis of `search`, in file order, from one generator seeded with `seed`."""
    if not search:
        return [{} for _ in range(count)]
    import numpy as np

    rng = np.random.default_rng(seed)
    domains = {axis: (domain, domain.tune_domain()) for axis, domain in search.items()}
    draws = []
    for _ in range(count):
        draw: dict[str, Any] = {}
        for axis, (domain, tune_domain) in domains.items():
            value = tune_domain.sample(random_state=rng)
            # Plain Python values: the trial config is strict JSON (no numpy scalars).
            if domain.kind in ("uniform", "loguniform"):
                value = float(value)
            elif domain.kind == "randint":
                value = int(value)
            elif hasattr(value, "item"):
                value = value.item()
            draw[axis] = value
        draws.append(draw)
    return draws


def check_tuning(sweep: SweepConfig, recipe_axes: frozenset[str], check_value: Any) -> None:
    """Cross-field checks of `scheduler:`, `search:`, `num_samples` and `budget:` (raise `PathError`).

    `check_value(loc, field, value)` validates one value against the recipe field it overrides.
    """
    for axis, domain in sweep.search.items():
        if axis not in recipe_axes:
            raise PathError(
                ("search", axis), f"is not a recipe field; search recipe fields ({', '.join(sorted(recipe_axes))})"
            )
        if axis in sweep.grid:
            raise PathError(("search", axis), "is also under grid:; sweep it in one of the two")
        for index, value in enumerate(domain.extremes()):
            check_value(("search", axis, domain.kind, index), axis, value)
    if sweep.num_samples > 1 and not sweep.search:
        raise PathError(
            ("num_samples",),
            f"{sweep.num_samples} repeats identical trials without search:; add search: or sweep seeds under grid:",
        )
    scheduler = sweep.scheduler
    if scheduler is not None and scheduler.metric in metric_names.VALIDATION and sweep.data.val is None:
        raise PathError(
            ("scheduler", "metric"),
            f"{scheduler.metric} is measured on data.val, which is not set; add data.val or rank by epoch_train_loss",
        )
