"""Input-pipeline throughput on the shared ImageNet sample, every contender on the same machine and run.

Contenders (all: train augmentation RandomResizedCrop 224 + flip + normalize, batch `--batch-size`):
  dali_cpu           this project's DALI train pipeline on the CPU (`make_loader`, backend dali), local shards
  pil_imagefolder    torchvision ImageFolder + PIL + v2 transforms in a DataLoader, one worker per core
  torch_decode_jpeg  this project's fallback loader: torchvision decode_jpeg + v2 transforms over the shards
  dali_gpu           the mixed (nvJPEG) pipeline on one GPU from local shards, where CUDA is present

Each contender runs `--repeats` timed epochs after one warm-up batch; the best epoch counts (other
processes on a shared machine only ever slow a run down). With --json the last line is one JSON object.
Targets (issue): dali_cpu >= 1.5x pil_imagefolder, >= 400 images/s per core; dali_gpu >= 10,000 images/s.

    .venv/bin/python bench/pipeline.py [--src ../shared/data/imagenet-sample] [--json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from pipelines import presets
from pipelines.loader import LoaderSpec, make_loader
from pipelines.sharding import shard_dataset

DEFAULT_SRC = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample"


def cores() -> int:
    return len(os.sched_getaffinity(0))


def time_epochs(make_batches: Callable[[], Iterable[Any]], count: Callable[[Any], int], repeats: int) -> float:
    """Best images/s over `repeats` epochs; the first batch of each epoch (pipeline start) is not timed."""
    best = 0.0
    for _ in range(repeats):
        images = 0
        start = None
        for batch in make_batches():
            if start is None:
                start = time.perf_counter()
                continue
            images += count(batch)
        if start is not None and images:
            best = max(best, images / (time.perf_counter() - start))
    return best


def bench_loader(shards: str, backend: str, batch_size: int, threads: int, device: torch.device, repeats: int) -> float:
    spec = LoaderSpec(uri=shards, batch_size=batch_size, backend=backend, num_threads=threads, seed=0)  # type: ignore[arg-type]
    loader = make_loader(spec, 0, 1, device)
    epoch = iter(range(repeats * 10))

    def batches() -> Iterable[Any]:
        loader.set_epoch(next(epoch))
        for batch in loader:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            yield batch

    return time_epochs(batches, lambda b: b.num_valid, repeats)


def imagefolder_tree(src: Path, root: Path) -> Path:
    """`<wnid>/<file>` symlinks to the flat sample (ImageFolder needs class folders; nothing is copied)."""
    with open(src / "labels.tsv", newline="") as f:
        for row in csv.DictReader(f, dialect="excel-tab"):
            (root / row["wnid"]).mkdir(parents=True, exist_ok=True)
            (root / row["wnid"] / row["file"]).symlink_to((src / row["file"]).resolve())
    return root


def bench_pil_imagefolder(src: Path, batch_size: int, workers: int, repeats: int) -> float:
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
    with tempfile.TemporaryDirectory() as tmp:
        dataset = ImageFolder(str(imagefolder_tree(src, Path(tmp))), transform=transform)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=True, num_workers=workers, persistent_workers=True
        )
        return time_epochs(lambda: loader, lambda b: int(b[1].numel()), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC, help="flat JPEG folder with labels.tsv")
    parser.add_argument("--shards", default=None, help="existing shard set of --src (default: shard to a temp dir)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-torch", action="store_true", help="skip the (slow) decode_jpeg fallback")
    parser.add_argument("--json", action="store_true", dest="as_json")
    args = parser.parse_args()

    n = cores()
    results: dict[str, Any] = {"cores": n, "batch_size": args.batch_size, "src": str(args.src)}
    with tempfile.TemporaryDirectory() as tmp:
        shards = args.shards or str(Path(tmp) / "shards")
        if args.shards is None:
            shard_dataset(args.src, shards, shard_bytes=30 * 10**6)
        cpu = torch.device("cpu")
        results["dali_cpu_images_per_s"] = bench_loader(shards, "dali", args.batch_size, n, cpu, args.repeats)
        results["pil_imagefolder_images_per_s"] = bench_pil_imagefolder(args.src, args.batch_size, n, args.repeats)
        if not args.skip_torch:
            results["torch_decode_jpeg_images_per_s"] = bench_loader(shards, "torch", args.batch_size, n, cpu, 1)
        if torch.cuda.is_available():
            gpu = torch.device("cuda", 0)
            results["gpu"] = torch.cuda.get_device_name(gpu)
            results["dali_gpu_images_per_s"] = bench_loader(shards, "dali", 256, n, gpu, args.repeats + 1)
    dali = results["dali_cpu_images_per_s"]
    results["dali_cpu_images_per_s_per_core"] = dali / n
    results["dali_cpu_vs_pil_imagefolder"] = dali / results["pil_imagefolder_images_per_s"]
    if "torch_decode_jpeg_images_per_s" in results:
        results["dali_cpu_vs_torch_decode_jpeg"] = dali / results["torch_decode_jpeg_images_per_s"]

    print(f"{'contender':<28}{'images/s':>12}{'per core':>12}")
    for key in ("dali_cpu", "pil_imagefolder", "torch_decode_jpeg", "dali_gpu"):
        value = results.get(f"{key}_images_per_s")
        if value is not None:
            print(f"{key:<28}{value:>12.0f}{value / n:>12.0f}")
    print(f"DALI CPU vs PIL ImageFolder: {results['dali_cpu_vs_pil_imagefolder']:.2f}x (target >= 1.5x)")
    print(f"DALI CPU per core: {results['dali_cpu_images_per_s_per_core']:.0f} images/s (target >= 400)")
    if args.as_json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
