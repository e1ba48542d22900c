"""What Ray Train costs us: step time next to plain `torch.distributed`, submit latency, and recovery time.

Same model, same shards, same loader, same optimizer and batch on 2 CPU workers (gloo), in one run:

* `ray_vs_torch_step_time`: mean step time (input wait + compute, checkpoint writes excluded) after the first
  epoch of this project's Ray Train path (`run_trial`), divided by that of a plain `mp.spawn` + gloo loop over the
  same epochs (target <= 1.05);
* `submit_to_first_step_s`: from `run_trial` being called (Ray already up) to the first completed step;
* `kill_to_next_step_s`: from a chaos SIGKILL of rank 1 to the first step completed after the restart (< 30 s).

Where CUDA is present it also measures ResNet-50 images/s on one GPU with bf16 + channels_last and DALI GPU decode,
next to the same loop on synthetic data already in GPU memory (targets: >= 3,000 img/s and >= 95% of synthetic).

    .venv/bin/python bench/overhead.py [--epochs 3] [--json]

With `--json` the last line is one JSON object with the numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from models import get_model
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
from orchestrator.training.train_loop import CHAOS_MARKER
from orchestrator.training.trial import run_trial
from pipelines.loader import LoaderSpec
from pipelines.loader_factory import make_loader
from pipelines.presets import IGNORE_INDEX

logger = logging.getLogger("bench.overhead")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SAMPLE = REPO_ROOT.parent / "shared" / "data" / "imagenet-sample"
WORKERS = 2
WARMUP_STEPS = 5  # GPU part


def trial_config(name: str, shards: str, storage: str, epochs: int, chaos: tuple[ChaosConfig, ...] = ()) -> TrialConfig:
    return TrialConfig(
        trial_id=name,
        sweep_name="bench-overhead",
        seed=0,
        model=ModelConfig(depth=18, base_width=16),
        recipe=RecipeConfig(batch_size=64, epochs=epochs, image_size=64, resize_size=73),
        data=DataConfig(train=shards, num_threads=1),
        resources=ResourcesConfig(workers=WORKERS, cpus_per_worker=1),
        # Reports (and checkpoints) at epoch ends only: one timing window per epoch, the first one is warm-up.
        checkpoint=CheckpointConfig(every_steps=10**9, keep=1),
        storage=storage,
        max_failures=1,
        chaos=chaos,
    )


def _torch_worker(rank: int, cfg_json: str, port: int, queue: Any) -> None:
    """One rank of the plain torch.distributed loop: the same model, loader, optimizer and step as train_loop."""
    cfg = TrialConfig.model_validate_json(cfg_json)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORKERS)
    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    device = torch.device("cpu")
    model = nn.parallel.DistributedDataParallel(get_model(cfg.model.registry_name, **cfg.model.model_kwargs()))
    recipe = cfg.recipe
    spec = LoaderSpec(
        uri=cfg.data.train,
        split="train",
        batch_size=cfg.per_worker_batch,
        image_size=recipe.image_size,
        resize_size=recipe.resize_size,
        num_threads=cfg.data.num_threads,
        seed=cfg.seed,
    )
    loader = make_loader(spec, rank, WORKERS, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.scaled_lr, momentum=0.9, weight_decay=1e-4)
    criterion = nn.CrossEntropyLoss(reduction="sum", ignore_index=IGNORE_INDEX)
    times: list[float] = []
    for epoch in range(recipe.epochs):
        loader.set_epoch(epoch)
        batches = iter(loader)
        for _ in range(len(loader)):
            started = time.perf_counter()
            batch = next(batches)
            loss = criterion(model(batch.images), batch.labels) / (batch.labels != IGNORE_INDEX).sum().clamp(min=1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - started)
    if rank == 0:
        queue.put(times[len(loader) :])  # after the first epoch, like the Ray path
    dist.destroy_process_group()


def torch_step_time(cfg: TrialConfig) -> float:
    context = mp.get_context("spawn")
    queue = context.Queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    processes = [
        context.Process(target=_torch_worker, args=(rank, cfg.model_dump_json(), port, queue))
        for rank in range(WORKERS)
    ]
    for p in processes:
        p.start()
    times: list[float] = queue.get(timeout=1200)
    for p in processes:
        p.join(timeout=120)
    return statistics.fmean(times)


class _Collect:
    """A reporter that appends each report to a local JSON-lines file (the controller runs on this machine)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __call__(self, metrics: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(metrics, default=str) + "\n")


def ray_run(cfg: TrialConfig, reports: Path) -> tuple[float, float, dict[str, Any]]:
    """(steady step time, submit-to-first-step seconds, final metrics) of one `run_trial`."""
    submitted = time.time()
    result = run_trial(cfg, reporter=_Collect(reports))
    if not result.ok:
        raise RuntimeError(f"bench trial {cfg.trial_id} failed: {result.error}")
    # One report per epoch, all epochs of the same length: the mean over the epochs after the first.
    after_first = [json.loads(line) for line in reports.read_text().splitlines()][1:]
    step_time = statistics.fmean(float(r["step_time_s"]) for r in after_first)
    return step_time, result.metrics["first_step_unix_s"] - submitted, result.metrics


