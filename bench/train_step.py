"""CPU training-step time of one model: eager NCHW vs channels_last vs torch.compile, side by side.

    .venv/bin/python bench/train_step.py [--depth 18] [--width 64] [--size 112] [--batch 32] [--json]

Each variant runs `--rounds` interleaved rounds of `--steps` timed steps (after warm-up steps, which for
torch.compile include compiling); the median step time per variant and each variant's median ratio to eager NCHW
(within a round) are reported. This decides the CPU defaults of `recipe.channels_last` / `recipe.compile`; the GPU
defaults need the same comparison on a GPU (bench/gpu.py measures channels_last + bf16 there).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from models import get_model


def variant(name: str, depth: int, width: int) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor], bool]:
    torch.manual_seed(0)
    model = get_model(f"resnet{depth}", base_width=width)
    channels_last = name == "channels_last"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward: Callable[[torch.Tensor], torch.Tensor] = torch.compile(model) if name == "compile" else model
    return model, forward, channels_last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=18)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", dest="as_json")
    args = parser.parse_args()
    images = torch.randn(args.batch, 3, args.size, args.size)
    labels = torch.randint(0, 1000, (args.batch,))
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
    rounds = [{name: run() for name, run in steppers.items()} for _ in range(args.rounds)]
    results: dict[str, Any] = {"cores": len(os.sched_getaffinity(0)), "threads": torch.get_num_threads()}
    results |= vars(args)
    for name in steppers:
        results[f"{name}_step_s"] = statistics.median(r[name] for r in rounds)
        results[f"{name}_vs_eager"] = statistics.median(r[name] / r["eager"] for r in rounds)
    results["load_average_1m"] = os.getloadavg()[0]
    for name in steppers:
        print(f"{name:<14} {results[f'{name}_step_s'] * 1e3:8.1f} ms/step  {results[f'{name}_vs_eager']:.2f}x eager")
    if args.as_json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
