"""Live training metrics exported as Ray metrics (Prometheus), so the Ray dashboard's metrics view shows them.

Every series is tagged with the sweep, the trial and the worker's rank; `ray.train.report` carries the same numbers
(per epoch and per checkpoint) for Tune and MLflow, these ones update between reports.
"""

from __future__ import annotations

from ray.util.metrics import Counter, Gauge

from orchestrator.training import metric_names as m

_DESCRIPTIONS = {
    m.IMAGES_PER_S: "training images per second on this worker",
    m.IMAGES_PER_S_TOTAL: "training images per second summed over the trial's workers",
    m.TRAIN_LOSS: "training loss, mean over the last reporting window",
    m.DATA_WAIT_FRAC: "fraction of step time spent waiting for the next input batch",
    m.LR: "learning rate",
    m.STEP: "optimizer steps completed",
    m.EPOCH_TIME_S: "wall time of the last completed epoch",
}


class TrainMetrics:
    """One worker's Ray metrics. Create inside the Ray worker process (metrics are per process)."""

    def __init__(self, *, sweep: str, trial: str, rank: int) -> None:
        tags = dict(zip(m.LIVE_TAGS, (sweep, trial, str(rank)), strict=True))
        self._gauges = {
            name: Gauge(f"{m.LIVE_PREFIX}{name}", description=_DESCRIPTIONS[name], tag_keys=m.LIVE_TAGS)
            for name in m.LIVE_GAUGES
        }
        self._images = Counter(
            f"{m.LIVE_PREFIX}{m.LIVE_IMAGES_TRAINED}", description="images trained", tag_keys=m.LIVE_TAGS
        )
        for metric in (*self._gauges.values(), self._images):
            metric.set_default_tags(tags)

    def update(self, **values: float) -> None:
        """Set gauges by name (`images_per_s=...`, `train_loss=...`); unknown names raise KeyError."""
        for name, value in values.items():
            self._gauges[name].set(value)

    def add_images(self, count: int) -> None:
        if count > 0:
            self._images.inc(count)
