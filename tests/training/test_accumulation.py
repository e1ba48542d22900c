"""One step of an elastic group: its ranks' accumulated micro-batches give the configured global batch's mean
gradient at every world size (1, 2, and 3 with unequal shares), and the fixed path keeps its batch-mean loss.

Real gloo process groups (one process per rank) and DDP; the reference is plain autograd on one undistributed copy.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from orchestrator.training.accumulation import Accumulator
from pipelines.elastic_loader import StepBatches
from pipelines.global_order import GlobalPlan
from pipelines.loader import Batch
from pipelines.presets import IGNORE_INDEX

CPU = torch.device("cpu")
M, MICRO, CLASSES, LR = 4, 5, 3, 0.5
# 18 real samples in a step of 20: the last micro-batch holds 3 real samples and 2 padding positions.
REAL = 18
WORLDS = (1, 2, 3)  # 3: unequal shares of the 4 micro-batches (1, 1, 2)


def model() -> nn.Module:
    torch.manual_seed(0)
    # BatchNorm in train mode: its statistics are those of each micro-batch, at every world size.
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, CLASSES))


def step_data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(M * MICRO, 6, generator=generator)
    labels = torch.randint(0, CLASSES, (M * MICRO,), generator=generator)
    labels[REAL:] = IGNORE_INDEX
    return images, labels


def micro_batches(indices: range) -> tuple[Batch, ...]:
    images, labels = step_data()
    return tuple(Batch(images[j * MICRO : (j + 1) * MICRO], labels[j * MICRO : (j + 1) * MICRO]) for j in indices)


def criterion() -> nn.Module:
    return nn.CrossEntropyLoss(reduction="sum", ignore_index=IGNORE_INDEX)


def rank_main(rank: int, ports: list[int], out: str) -> None:
    """Rank `rank` of each group of 1, 2 and 3 it belongs to, one after the other (one process start for all)."""
    torch.set_num_threads(1)
    for world, port in zip(WORLDS, ports, strict=True):
        if rank >= world:
            continue
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        try:
            net = model()
            ddp = DistributedDataParallel(net, broadcast_buffers=False)
            optimizer = torch.optim.SGD(ddp.parameters(), lr=LR)
            step = Accumulator(ddp, ddp, optimizer, criterion(), device=CPU, bf16=False, world=world, elastic=True)
            mine = GlobalPlan(REAL, MICRO, M).micro_range(rank, world)
            sums, loss = step.step(StepBatches(micro_batches(mine), step_samples=REAL), LR)
            logged = step.step_losses([loss])
            dist.all_reduce(sums)
            if rank == 0:
                found = {"params": [p.detach() for p in net.parameters()], "loss": logged, "sums": sums}
                torch.save(found, f"{out}/world{world}.pt")
        finally:
            dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reference() -> tuple[list[torch.Tensor], float]:
    """The step written from its definition: the mean loss over the step's real samples, BN per micro-batch."""
    net = model()
    images, labels = step_data()
    parts = [slice(j * MICRO, (j + 1) * MICRO) for j in range(M)]
    mean = sum(criterion()(net(images[part]), labels[part]) for part in parts) / REAL
    mean.backward()
    with torch.no_grad():
        return [p - LR * p.grad for p in net.parameters()], float(mean)


def test_every_world_size_steps_with_the_global_batch_mean(tmp_path: Path) -> None:
    ports = [free_port() for _ in WORLDS]
    mp.start_processes(rank_main, args=(ports, str(tmp_path)), nprocs=max(WORLDS), start_method="spawn")
    params, mean = reference()
    for world in WORLDS:
        result = torch.load(tmp_path / f"world{world}.pt")
        for got, expected in zip(result["params"], params, strict=True):
            torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
        assert result["loss"] == pytest.approx([mean], abs=1e-6)
        assert result["sums"][0].item() == REAL  # real samples over all ranks: padding is not counted


def test_the_fixed_path_steps_with_the_rank_batch_mean(tmp_path: Path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        net = model()
        ddp = DistributedDataParallel(net)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=LR)
        accumulator = Accumulator(ddp, ddp, optimizer, criterion(), device=CPU, bf16=False, world=1, elastic=False)
        images, labels = step_data()
        _, loss = accumulator.step(Batch(images, labels), LR)
        with pytest.raises(TypeError, match="StepBatches"):
            Accumulator(ddp, ddp, optimizer, criterion(), device=CPU, bf16=False, world=1, elastic=True).step(
                Batch(images, labels), LR
            )
    finally:
        dist.destroy_process_group()
    plain = model()
    expected = criterion()(plain(images), labels) / REAL
    expected.backward()
    assert float(loss) == pytest.approx(float(expected), abs=1e-6)
    for got, p in zip(net.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(got.detach(), p.detach() - LR * p.grad, atol=1e-6, rtol=1e-5)
