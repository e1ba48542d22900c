"""CPU training-step time of one model: eager NCHW vs channels_last vs torch.compile, side by side; or, with
`--checkpoint-every N`, eager steps without checkpoints vs a checkpoint every N steps uploaded `sync` vs `async`.

    .venv/bin/python bench/train_step.py [--depth 18] [--width 64] [--size 112] [--batch 32] [--json]
    .venv/bin/python bench/train_step.py --checkpoint-every 3 --steps 12 [--s3] [--json]

Each variant runs `--rounds` interleaved rounds of `--steps` timed steps (after warm-up steps, which for
torch.compile include compiling); the median step time per variant and each variant's median ratio to the first
(within a round) are reported. This decides the CPU defaults of `recipe.channels_last` / `recipe.compile`; the GPU
defaults need the same comparison on a GPU (bench/gpu.py measures channels_last + bf16 there).

The checkpoint variants save model and SGD state (`checkpoint_upload.save_checkpoint`, as a trial's rank 0 does:
write, fsync, hash, upload with the manifest last) to a local folder, or with `--s3` to a SeaweedFS started here;
`async` hands them to `background_upload.BackgroundUpload`, and each timed window ends by waiting for its last upload
(as a trial's epoch end does), so the window's time holds every checkpoint of it. This decides `checkpoint.upload`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow.fs
import torch
from torch import nn

from models import get_model
from orchestrator.training.background_upload import BackgroundUpload
from orchestrator.training.checkpoint_upload import save_checkpoint
from orchestrator.training.checkpointing import (
    TrainState,
    checkpoint_dir_name,
    checkpoint_dirs,
    latest_complete_checkpoint,
)
from pipelines.retry import RetryPolicy


def variant(name: str, depth: int, width: int) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor], bool]:
    torch.manual_seed(0)
    model = get_model(f"resnet{depth}", base_width=width)
    channels_last = name == "channels_last"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward: Callable[[torch.Tensor], torch.Tensor] = torch.compile(model) if name == "compile" else model
    return model, forward, channels_last


@contextlib.contextmanager
def checkpoint_storage(s3: bool) -> Iterator[tuple[pyarrow.fs.FileSystem, str]]:
    """(filesystem, root folder) for the checkpoints: a local temporary folder, or a bucket of a SeaweedFS run here."""
    if not s3:
        with tempfile.TemporaryDirectory(prefix="bench-ckpt-") as root:
            yield pyarrow.fs.LocalFileSystem(), root
        return
    from orchestrator.stack.seaweedfs import SeaweedFS

    with SeaweedFS() as server:
        yield server.settings.arrow_filesystem(), server.create_bucket("bench-ckpt")


def checkpoint_steppers(
    args: argparse.Namespace, images: torch.Tensor, labels: torch.Tensor, fs: pyarrow.fs.FileSystem, root: str
) -> tuple[dict[str, Callable[[], float]], Callable[[], None]]:
    """The steppers without checkpoints / `sync` / `async`, and a check that every checkpoint they took is complete."""
    policy = RetryPolicy(max_wait_s=30)
    steppers: dict[str, Callable[[], float]] = {}
    taken: dict[str, int] = {}
    for name in ("no_checkpoint", "sync", "async"):
        model, _, _ = variant("eager", args.depth, args.width)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        state = TrainState(step=0, epoch=0, epoch_step=0, attempt=0, optimizer={}, schedule={}, ranks=[])
        uploads = BackgroundUpload(fs, policy) if name == "async" else None
        taken[name] = 0

        def run(
            name: str = name,
            model: Any = model,
            optimizer: Any = optimizer,
            state: TrainState = state,
            uploads: BackgroundUpload | None = uploads,
        ) -> float:
            started = time.perf_counter()
            for step in range(1, args.steps + 1):
                loss = nn.functional.cross_entropy(model(images), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                state.step += 1
                state.step_losses.append(float(loss.detach()))
                if name == "no_checkpoint" or step % args.checkpoint_every:
                    continue
                state.optimizer = optimizer.state_dict()
                dest = f"{root}/{name}/{checkpoint_dir_name(state.step, 0)}"
                if uploads is None:
                    save_checkpoint(model.state_dict(), state, fs, dest, policy)
                else:
                    uploads.submit(model.state_dict(), state, dest)
                taken[name] += 1
            if uploads is not None:
                uploads.wait()  # the window's last checkpoint, as at a trial's epoch end
            return (time.perf_counter() - started) / args.steps

        steppers[name] = run

    def check() -> None:
        # Every checkpoint the variants took is complete in storage, the newest that of their last step.
        for name in ("sync", "async"):
            found = checkpoint_dirs(fs, f"{root}/{name}")
            if len(found) != taken[name] or latest_complete_checkpoint(fs, f"{root}/{name}") != found[0]:
                raise RuntimeError(f"{name}: {taken[name]} checkpoints taken, {len(found)} in storage")

    return steppers, check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=18)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--checkpoint-every", type=int, default=0, help="steps per checkpoint; 0: compare layouts")
    parser.add_argument("--s3", action="store_true", help="checkpoints to a SeaweedFS started here, not a local folder")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for the steps; 0: torch's default")
    parser.add_argument("--json", action="store_true", dest="as_json")
    args = parser.parse_args()
    if args.threads > 0:
        # Fewer threads than cores leaves the rest idle, as a GPU's training step leaves the host's cores.
        torch.set_num_threads(args.threads)
    images = torch.randn(args.batch, 3, args.size, args.size)
    labels = torch.randint(0, 1000, (args.batch,))
    if args.checkpoint_every > 0:
        with checkpoint_storage(args.s3) as (fs, root):
            steppers, check = checkpoint_steppers(args, images, labels, fs, root)
            report(args, steppers)
            check()
        return
    steppers: dict[str, Callable[[], float]] = {}
    for name in ("eager", "channels_last", "compile"):
        model, forward, channels_last = variant(name, args.depth, args.width)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x = images.to(memory_format=torch.channels_last) if channels_last else images

        def run(forward: Any = forward, optimizer: Any = optimizer, x: torch.Tensor = x) -> float:
            started = time.perf_counter()
            for _ in range(args.steps):
                loss = nn.functional.cross_entropy(forward(x), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            return (time.perf_counter() - started) / args.steps

        compile_started = time.perf_counter()
        run()  # warm-up (compiles)
        print(f"{name}: warm-up {time.perf_counter() - compile_started:.1f} s", flush=True)
        steppers[name] = run
    report(args, steppers)


def report(args: argparse.Namespace, steppers: dict[str, Callable[[], float]]) -> None:
    """Warm each stepper up, run `--rounds` interleaved rounds, print each one's median step time and median ratio to
    the first one's (within a round)."""
    if args.checkpoint_every > 0:
        for name, run in steppers.items():
            started = time.perf_counter()
            run()  # warm-up
            print(f"{name}: warm-up {time.perf_counter() - started:.1f} s", flush=True)
    base = next(iter(steppers))
    rounds = [{name: run() for name, run in steppers.items()} for _ in range(args.rounds)]
    results: dict[str, Any] = {"cores": len(os.sched_getaffinity(0)), "threads": torch.get_num_threads()}
    results |= vars(args)
    for name in steppers:
        results[f"{name}_step_s"] = statistics.median(r[name] for r in rounds)
        results[f"{name}_vs_{base}"] = statistics.median(r[name] / r[base] for r in rounds)
    if "async" in steppers:
        results["async_vs_sync"] = statistics.median(r["async"] / r["sync"] for r in rounds)
    results["rounds_step_s"] = rounds
    results["load_average_1m"] = os.getloadavg()[0]
    for name in steppers:
        ratio = results[f"{name}_vs_{base}"]
        print(f"{name:<14} {results[f'{name}_step_s'] * 1e3:8.1f} ms/step  {ratio:.2f}x {base}")
    if args.as_json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
