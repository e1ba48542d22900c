"""The learning rate of every step: linear warm-up, then step / plateau / cosine decay. Pure, checkpointable.

One small class instead of chained torch schedulers: the rate is a function of the step (plus the plateau and
error warm-up state), so a restart from a mid-epoch checkpoint lands on exactly the rate the uninterrupted run used.
"""

from __future__ import annotations

import math
from typing import Any

from orchestrator.sweep.config import ErrorWarmupConfig, RecipeConfig

# ReduceLROnPlateau's default threshold: an epoch "improves" when the metric drops by more than 0.01%.
_PLATEAU_RELATIVE_THRESHOLD = 1e-4


class LRSchedule:
    """`lr_at(step)` for the 0-based optimizer step about to run; `end_epoch(metric)` feeds the plateau rule."""

    def __init__(
        self, recipe: RecipeConfig, steps_per_epoch: int, error_warmup: ErrorWarmupConfig | None = None
    ) -> None:
        if steps_per_epoch <= 0:
            raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
        self.recipe = recipe
        self.steps_per_epoch = steps_per_epoch
        # Linear scaling rule with gradual warm-up (Goyal et al. 2017, Sections 2.1-2.2).
        self.base_lr = recipe.scaled_lr
        self.warmup_steps = round(recipe.resolved_warmup_epochs * steps_per_epoch)
        self.total_steps = recipe.total_steps(steps_per_epoch)
        self.plateau_scale = 1.0
        self.best_metric = math.inf
        self.bad_epochs = 0
        # He et al. 2015, Section 4.2: a low constant rate until the training error falls below a threshold.
        self.error_warmup = error_warmup
        self.warming = error_warmup is not None
        self.recent: list[tuple[float, float]] = []  # (top-1 hits, samples) of the last steps, all ranks

    @property
    def watches_train_error(self) -> bool:
        """Whether `observe_train` must be called after each step (the error warm-up has not ended)."""
        return self.warming

    def observe_train(self, hits: float, samples: float) -> None:
        """One step's top-1 hits and samples over all ranks: ends the error warm-up once the error of the last
        `window_steps` steps is below `until_train_err`."""
        warmup = self.error_warmup
        if warmup is None or not self.warming:
            return
        self.recent = [*self.recent, (hits, samples)][-warmup.window_steps :]
        seen = sum(n for _, n in self.recent)
        if len(self.recent) == warmup.window_steps and seen > 0:
            self.warming = 1.0 - sum(h for h, _ in self.recent) / seen >= warmup.until_train_err

    def lr_at(self, step: int) -> float:
        if self.warming and self.error_warmup is not None:
            return self.error_warmup.lr
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        recipe = self.recipe
        if recipe.schedule == "step":
            # "divided by 10" at fixed epochs (He et al. 2015, Section 3.4; torchvision's 30/60/80), or at fixed
            # iterations (Section 4.2: 32k and 48k).
            position = step if recipe.milestone_unit == "step" else step // self.steps_per_epoch
            return self.base_lr * recipe.gamma ** sum(1 for m in recipe.milestones if position >= m)
        if recipe.schedule == "cosine":
            # Loshchilov & Hutter 2017 (SGDR) without restarts, over the steps after warm-up.
            span = max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / span)
            return 0.5 * self.base_lr * (1.0 + math.cos(math.pi * progress))
        return self.base_lr * self.plateau_scale

    def end_epoch(self, metric: float) -> None:
        """ "divided by 10 when the error plateaus" (He et al. 2015, Section 3.4): `metric` is that error."""
        if self.recipe.schedule != "plateau":
            return
        if metric < self.best_metric * (1.0 - _PLATEAU_RELATIVE_THRESHOLD):
            self.best_metric = metric
            self.bad_epochs = 0
            return
        self.bad_epochs += 1
        if self.bad_epochs > self.recipe.plateau_patience:
            self.plateau_scale *= self.recipe.gamma
            self.bad_epochs = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "plateau_scale": self.plateau_scale,
            "best_metric": self.best_metric,
            "bad_epochs": self.bad_epochs,
            "warming": self.warming,
            "recent": [list(pair) for pair in self.recent],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plateau_scale = float(state["plateau_scale"])
        self.best_metric = float(state["best_metric"])
        self.bad_epochs = int(state["bad_epochs"])
        self.warming = bool(state.get("warming", self.error_warmup is not None))
        self.recent = [(float(h), float(n)) for h, n in state.get("recent", [])]
