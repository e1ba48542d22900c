"""The elastic train loader on local shards: the same tensors at every world size, restores across world sizes,
and only ranged reads of the shards."""

from __future__ import annotations

import itertools

import pytest
import torch

from pipelines.elastic_loader import ElasticLoader
from pipelines.loader import Batch, LoaderSpec
from pipelines.loader_factory import make_elastic_loader
from pipelines.storage import LocalStore

CPU = torch.device("cpu")
M = 4  # micro-batches per step: the range's max
MICRO = 3  # samples per micro-batch: 12 per step, 4 steps over the 48 tiny images


def spec(uri: str, **changes: object) -> LoaderSpec:
    base = {"uri": uri, "batch_size": MICRO, "backend": "torch", "num_threads": 2, "seed": 7, "image_size": 32}
    return LoaderSpec.model_validate(base | {"resize_size": 40} | changes)


def loaders(uri: str, world: int, **changes: object) -> list[ElasticLoader]:
    return [make_elastic_loader(spec(uri, **changes), M, rank, world, CPU) for rank in range(world)]


def steps(group: list[ElasticLoader], epoch: int, count: int | None = None) -> list[list[Batch]]:
    """The group's steps from where it stands (`count` of them, else to the epoch's end): each step's micro-batches
    over the ranks, in rank order (= micro-batch order)."""
    iters = []
    for loader in group:
        loader.set_epoch(epoch)
        iters.append(iter(loader))
    result = []
    for parts in itertools.islice(zip(*iters, strict=True), count):
        assert len({p.step_samples for p in parts}) == 1  # every rank knows the step's real count alike
        result.append([batch for part in parts for batch in part.micro])
    return result


def same(a: list[list[Batch]], b: list[list[Batch]]) -> bool:
    flat_a, flat_b = [x for s in a for x in s], [x for s in b for x in s]
    return len(a) == len(b) and all(
        torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels) for x, y in zip(flat_a, flat_b, strict=True)
    )


def test_the_steps_are_bit_equal_at_one_two_and_three_workers(tiny_shards_local: str) -> None:
    one = steps(loaders(tiny_shards_local, 1), epoch=2)
    assert len(one) == 4 and all(len(s) == M for s in one)
    labels = sorted(label for s in one for b in s for label in b.labels.tolist())
    assert labels == sorted(c for c in range(8) for _ in range(6))  # the 48 images once: 8 classes x 6
    assert same(steps(loaders(tiny_shards_local, 2), epoch=2), one)
    assert same(steps(loaders(tiny_shards_local, 3), epoch=2), one)  # unequal shares: 1, 1, 2 micro-batches
    other_epoch = steps(loaders(tiny_shards_local, 1), epoch=3)
    assert not torch.equal(other_epoch[0][0].images, one[0][0].images)


def test_a_state_saved_at_two_workers_resumes_at_one_and_three(tiny_shards_local: str) -> None:
    reference = steps(loaders(tiny_shards_local, 1), epoch=1)
    two = loaders(tiny_shards_local, 2)
    head = steps(two, epoch=1, count=2)
    states = [loader.state_dict() for loader in two]
    assert states[0] == states[1] and states[0]["step"] == 2 and "rank" not in states[0]
    for world in (1, 3):
        group = loaders(tiny_shards_local, world)
        for loader in group:
            loader.load_state_dict(states[0])
        assert same(head + steps(group, epoch=1), reference)  # set_epoch(1) keeps the part-way position
    with pytest.raises(ValueError, match="loader state field 'seed'"):
        loaders(tiny_shards_local, 1, seed=8)[0].load_state_dict(states[0])


def test_the_last_step_is_padded_and_no_shard_is_read_whole(
    tiny_shards_local: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole: list[str] = []
    real_read_bytes = LocalStore.read_bytes

    def read_bytes(self: LocalStore, name: str) -> bytes:
        whole.append(name)
        return real_read_bytes(self, name)

    monkeypatch.setattr(LocalStore, "read_bytes", read_bytes)
    # 5 micro-batches of 3 (15 a step): 4 steps, the last with 48 - 45 = 3 real samples in its first micro-batch.
    group = [make_elastic_loader(spec(tiny_shards_local), 5, rank, 2, CPU) for rank in range(2)]
    assert (len(group[0]), group[0].samples_per_epoch, group[0].samples_in_batches(3)) == (4, 48, 45)
    last = steps(group, epoch=0)[-1]
    assert [int(b.valid.sum()) for b in last] == [3, 0, 0, 0, 0]
    assert all(b.labels[~b.valid].eq(-100).all() for b in last)
    assert whole and not [name for name in whole if name.endswith(".tar")]


def test_dali_and_validation_are_refused(tiny_shards_local: str) -> None:
    with pytest.raises(ValueError, match="backend='dali'"):
        make_elastic_loader(spec(tiny_shards_local, backend="dali"), M, 0, 1, CPU)
    with pytest.raises(ValueError, match="training epochs only"):
        make_elastic_loader(spec(tiny_shards_local, split="val"), M, 0, 1, CPU)