def kill_to_next_step(cfg: TrialConfig, storage: str, reports: Path) -> float:
    result = run_trial(cfg, reporter=_Collect(reports))
    if not result.ok or result.metrics.get("attempt") != 1:
        raise RuntimeError(f"the chaos trial did not restart once: {result.error or result.metrics.get('attempt')}")
    marker = json.loads(Path(storage, cfg.trial_id, CHAOS_MARKER).read_text())
    return float(result.metrics["first_step_unix_s"] - marker["unix_s"])


def gpu_throughput(shards: str, steps: int, batch: int = 256) -> dict[str, float]:
    """ResNet-50 images/s on one GPU: DALI GPU decode vs synthetic data in GPU memory (bf16, channels_last)."""
    device = torch.device("cuda", 0)
    torch.backends.cudnn.benchmark = True
    model = get_model("resnet50").to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    criterion = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = criterion(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def images_per_s(batches: Any) -> float:
        for _ in range(WARMUP_STEPS):
            step(*next(batches))
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(steps):
            step(*next(batches))
        torch.cuda.synchronize()
        return steps * batch / (time.perf_counter() - started)

    spec = LoaderSpec(
        uri=shards, split="train", batch_size=batch, dtype="bfloat16", channels_last=True, backend="dali", num_threads=8
    )
    loader = make_loader(spec, 0, 1, device)

    def real() -> Any:
        epoch = 0
        while True:
            loader.set_epoch(epoch)
            for b in loader:
                yield b.images, b.labels
            epoch += 1

    def synthetic() -> Any:
        images = torch.randn(batch, 3, 224, 224, device=device, dtype=torch.bfloat16).to(
            memory_format=torch.channels_last
        )
        labels = torch.randint(0, 1000, (batch,), device=device)
        while True:
            yield images, labels

    dali = images_per_s(real())
    synth = images_per_s(synthetic())
    return {"gpu_dali_images_per_s": dali, "gpu_synthetic_images_per_s": synth, "gpu_dali_vs_synthetic": dali / synth}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_SAMPLE, help="folder of JPEGs + labels.tsv")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the sample; the first is warm-up")
    parser.add_argument("--json", action="store_true", help="print the numbers as one JSON object, last line")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not (args.data / "labels.tsv").is_file():
        parser.error(f"--data {args.data}: no labels.tsv there; pass a folder of JPEGs with labels.tsv")
    from pipelines.sharding import shard_dataset

    with tempfile.TemporaryDirectory(prefix="resnet-orch-bench-") as tmp:
        shards = f"{tmp}/shards"
        shard_dataset(args.data, shards, shard_bytes=30 * 10**6)
        storage = f"{tmp}/storage"
        if args.epochs < 2:
            parser.error("--epochs: at least 2 (the first one is warm-up)")
        base = trial_config("overhead", shards, storage, args.epochs)
        # The plain loop runs before and after the Ray path: on a shared machine the load drifts, and the mean of
        # the two brackets the Ray run in time.
        torch_before = torch_step_time(base)
        with in_process_ray(num_cpus=WORKERS + 2):
            ray_time, submit_s, _ = ray_run(base, Path(tmp, "reports.jsonl"))
            torch_time = statistics.fmean([torch_before, torch_step_time(base)])
            chaos = trial_config("overhead-kill", shards, storage, 1, (ChaosConfig(kill_rank=1, at_step=8),))
            kill_s = kill_to_next_step(chaos, storage, Path(tmp, "reports-kill.jsonl"))
        numbers: dict[str, float] = {
            "ray_step_time_s": ray_time,
            "torch_step_time_s": torch_time,
            "ray_vs_torch_step_time": ray_time / torch_time,
            "submit_to_first_step_s": submit_s,
            "kill_to_next_step_s": kill_s,
        }
        if torch.cuda.is_available():
            numbers.update(gpu_throughput(shards, steps=50))
        else:
            logger.info("no CUDA device: the GPU throughput part is skipped")
    print(
        f"step time: Ray Train {ray_time * 1e3:.1f} ms, torch.distributed {torch_time * 1e3:.1f} ms "
        f"(ratio {numbers['ray_vs_torch_step_time']:.3f}, target <= 1.05)"
    )
    print(f"submit -> first step: {submit_s:.1f} s; kill -> next step: {kill_s:.1f} s (target < 30 s)")
    if "gpu_dali_images_per_s" in numbers:
        print(
            f"ResNet-50 on one GPU: DALI {numbers['gpu_dali_images_per_s']:.0f} img/s, synthetic "
            f"{numbers['gpu_synthetic_images_per_s']:.0f} img/s ({numbers['gpu_dali_vs_synthetic']:.1%})"
        )
    if args.json:
        print(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in numbers.items()}))


if __name__ == "__main__":
    main()
