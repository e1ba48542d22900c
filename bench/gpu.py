"""One GPU, one command, one JSON line: is the input pipeline fast enough to keep a ResNet-50 busy?

    .venv/bin/python bench/gpu.py [--src ../shared/data/imagenet-sample] [--shards DIR] [--steps 60]

Parts, in this order (about 4-6 minutes on one H100/H200-class GPU, under 8 in all):

* `dali_mixed_images_per_s`: this project's DALI train loader on the GPU (nvJPEG `mixed` decode with ROI random
  crop, uint8 out, normalized on the GPU) from local shards, batch 256, no model (target >= 10,000);
* `resnet50_synthetic_images_per_s`: ResNet-50 training steps, bf16 autocast, channels_last, cudnn.benchmark, on a
  batch already in GPU memory (target >= 3,000);
* `resnet50_dali_images_per_s`: the same steps fed by the DALI loader; `real_vs_synthetic` is their ratio (target
  >= 0.95: below it the step waits for input, `input_bound_fraction` = 1 - ratio);
* `restart_exact`: a short trial through Ray Train on the GPU with `recipe.deterministic: true`, killed by the chaos
  drill mid-epoch and resumed, whose per-step losses equal an uninterrupted run's bit for bit (`restart_max_abs_diff`).

Without CUDA it prints one JSON line `{"skipped": "..."}` naming why, and exits 0: nothing was measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

DEFAULT_SRC = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample"
BATCH = 256
WARMUP_STEPS = 10


def skip_reason() -> str | None:
    """Why this machine cannot run the benchmark, or None."""
    if not torch.cuda.is_available():
        return "no CUDA device: torch.cuda.is_available() is False; run bench/gpu.py on a machine with an NVIDIA GPU"
    try:
        import nvidia.dali  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"NVIDIA DALI cannot be imported ({exc}); install the project with its dali extra"
    return None


def endless(loader: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The loader's batches over epochs without end (its pipeline lives across them)."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        for batch in loader:
            yield batch.images, batch.labels
        epoch += 1


def images_per_s(step: Callable[[torch.Tensor, torch.Tensor], None], batches: Iterator[Any], steps: int) -> float:
    for _ in range(WARMUP_STEPS):
        step(*next(batches))
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step(*next(batches))
    torch.cuda.synchronize()
    return steps * BATCH / (time.perf_counter() - started)


def dali_loader(shards: str) -> Any:
    from pipelines.loader import LoaderSpec
    from pipelines.loader_factory import make_loader

    spec = LoaderSpec(uri=shards, batch_size=BATCH, dtype="bfloat16", channels_last=True, backend="dali")
    return make_loader(spec, 0, 1, torch.device("cuda", 0))


def throughput(shards: str, steps: int) -> dict[str, float]:
    from models import get_model
    from orchestrator.training.setup import configure_algorithms
    from pipelines.presets import IGNORE_INDEX

    device = torch.device("cuda", 0)
    configure_algorithms(deterministic=False, on_gpu=True)
    decode = images_per_s(lambda images, labels: None, endless(dali_loader(shards)), steps * 2)

    model = get_model("resnet50").to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    criterion = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)

    def train_step(images: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = criterion(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def synthetic() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        images = torch.randn(BATCH, 3, 224, 224, device=device, dtype=torch.bfloat16)
        labels = torch.randint(0, 1000, (BATCH,), device=device)
        while True:
            yield images.to(memory_format=torch.channels_last), labels

    synth = images_per_s(train_step, synthetic(), steps)
    real = images_per_s(train_step, endless(dali_loader(shards)), steps)
    return {
        "dali_mixed_images_per_s": decode,
        "resnet50_synthetic_images_per_s": synth,
        "resnet50_dali_images_per_s": real,
        "real_vs_synthetic": real / synth,
        "input_bound_fraction": max(0.0, 1.0 - real / synth),
    }


def restart_check(shards: str, storage: str) -> dict[str, Any]:
    """Uninterrupted vs killed-at-step-7-and-resumed, one GPU worker, deterministic: the per-step losses."""
    from orchestrator.stack.ray_head import in_process_ray
    from orchestrator.sweep.config import (
        ChaosConfig,
        CheckpointConfig,
        DataConfig,
        ModelConfig,
        RecipeConfig,
        ResourcesConfig,
        TrialConfig,
    )
    from orchestrator.training.checkpointing import read_checkpoint
    from orchestrator.training.trial import open_checkpoint, run_trial

    def trial(name: str, chaos: ChaosConfig | None) -> list[float]:
        cfg = TrialConfig(
            trial_id=name,
            sweep_name="bench-gpu",
            seed=3,
            model=ModelConfig(depth=18),
            recipe=RecipeConfig(
                batch_size=128, epochs=2, image_size=112, resize_size=128, deterministic=True, steps_per_epoch=6
            ),
            data=DataConfig(train=shards),
            resources=ResourcesConfig(workers=1, gpus_per_worker=1, cpus_per_worker=4),
            checkpoint=CheckpointConfig(every_steps=4, keep=2),
            storage=storage,
            max_failures=1,
            chaos=chaos,
        )
        result = run_trial(cfg)
        if not result.ok or result.checkpoint_path is None:
            raise RuntimeError(f"restart check trial {name} failed: {result.error}")
        with open_checkpoint(result.checkpoint_path).as_directory() as directory:
            _, state = read_checkpoint(Path(directory))
        return [float(x) for x in state.step_losses]

    with in_process_ray(num_cpus=6):  # Ray finds the GPU itself
        reference = trial("reference", None)
        resumed = trial("killed", ChaosConfig(kill_rank=0, at_step=7))
    diff = max((abs(a - b) for a, b in zip(reference, resumed, strict=True)), default=float("inf"))
    return {"restart_exact": len(reference) == len(resumed) and diff == 0.0, "restart_max_abs_diff": diff}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC, help="flat JPEG folder with labels.tsv")
    parser.add_argument("--shards", default=None, help="an existing shard set (default: shard --src to a temp dir)")
    parser.add_argument("--steps", type=int, default=60, help="timed training steps per contender")
    parser.add_argument("--skip-restart", action="store_true", help="skip the Ray Train restart check")
    args = parser.parse_args()
    reason = skip_reason()
    if reason is not None:
        print(f"bench/gpu.py: skipped, {reason}", file=sys.stderr)
        print(json.dumps({"skipped": reason}))
        return 0
    from pipelines.sharding import shard_dataset

    started = time.perf_counter()
    results: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0), "cores": len(os.sched_getaffinity(0))}
    with tempfile.TemporaryDirectory(prefix="resnet-orch-gpu-bench-") as tmp:
        shards = args.shards
        if shards is None:
            shards = f"{tmp}/shards"
            shard_dataset(args.src, shards, shard_bytes=30 * 10**6)
        results |= throughput(shards, args.steps)
        if not args.skip_restart:
            results |= restart_check(shards, f"{tmp}/storage")
    results["seconds"] = time.perf_counter() - started
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
