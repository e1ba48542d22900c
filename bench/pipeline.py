"""Input-pipeline throughput on the shared ImageNet sample, every contender on the same machine and run.

Contenders (all: train augmentation RandomResizedCrop 224 + flip + normalize, batch `--batch-size`):
  dali_cpu           this project's DALI train pipeline on the CPU (`make_loader`, backend dali), local shards
  pil_imagefolder    torchvision ImageFolder + PIL + v2 transforms in a DataLoader, one worker per core
  torch_decode_jpeg  this project's fallback loader: torchvision decode_jpeg + v2 transforms over the shards
  dali_gpu           the mixed (nvJPEG) pipeline on one GPU from local shards, where CUDA is present

Contenders run `--repeats` interleaved rounds of one epoch each (first batch untimed; the loaders live across the
rounds, as they do across a trial's epochs). Each figure is the median over the rounds, and each ratio the median of
the per-round ratios: neighbours in one round share the machine's load of that moment. `--tune` adds DALI contenders
with other `prefetch_queue_depth` and thread counts. With --json the last line is one JSON object.
Targets (issue): dali_cpu >= 1.5x pil_imagefolder, >= 400 images/s per core; dali_gpu >= 10,000 images/s.

    .venv/bin/python bench/pipeline.py [--src ../shared/data/imagenet-sample] [--json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipelines import presets
from pipelines.loader import LoaderSpec
from pipelines.loader_factory import make_loader
from pipelines.sharding import shard_dataset

DEFAULT_SRC = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample"


def cores() -> int:
    return len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class EpochTiming:
    images_per_s: float  # wall clock, first batch (start-up) excluded
    images_per_cpu_s: float  # whole epoch over CPU seconds of this process and its reaped workers


def cpu_seconds() -> float:
    """CPU time of this process (all threads) plus its terminated children (DataLoader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def time_epoch(batches: Iterable[Any], count: Callable[[Any], int]) -> EpochTiming:
    """One epoch. Wall-clock images/s suffers from other processes on a shared machine; images per CPU
    second (per core) hardly does, so both are reported."""
    cpu_start = cpu_seconds()
    images = total = 0
    start = None
    for batch in batches:
        n = count(batch)
        total += n
        if start is None:
            start = time.perf_counter()
            continue
        images += n
    wall = images / (time.perf_counter() - start) if start is not None and images else 0.0
    return EpochTiming(wall, total / max(cpu_seconds() - cpu_start, 1e-9))


class LoaderContender:
    """This project's loader (DALI or the torch fallback), one epoch per call."""

    def __init__(
        self, shards: str, backend: str, batch_size: int, threads: int, device: torch.device, prefetch: int = 2
    ) -> None:
        spec = LoaderSpec(
            uri=shards,
            batch_size=batch_size,
            backend=backend,  # type: ignore[arg-type]
            num_threads=threads,
            seed=0,
            prefetch_queue_depth=prefetch,
        )
        self.loader = make_loader(spec, 0, 1, device)
        self.device = device
        self.epoch = 0

    def _batches(self) -> Iterable[Any]:
        self.loader.set_epoch(self.epoch)
        self.epoch += 1
        for batch in self.loader:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            yield batch

    def __call__(self) -> EpochTiming:
        return time_epoch(self._batches(), lambda b: int(b.num_valid))


def imagefolder_tree(src: Path, root: Path) -> Path:
    """`<wnid>/<file>` symlinks to the flat sample (ImageFolder needs class folders; nothing is copied)."""
    with open(src / "labels.tsv", newline="") as f:
        for row in csv.DictReader(f, dialect="excel-tab"):
            (root / row["wnid"]).mkdir(parents=True, exist_ok=True)
            (root / row["wnid"] / row["file"]).symlink_to((src / row["file"]).resolve())
    return root


class ImageFolderContender:
    """torchvision ImageFolder + PIL + v2 transforms in a DataLoader: what most users run."""

    def __init__(self, src: Path, root: Path, batch_size: int, workers: int) -> None:
        from torchvision.datasets import ImageFolder
        from torchvision.transforms import v2

        transform = v2.Compose(
            [
                v2.RandomResizedCrop(presets.TRAIN_SIZE, scale=presets.RRC_SCALE, antialias=True),
                v2.RandomHorizontalFlip(),
                v2.PILToTensor(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(list(presets.IMAGENET_MEAN), list(presets.IMAGENET_STD)),
            ]
        )
        dataset = ImageFolder(str(imagefolder_tree(src, root)), transform=transform)
        self.loader = torch.utils.data.DataLoader(
            # Workers exit at each epoch's end, so their CPU time is counted (RUSAGE_CHILDREN).
            dataset,
            batch_size=batch_size,
            shuffle=True,
            num_workers=workers,
            persistent_workers=False,
        )

    def __call__(self) -> EpochTiming:
        return time_epoch(self.loader, lambda b: int(b[1].numel()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC, help="flat JPEG folder with labels.tsv")
    parser.add_argument("--shards", default=None, help="existing shard set of --src (default: shard to a temp dir)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-torch", action="store_true", help="skip the (slow) decode_jpeg fallback")
    parser.add_argument("--tune", action="store_true", help="also DALI with prefetch 1/3 and one thread fewer/more")
    parser.add_argument("--json", action="store_true", dest="as_json")
    args = parser.parse_args()

    n = cores()
    results: dict[str, Any] = {"cores": n, "batch_size": args.batch_size, "src": str(args.src)}
    with tempfile.TemporaryDirectory() as tmp:
        shards = args.shards or str(Path(tmp) / "shards")
        if args.shards is None:
            shard_dataset(args.src, shards, shard_bytes=30 * 10**6)
        cpu = torch.device("cpu")
        contenders: dict[str, Callable[[], EpochTiming]] = {
            "dali_cpu": LoaderContender(shards, "dali", args.batch_size, n, cpu),
            "pil_imagefolder": ImageFolderContender(args.src, Path(tmp) / "tree", args.batch_size, n),
        }
        if args.tune:
            for depth in (1, 3):
                contenders[f"dali_cpu_prefetch{depth}"] = LoaderContender(
                    shards, "dali", args.batch_size, n, cpu, depth
                )
            for threads in {max(1, n - 1), n + 1} - {n}:
                contenders[f"dali_cpu_threads{threads}"] = LoaderContender(
                    shards, "dali", args.batch_size, threads, cpu
                )
        if not args.skip_torch:
            contenders["torch_decode_jpeg"] = LoaderContender(shards, "torch", args.batch_size, n, cpu)
        if torch.cuda.is_available():
            results["gpu"] = torch.cuda.get_device_name(0)
            contenders["dali_gpu"] = LoaderContender(shards, "dali", 256, n, torch.device("cuda", 0))
        # Interleaved rounds: load from other processes drifts over a run, so each ratio is taken within a round
        # (side by side) and the median over rounds is reported.
        rounds: list[dict[str, EpochTiming]] = []
        for _ in range(args.repeats):
            rounds.append({name: run_epoch() for name, run_epoch in contenders.items()})
        for name in contenders:
            results[f"{name}_images_per_s"] = statistics.median(r[name].images_per_s for r in rounds)
            results[f"{name}_images_per_cpu_s"] = statistics.median(r[name].images_per_cpu_s for r in rounds)

        def ratio(a: str, b: str, wall: bool = True) -> float:
            pick = (lambda t: t.images_per_s) if wall else (lambda t: t.images_per_cpu_s)
            return statistics.median(pick(r[a]) / pick(r[b]) for r in rounds)

        results["dali_cpu_vs_pil_imagefolder"] = ratio("dali_cpu", "pil_imagefolder")
        results["dali_cpu_vs_pil_imagefolder_per_cpu_s"] = ratio("dali_cpu", "pil_imagefolder", wall=False)
        results["dali_cpu_vs_pil_imagefolder_rounds"] = [
            r["dali_cpu"].images_per_s / r["pil_imagefolder"].images_per_s for r in rounds
        ]
        if "torch_decode_jpeg" in contenders:
            results["dali_cpu_vs_torch_decode_jpeg"] = ratio("dali_cpu", "torch_decode_jpeg")
    results["dali_cpu_images_per_s_per_core"] = results["dali_cpu_images_per_s"] / n
    results["load_average_1m"] = os.getloadavg()[0]

    print(f"{'contender':<22}{'images/s':>10}{'per core':>10}{'per CPU-s':>11}")
    for key in [k.removesuffix("_images_per_s") for k in results if k.endswith("_images_per_s")]:
        value = results.get(f"{key}_images_per_s")
        if value is not None:
            print(f"{key:<22}{value:>10.0f}{value / n:>10.0f}{results[f'{key}_images_per_cpu_s']:>11.0f}")
    print(
        f"DALI CPU vs PIL ImageFolder: {results['dali_cpu_vs_pil_imagefolder']:.2f}x wall, "
        f"{results['dali_cpu_vs_pil_imagefolder_per_cpu_s']:.2f}x per CPU-second (target >= 1.5x)"
    )
    print(
        f"DALI CPU per core: {results['dali_cpu_images_per_s_per_core']:.0f} images/s wall, "
        f"{results['dali_cpu_images_per_cpu_s']:.0f} per CPU-second (target >= 400); "
        f"load average {results['load_average_1m']:.1f} on {n} cores"
    )
    if args.as_json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
