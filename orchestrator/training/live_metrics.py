"""Live training metrics exported as Ray metrics (Prometheus), so the Ray dashboard's metrics view shows them.

Every series is tagged with the sweep, the trial and the worker's rank; `ray.train.report` carries the same numbers
(per epoch and per checkpoint) for Tune and MLflow, these ones update between reports.
"""

from __future__ import annotations

from ray.util.metrics import Counter, Gauge

_TAG_KEYS = ("sweep", "trial", "rank")


class TrainMetrics:
    """One worker's Ray metrics. Create inside the Ray worker process (metrics are per process)."""

    def __init__(self, *, sweep: str, trial: str, rank: int) -> None:
        tags = {"sweep": sweep, "trial": trial, "rank": str(rank)}
        self._gauges = {
            name: Gauge(f"resnet_orch_{name}", description=description, tag_keys=_TAG_KEYS)
            for name, description in (
                ("images_per_s", "training images per second on this worker"),
                ("images_per_s_total", "training images per second summed over the trial's workers"),
                ("train_loss", "training loss, mean over the last reporting window"),
                ("data_wait_frac", "fraction of step time spent waiting for the next input batch"),
                ("lr", "learning rate"),
                ("step", "optimizer steps completed"),
                ("epoch_time_s", "wall time of the last completed epoch"),
            )
        }
        self._images = Counter("resnet_orch_images_trained", description="images trained", tag_keys=_TAG_KEYS)
        for metric in (*self._gauges.values(), self._images):
            metric.set_default_tags(tags)

    def update(self, **values: float) -> None:
        """Set gauges by name (`images_per_s=...`, `train_loss=...`); unknown names raise KeyError."""
        for name, value in values.items():
            self._gauges[name].set(value)

    def add_images(self, count: int) -> None:
        if count > 0:
            self._images.inc(count)
