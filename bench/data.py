"""`data shard` and `data check` at ImageNet scale: images per CPU-second here, projected to ILSVRC-2012's train set.

    .venv/bin/python bench/data.py [--src ../shared/data/imagenet-sample] [--json]

Shards `--src` (real ImageNet JPEGs) into a temp folder and checks the result with `--full` and by sample, in this
process (one core's worth of work per image). Per-core rates are images over this process's CPU seconds, which
other processes on a shared machine hardly change. `data shard --address` and `data check --full --address` run one
Ray task per shard, so a cluster of C cores does about C times one core's rate while it has more shards than cores
(ImageNet's 1,281,167 training images make ~550 shards of 256 MB): the projections are
1,281,167 / (rate per core x cores) for one 16-core node and for 8 of them, not counting the storage's bandwidth.
With --json the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.check import check_shards
from pipelines.sharding import shard_dataset

DEFAULT_SRC = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample"
IMAGENET_TRAIN_IMAGES = 1_281_167  # ILSVRC-2012 training set
NODE_CORES = 16


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(run: Callable[[], int]) -> tuple[int, float, float]:
    """(images, wall seconds, CPU seconds) of `run`, which returns how many images it handled."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    images = run()
    return images, time.perf_counter() - wall, cpu_seconds() - cpu


def projection(per_core: float) -> dict[str, float]:
    return {
        "imagenet_hours_1x16": IMAGENET_TRAIN_IMAGES / (per_core * NODE_CORES) / 3600,
        "imagenet_hours_8x16": IMAGENET_TRAIN_IMAGES / (per_core * NODE_CORES * 8) / 3600,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC, help="flat JPEG folder with labels.tsv")
    parser.add_argument("--json", action="store_true", dest="as_json")
    args = parser.parse_args()
    results: dict[str, Any] = {"cores": len(os.sched_getaffinity(0)), "src": str(args.src)}
    with tempfile.TemporaryDirectory(prefix="resnet-orch-data-bench-") as tmp:
        dest = f"{tmp}/shards"
        # One encoding thread: the per-core rate of one Ray task.
        images, wall, cpu = measure(lambda: shard_dataset(args.src, dest, shard_bytes=30 * 10**6, workers=1).samples)
        results |= {"shard_images": images, "shard_wall_s": wall, "shard_images_per_cpu_s": images / cpu}
        for mode, full in (("check_full", True), ("check_sample", False)):
            images, wall, cpu = measure(lambda full=full: check_shards(dest, full=full, sample=200).samples)  # type: ignore[misc]
            results |= {f"{mode}_images": images, f"{mode}_wall_s": wall, f"{mode}_images_per_cpu_s": images / cpu}
    for key in ("shard", "check_full"):
        results |= {f"{key}_{name}": value for name, value in projection(results[f"{key}_images_per_cpu_s"]).items()}
    results["load_average_1m"] = os.getloadavg()[0]
    for key in ("shard", "check_full"):
        print(
            f"{key:<11} {results[f'{key}_images_per_cpu_s']:7.0f} images per core-second -> ImageNet train "
            f"{results[f'{key}_imagenet_hours_1x16']:.2f} h on one 16-core node, "
            f"{results[f'{key}_imagenet_hours_8x16']:.2f} h on 8"
        )
    print(
        f"check (sample of 200 + every shard's structure): {results['check_sample_wall_s']:.1f} s; "
        f"load average {results['load_average_1m']:.1f}"
    )
    if args.as_json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
