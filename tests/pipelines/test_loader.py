"""Loader contract on local shards: exactly-once epochs, determinism, mid-epoch restore, outputs."""

from __future__ import annotations

import logging
import sys

import pytest
import torch

from pipelines import presets
from pipelines.loader import Backend, Batch, EpochPlan, Loader, LoaderSpec
from pipelines.loader_factory import make_loader

CPU = torch.device("cpu")
# Normalized pixel bounds: (0 - mean) / std .. (1 - mean) / std over the three channels.
LOW = min((0 - m) / s for m, s in zip(presets.IMAGENET_MEAN, presets.IMAGENET_STD, strict=True))
HIGH = max((1 - m) / s for m, s in zip(presets.IMAGENET_MEAN, presets.IMAGENET_STD, strict=True))


def _epoch_labels(loader: Loader, epoch: int) -> list[int]:
    loader.set_epoch(epoch)
    labels: list[int] = []
    for batch in loader:
        labels += batch.labels[batch.valid].tolist()
    return labels


def _same(a: list[Batch], b: list[Batch]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels) for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize(
    ("n", "world", "batch", "policy", "batches", "per_epoch"),
    [
        (1000, 2, 64, "pad", 8, 1000),
        (1000, 3, 64, "pad", 6, 1000),
        (1000, 3, 333, "pad", 2, 1000),  # ranks hold 333/333/334: all need 2 batches
        (1000, 2, 64, "drop", 7, 896),
        (10, 4, 4, "pad", 1, 10),
    ],
)
def test_epoch_plan(n: int, world: int, batch: int, policy: str, batches: int, per_epoch: int) -> None:
    plans = [EpochPlan(n, r, world, batch, policy) for r in range(world)]
    assert {p.batches for p in plans} == {batches}
    assert plans[0].samples_per_epoch == per_epoch
    if policy == "pad":
        assert sum(p.valid_in_batch(k) for p in plans for k in range(batches)) == n


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_two_ranks_disjoint_union_all_and_restore(backend: Backend, tiny_shards_local: str) -> None:
    spec = LoaderSpec(
        uri=tiny_shards_local, batch_size=5, backend=backend, num_threads=2, seed=7, image_size=64, resize_size=72
    )
    per_rank = [_epoch_labels(make_loader(spec, r, 2, CPU), epoch=3) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == 24
    counts = torch.bincount(torch.tensor(per_rank[0] + per_rank[1]))
    assert counts.tolist() == [6] * 8  # every sample once: 8 classes x 6 images
    # mid-epoch state -> exactly the batches that would have come next
    loader = make_loader(spec, 1, 2, CPU)
    loader.set_epoch(3)
    it = iter(loader)
    head = [next(it) for _ in range(2)]
    state = loader.state_dict()
    tail = list(it)
    restored = make_loader(spec, 1, 2, CPU)
    restored.load_state_dict(state)
    restored.set_epoch(3)  # the train loop calls this on resume: must keep the position
    assert len(head) + len(tail) == len(loader) == 5
    assert _same(tail, list(restored))


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_every_validation_pass_reads_the_whole_set(backend: Backend, tiny_shards_local: str) -> None:
    # The train loop keeps one val loader per rank for the whole trial and calls set_epoch(0) before each pass:
    # every pass must read every sample once over the ranks, not only the first (a finished epoch starts over).
    spec = LoaderSpec(
        uri=tiny_shards_local, split="val", batch_size=5, backend=backend, num_threads=1, image_size=32, resize_size=40
    )
    loaders = [make_loader(spec, r, 2, CPU) for r in range(2)]
    for _ in range(3):
        labels = [label for loader in loaders for label in _epoch_labels(loader, epoch=0)]
        assert sorted(labels) == sorted(c for c in range(8) for _ in range(6))


def test_same_seed_same_batches_other_epoch_other_order(sample_shards_local: str) -> None:
    spec = LoaderSpec(uri=sample_shards_local, batch_size=32, backend="dali", num_threads=2, seed=11)

    def first_batches(epoch: int, threads: int) -> list[Batch]:
        loader = make_loader(spec.model_copy(update={"num_threads": threads}), 0, 2, CPU)
        loader.set_epoch(epoch)
        it = iter(loader)
        return [next(it) for _ in range(2)]

    a = first_batches(0, threads=2)
    assert _same(a, first_batches(0, threads=1))  # deterministic, whatever the thread count
    b = first_batches(1, threads=2)
    assert a[0].labels.tolist() != b[0].labels.tolist()


def test_dali_restore_on_real_images_across_shards(sample_shards_local: str) -> None:
    spec = LoaderSpec(uri=sample_shards_local, batch_size=48, backend="dali", num_threads=2, seed=5, preset="paper")
    loader = make_loader(spec, 0, 1, CPU)
    loader.set_epoch(2)
    it = iter(loader)
    for _ in range(4):
        next(it)
    state = loader.state_dict()
    expected = [next(it) for _ in range(2)]
    restored = make_loader(spec, 0, 1, CPU)
    restored.load_state_dict(state)
    it2 = iter(restored)
    assert _same(expected, [next(it2) for _ in range(2)])


@pytest.mark.parametrize(
    ("backend", "preset", "dtype", "channels_last"),
    [
        ("dali", "standard", "float32", False),
        ("dali", "paper", "bfloat16", True),
        ("dali", "standard", "float16", True),
        ("torch", "standard", "float32", True),
        ("torch", "paper", "bfloat16", False),
    ],
)
def test_train_outputs(backend: Backend, preset: str, dtype: str, channels_last: bool, tiny_shards_local: str) -> None:
    spec = LoaderSpec(
        uri=tiny_shards_local,
        batch_size=8,
        backend=backend,
        preset=preset,  # type: ignore[arg-type]
        dtype=dtype,  # type: ignore[arg-type]
        channels_last=channels_last,
        num_threads=2,
        image_size=96,
        resize_size=110,
    )
    batch = next(iter(make_loader(spec, 0, 1, CPU)))
    assert batch.images.shape == (8, 3, 96, 96)
    assert batch.images.dtype == spec.torch_dtype
    assert batch.labels.dtype == torch.int64 and batch.labels.shape == (8,)
    assert batch.images.is_contiguous(memory_format=torch.channels_last) == channels_last
    values = batch.images.float()
    margin = 0.6 if preset == "paper" else 0.05  # PCA colour shifts push pixels slightly past [0, 1]
    assert LOW - margin <= values.min().item() < -0.5 and 0.5 < values.max().item() <= HIGH + margin
    assert batch.labels.min().item() >= 0 and batch.labels.max().item() < 8


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_val_center_and_ten_crop(backend: Backend, tiny_shards_local: str) -> None:
    spec = LoaderSpec(
        uri=tiny_shards_local,
        split="val",
        batch_size=48,
        backend=backend,
        num_threads=2,
        image_size=64,
        resize_size=73,  # odd margin: catches a crop-vs-mirror order mismatch
    )
    plain = next(iter(make_loader(spec, 0, 1, CPU)))
    assert plain.images.shape == (48, 3, 64, 64)
    assert plain.labels.tolist() == next(iter(make_loader(spec, 0, 1, CPU))).labels.tolist()  # unshuffled
    ten = next(iter(make_loader(spec.model_copy(update={"protocol": "ten_crop"}), 0, 1, CPU)))
    assert ten.images.shape == (48, 10, 3, 64, 64)
    # crop 5 is the center crop (the plain val view), crop 9 its mirror image
    torch.testing.assert_close(ten.images[:, 4], plain.images, atol=1e-3, rtol=0)
    torch.testing.assert_close(ten.images[:, 9], plain.images.flip(-1), atol=1e-3, rtol=0)


def test_state_of_another_rank_is_refused(tiny_shards_local: str) -> None:
    spec = LoaderSpec(uri=tiny_shards_local, batch_size=4, backend="dali", num_threads=1)
    state = make_loader(spec, 1, 2, CPU).state_dict()
    with pytest.raises(ValueError, match="'rank' is 1 but this loader has 0"):
        make_loader(spec, 0, 2, CPU).load_state_dict(state)


def test_bad_spec_names_the_field() -> None:
    with pytest.raises(ValueError, match="protocol 'ten_crop': only for split='val'"):
        LoaderSpec(uri="/x", batch_size=4, protocol="ten_crop")
    with pytest.raises(ValueError, match="scales: give them with protocol='multi_scale'"):
        LoaderSpec(uri="/x", batch_size=4, split="val", protocol="multi_scale")
    with pytest.raises(ValueError, match="batch_size"):
        LoaderSpec(uri="/x", batch_size=0)
    with pytest.raises(ValueError, match="unsupported scheme"):
        LoaderSpec(uri="gs://bucket/x", batch_size=4)


def test_auto_backend_falls_back_to_torch_with_a_warning(
    tiny_shards_local: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # `import nvidia.dali` now raises ImportError
    spec = LoaderSpec(uri=tiny_shards_local, batch_size=4)
    with caplog.at_level(logging.WARNING, logger="pipelines.loader_factory"):
        loader = make_loader(spec, 0, 1, CPU)
    assert type(loader).__name__ == "TorchLoader"
    assert "using the torchvision fallback loader" in caplog.text
    with pytest.raises(ImportError, match="backend='dali' but NVIDIA DALI cannot be imported"):
        make_loader(spec.model_copy(update={"backend": "dali"}), 0, 1, CPU)


def test_dali_pipeline_lives_across_epochs_and_restores_at_their_ends(tiny_shards_local: str) -> None:
    # One pipeline per rank for every epoch: each epoch still reads every sample once over the ranks, the epochs
    # differ in order, and a state saved at an epoch's end (or mid-epoch) continues with exactly the batches that
    # the uninterrupted loader yields next.
    spec = LoaderSpec(
        uri=tiny_shards_local, batch_size=5, backend="dali", num_threads=2, seed=3, image_size=32, resize_size=40
    )
    loaders = [make_loader(spec, r, 2, CPU) for r in range(2)]
    pipes: list[object] = []
    epochs: list[list[Batch]] = []
    states = []
    for epoch in range(3):
        labels = []
        for rank, loader in enumerate(loaders):
            loader.set_epoch(epoch)
            batches = list(loader)
            labels += [label for batch in batches for label in batch.labels[batch.valid].tolist()]
            if rank == 1:
                epochs.append(batches)
                states.append(loader.state_dict())
                pipes.append(loader._pipe)  # type: ignore[attr-defined]
        assert sorted(labels) == sorted(c for c in range(8) for _ in range(6)), epoch
    assert pipes[0] is pipes[1] is pipes[2]  # never rebuilt
    assert [b.labels.tolist() for b in epochs[0]] != [b.labels.tolist() for b in epochs[1]]
    restored = make_loader(spec, 1, 2, CPU)
    restored.load_state_dict(states[0])  # saved after epoch 0's last batch
    restored.set_epoch(1)
    assert _same(epochs[1], list(restored))
    restored.set_epoch(2)
    assert _same(epochs[2], list(restored))
    # mid-epoch: after two batches of epoch 2, from a loader restored at epoch 1's end
    again = make_loader(spec, 1, 2, CPU)
    again.load_state_dict(states[1])
    again.set_epoch(2)
    it = iter(again)
    head = [next(it), next(it)]
    mid = again.state_dict()
    last = make_loader(spec, 1, 2, CPU)
    last.load_state_dict(mid)
    last.set_epoch(2)
    assert _same(epochs[2], head + list(last))


def test_dali_labels_decoded_in_the_graph_match_the_cls_text(tiny_shards_local: str) -> None:
    # Independent: the `.cls` members read with tarfile, against the labels DALI decodes, in the unshuffled order.
    import tarfile

    from pipelines.loader import ShardSet

    shards = ShardSet.open(tiny_shards_local)
    expected: list[int] = []
    for tar_path in shards.tars:
        with tarfile.open(tar_path) as tar:
            expected += [int(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".cls")]  # type: ignore[union-attr]
    spec = LoaderSpec(
        uri=tiny_shards_local, split="val", batch_size=7, backend="dali", num_threads=1, image_size=32, resize_size=40
    )
    assert _epoch_labels(make_loader(spec, 0, 1, CPU), epoch=0) == expected


@pytest.mark.parametrize("layout", ["CHW", "HWC"])
def test_uint8_pixels_normalized_like_dalis_own_normalize(layout: str, tiny_shards_local: str) -> None:
    # On a GPU the standard train preset leaves DALI as uint8 and the loader normalizes (`normalize_pixels`); DALI's
    # crop_mirror_normalize in float on the same seed is the independent reference (run here on the CPU graph).
    import numpy as np

    from pipelines import dali
    from pipelines.loader import ShardSet
    from pipelines.normalization import channel_normalization, normalize_pixels

    shards = ShardSet.open(tiny_shards_local)
    reader = dali.ReaderArgs(paths=shards.tars, index_paths=shards.indexes, shard_id=0, num_shards=1, shuffle=True)

    def first_batch(uint8: bool) -> torch.Tensor:
        pipe = dali.build(
            "train",
            reader,
            batch_size=6,
            num_threads=1,
            device_id=None,
            seed=4,
            image_size=48,
            uint8=uint8,
            layout=layout,  # type: ignore[arg-type]
        )
        out = torch.from_numpy(np.array(pipe.run()[0].as_tensor()))
        return out.permute(0, 3, 1, 2) if layout == "HWC" else out

    raw, expected = first_batch(uint8=True), first_batch(uint8=False)
    assert raw.dtype == torch.uint8
    got = normalize_pixels(raw, channel_normalization(), torch.float32)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert got.is_contiguous(memory_format=torch.channels_last if layout == "HWC" else torch.contiguous_format)
