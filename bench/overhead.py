"""What Ray Train costs us: step time next to plain `torch.distributed`, submit latency, and recovery time.

Same model, same shards, same loader, same optimizer and batch on 2 CPU workers (gloo), in one run:

* `ray_vs_torch_step_time`: mean step time (input wait + compute, checkpoint writes excluded) after the first
  epoch of this project's Ray Train path (`run_trial`), divided by that of a plain `mp.spawn` + gloo loop over the
  same epochs (target <= 1.05);
* `submit_to_first_step_s`: from `run_trial` being called (Ray already up) to the first completed step;
* `kill_to_next_step_s`: from a chaos SIGKILL of rank 1 to the first step completed after the restart (< 30 s).

* `per_trial_overhead_s`: the fixed cost of each trial of a sweep, from one trial's end to the next one's first
  step (`--trials` trials of two steps each, one after another; target <= 10 s);

The GPU figures (ResNet-50 images/s with DALI vs synthetic data) are bench/gpu.py's.

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


def per_trial_overhead(shards: str, storage: str, trials: int) -> dict[str, float]:
    """Fixed cost per trial of trials run one after another on a warm Ray, as a sweep runs them: each trial trains
    two steps. `per_trial_overhead_s`: median over trials 2..N of (trial N+1's first step - trial N's return);
    `first_trial_submit_to_first_step_s` for trial 1; the split of trial 2..N's overhead into Ray Train start-up
    (call -> the train function starts on rank 0) and setup (-> its first step: model, loaders, first batch)."""
    gaps: list[float] = []
    startup: list[float] = []
    setup: list[float] = []
    first = math.nan
    previous_end = math.nan
    for n in range(trials):
        cfg = trial_config(f"startup-{n}", shards, storage, 1).model_copy(
            update={"recipe": RecipeConfig(batch_size=64, epochs=1, image_size=64, resize_size=73, steps_per_epoch=2)}
        )
        called = time.time()
        result = run_trial(cfg)
        if not result.ok:
            raise RuntimeError(f"start-up trial {n} failed: {result.error}")
        first_step = float(result.metrics["first_step_unix_s"])
        if n == 0:
            first = first_step - called
        else:
            gaps.append(first_step - previous_end)
            startup.append(float(result.metrics["attempt_start_unix_s"]) - called)
            setup.append(first_step - float(result.metrics["attempt_start_unix_s"]))
        previous_end = time.time()
    return {
        "per_trial_overhead_s": statistics.median(gaps),
        "per_trial_overhead_rounds_s": gaps,  # type: ignore[dict-item]
        "first_trial_submit_to_first_step_s": first,
        "per_trial_ray_train_startup_s": statistics.median(startup),
        "per_trial_setup_to_first_step_s": statistics.median(setup),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_SAMPLE, help="folder of JPEGs + labels.tsv")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the sample; the first is warm-up")
    parser.add_argument("--trials", type=int, default=4, help="trials of the start-up measurement (>= 2)")
    parser.add_argument("--rounds", type=int, default=3, help="Ray / torch step-time rounds; the median ratio counts")
    parser.add_argument("--only-startup", action="store_true", help="measure per_trial_overhead_s only")
    parser.add_argument("--json", action="store_true", help="print the numbers as one JSON object, last line")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs: at least 2 (the first one is warm-up)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not (args.data / "labels.tsv").is_file():
        parser.error(f"--data {args.data}: no labels.tsv there; pass a folder of JPEGs with labels.tsv")
    from pipelines.sharding import shard_dataset

    with tempfile.TemporaryDirectory(prefix="resnet-orch-bench-") as tmp:
        shards = f"{tmp}/shards"
        shard_dataset(args.data, shards, shard_bytes=30 * 10**6)
        storage = f"{tmp}/storage"
        numbers: dict[str, Any] = {"cores": len(os.sched_getaffinity(0))}
        with in_process_ray(num_cpus=WORKERS + 2):
            if not args.only_startup:
                numbers |= step_time_rounds(shards, storage, Path(tmp), args.epochs, args.rounds)
                chaos = trial_config("overhead-kill", shards, storage, 1, (ChaosConfig(kill_rank=1, at_step=8),))
                numbers["kill_to_next_step_s"] = kill_to_next_step(chaos, storage, Path(tmp, "reports-kill.jsonl"))
            numbers |= per_trial_overhead(shards, storage, max(2, args.trials))
        numbers["load_average_1m"] = os.getloadavg()[0]
    if "ray_vs_torch_step_time" in numbers:
        print(
            f"step time: Ray Train {numbers['ray_step_time_s'] * 1e3:.1f} ms, torch.distributed "
            f"{numbers['torch_step_time_s'] * 1e3:.1f} ms (median ratio of {args.rounds} rounds "
            f"{numbers['ray_vs_torch_step_time']:.3f}, target <= 1.05)"
        )
        print(
            f"submit -> first step: {numbers['submit_to_first_step_s']:.1f} s; kill -> next step: "
            f"{numbers['kill_to_next_step_s']:.1f} s (target < 30 s)"
        )
    print(
        f"per-trial overhead: {numbers['per_trial_overhead_s']:.1f} s (target <= 10 s; Ray Train start-up "
        f"{numbers['per_trial_ray_train_startup_s']:.1f} s, setup {numbers['per_trial_setup_to_first_step_s']:.1f} s); "
        f"load average {numbers['load_average_1m']:.1f}"
    )
    if args.json:
        print(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in numbers.items()}))


def step_time_rounds(shards: str, storage: str, tmp: Path, epochs: int, rounds: int) -> dict[str, Any]:
    """`rounds` interleaved pairs (plain torch.distributed, then Ray Train) of the same epochs; each pair's ratio is
    taken side by side (the machine's load of that moment), the median of the ratios reported."""
    ratios: list[float] = []
    ray_times: list[float] = []
    torch_times: list[float] = []
    submits: list[float] = []
    for n in range(rounds):
        cfg = trial_config(f"overhead-{n}", shards, storage, epochs)
        torch_times.append(torch_step_time(cfg))
        ray_time, submit_s, _ = ray_run(cfg, tmp / f"reports-{n}.jsonl")
        ray_times.append(ray_time)
        submits.append(submit_s)
        ratios.append(ray_time / torch_times[-1])
    return {
        "ray_step_time_s": statistics.median(ray_times),
        "torch_step_time_s": statistics.median(torch_times),
        "ray_vs_torch_step_time": statistics.median(ratios),
        "ray_vs_torch_step_time_rounds": ratios,
        "submit_to_first_step_s": statistics.median(submits),
    }


if __name__ == "__main__":
    main()
