"""GPU-hours per trial for `validate`: the trial's images x the net's multiply-adds / a throughput measured here.

A trial trains `total_steps x batch_size` images (`recipe.steps_per_epoch` or the train shards' size per epoch).
One device trains `images_per_s` of them, so the trial holds `images / images_per_s` device-seconds of its
`gpus_per_worker` GPUs each (validation and restarts not counted). `images_per_s` comes from a `resnet-orch bench`
figure of the same hardware: of the same net at the same image size, else of another net scaled by forward
multiply-adds (the step costs about 3x the forward pass for every ResNet, so images/s scales inversely with the
multiply-adds per image). With no figure for the hardware kind, no guess is made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.sweep.config import SweepConfig, TrialConfig
from orchestrator.training.throughput import Figure, load_figures

UNKNOWN = "unknown: run `resnet-orch bench`"


@dataclass(frozen=True)
class Estimate:
    hardware: str
    device_hours: float  # GPU-hours (CPU worker-hours for a CPU trial) of the whole trial
    images: int
    images_per_s: float  # one device's
    basis: str  # which figure, and how it was used

    def line(self, gpu: bool) -> str:
        unit = "GPU-hours" if gpu else "CPU worker-hours"
        return (
            f"~{self.device_hours:.3g} {unit} on {self.hardware} ({self.images:,} images at "
            f"{self.images_per_s:,.1f} images/s per device; {self.basis})"
        )


def trial_images(trial: TrialConfig, train_samples: int | None) -> int | None:
    """Images the trial trains: steps x global batch; None when its epoch size is not known here."""
    recipe = trial.recipe
    if recipe.steps_per_epoch is not None:
        steps_per_epoch = recipe.steps_per_epoch
    elif recipe.max_steps is not None and train_samples is None:
        return recipe.max_steps * recipe.batch_size
    elif train_samples is not None:
        # The train loader drops the last partial global batch (pipelines.loader.EpochPlan).
        steps_per_epoch = train_samples // recipe.batch_size
    else:
        return None
    return recipe.total_steps(steps_per_epoch) * recipe.batch_size


def estimate(trial: TrialConfig, macs_per_image: int, images: int, figures: list[Figure]) -> list[Estimate]:
    """One estimate per hardware with a figure of the trial's kind (GPU or CPU); [] when there is none."""
    gpu = trial.resources.use_gpu
    per_device = trial.resources.gpus_per_worker if gpu else 1.0
    out = []
    for hardware in sorted({f.hardware for f in figures if f.gpu == gpu}):
        here = [f for f in figures if f.hardware == hardware]
        name = trial.model.registry_name
        exact = [
            f
            for f in here
            if (f.model, f.image_size, f.macs_per_image) == (name, trial.recipe.image_size, macs_per_image)
        ]
        if exact:
            figure = exact[0]
            images_per_s = figure.images_per_s
            basis = f"measured for {figure.model} at {figure.image_size}px"
        else:
            # The same net at another size first, else the most recent figure of the hardware.
            same_net = [f for f in here if f.model == name]
            figure = max(same_net or here, key=lambda f: f.measured_at)
            images_per_s = figure.macs_per_s / macs_per_image
            basis = f"scaled by multiply-adds from {figure.model} at {figure.image_size}px"
        hours = images * per_device / images_per_s / 3600.0
        if not math.isfinite(hours):
            continue
        out.append(Estimate(hardware, hours, images, images_per_s, basis))
    return out


def train_samples(uri: str) -> int | None:
    """The train shards' sample count from their manifest; None where it cannot be read from here."""
    from pipelines.loader import ShardSet

    try:
        return ShardSet.open(uri).num_samples
    except Exception:  # an unreachable bucket or a path of the cluster's: validate says "unknown" instead
        return None


def estimate_lines(trial: TrialConfig, macs_per_image: int, samples: int | None, figures: list[Figure]) -> list[str]:
    """What `validate` prints under a trial: one line per hardware, or why there is no estimate."""
    gpu = trial.resources.use_gpu
    label = "GPU-hours per trial" if gpu else "CPU worker-hours per trial"
    images = trial_images(trial, samples)
    if images is None:
        return [f"{label}: unknown: the train shards' size is not readable here; set recipe.steps_per_epoch"]
    found = estimate(trial, macs_per_image, images, figures)
    if not found:
        return [f"{label}: {UNKNOWN}" + ("" if gpu else " on a CPU node")]
    return [f"{label}: {e.line(gpu)}" for e in found]


def add_estimates(config: SweepConfig, described: list[dict[str, Any]], home: Path) -> list[dict[str, Any]]:
    """`layout.preview`'s trials, each with `estimate`: its lines from the figures `resnet-orch bench` stored."""
    figures = load_figures(home)
    samples = None if _fixed_steps(config) else train_samples(config.data.train)
    for item in described:
        trial = TrialConfig.model_validate(item["config"])
        item["estimate"] = estimate_lines(trial, item["macs_per_image"], samples, figures)
    return described


def _fixed_steps(config: SweepConfig) -> bool:
    return config.recipe.steps_per_epoch is not None and "steps_per_epoch" not in config.search
