"""Check a shard set before anyone spends GPU hours on it: its structure whole, its records decoded.

Every shard, fast or `full`: the manifest entry names files of the set's own folder (`read_manifest`), the index
parses with safe member names and holds the manifest's sample count, the tar has the manifest's size, and every
index entry points at a tar header naming that member with that size. A local tar is also walked header by header
(`check_tar_members`: no link, no escaping name). Then records are decoded alone (torchvision `decode_image`, the
label parsed and range-checked), so every bad one is named: by default a seeded sample of `sample` records over the
whole set (ranged reads: a few bytes of each shard, not the shard), with `full` every record (each shard read once,
its headers walked). `address` spreads the shards over a Ray cluster, one task per shard (`pipelines.ray_tasks`).
"""

from __future__ import annotations

import io
import logging
import tarfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pipelines.dali_index import IndexedSample, parse_index
from pipelines.loader import ShardSet
from pipelines.names import check_tar_members
from pipelines.ray_tasks import run_tasks
from pipelines.sharding import read_manifest
from pipelines.storage import StorageError, Store, open_store

logger = logging.getLogger(__name__)

DEFAULT_SAMPLE = 1000


@dataclass
class ShardCheck:
    """What checking one shard found."""

    name: str
    records: int = 0  # index entries
    decoded: int = 0
    labels: Counter[int] = field(default_factory=Counter)
    bad_samples: list[str] = field(default_factory=list)  # "shard-000001.tar:key"
    structure_errors: list[str] = field(default_factory=list)


@dataclass
class CheckReport:
    uri: str
    mode: str  # "sample" or "full"
    samples: int = 0  # records decoded (all of them in full mode)
    expected_samples: int = 0  # what the manifest promises
    records: int = 0  # index entries over all shards
    classes: int = 0  # distinct labels seen
    expected_classes: int = 0
    decode_errors: int = 0
    bad_samples: list[str] = field(default_factory=list)
    structure_errors: list[str] = field(default_factory=list)
    label_errors: int = 0  # labels outside 0..K-1
    per_class: dict[int, int] = field(default_factory=dict)
    images_per_s: float = 0.0  # decoded records per second, wall clock
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        whole = self.mode != "full" or (self.samples == self.expected_samples and self.classes == self.expected_classes)
        return (
            whole
            and self.decode_errors == 0
            and self.label_errors == 0
            and not self.structure_errors
            and self.records == self.expected_samples
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"ok": self.ok}


@dataclass(frozen=True)
class ShardTask:
    """One shard to check: where, what the manifest says of it, which records to decode (None: all)."""

    uri: str
    tar: str
    index: str
    samples: int
    size: int | None
    image_ext: str
    decode: tuple[int, ...] | None


def check_shards(
    uri: str,
    *,
    full: bool = False,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    address: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CheckReport:
    """Check the structure of every shard of `uri` and decode `sample` records drawn with `seed` (every record
    with `full`); `address`: one Ray task per shard on that cluster."""
    shards = ShardSet.open(uri)
    manifest = read_manifest(uri)
    sizes = [entry.get("bytes") for entry in manifest["shards"]]
    picks = _sampled_records(shards.samples, sample, seed) if not full else [None] * len(shards.samples)
    tasks = [
        ShardTask(uri, tar, index, n, size, shards.image_ext, pick)
        for tar, index, n, size, pick in zip(
            shards.tar_names, shards.index_names, shards.samples, sizes, picks, strict=True
        )
    ]
    report = CheckReport(
        uri=uri,
        mode="full" if full else "sample",
        expected_samples=shards.num_samples,
        expected_classes=len(shards.classes),
    )
    counts: Counter[int] = Counter()
    start = time.perf_counter()
    for done, (_, result) in enumerate(run_tasks(check_shard, tasks, address=address), start=1):
        report.records += result.records
        report.samples += result.decoded
        counts.update(result.labels)
        report.bad_samples += result.bad_samples
        report.structure_errors += result.structure_errors
        if progress is not None:
            progress(done, len(tasks))
    report.seconds = time.perf_counter() - start
    report.bad_samples.sort()
    report.decode_errors = len(report.bad_samples)
    report.per_class = dict(sorted(counts.items()))
    report.classes = len(counts)
    report.label_errors = sum(n for label, n in counts.items() if not 0 <= label < report.expected_classes)
    report.images_per_s = report.samples / report.seconds if report.seconds > 0 else 0.0
    return report


def _sampled_records(per_shard: tuple[int, ...], sample: int, seed: int) -> list[tuple[int, ...]]:
    """`sample` record positions over the whole set, drawn without replacement with `seed`, grouped by shard."""
    total = sum(per_shard)
    chosen = np.sort(np.random.default_rng(seed).choice(total, size=min(sample, total), replace=False))
    bounds = np.cumsum((0, *per_shard))
    return [
        tuple(int(i - bounds[s]) for i in chosen[(chosen >= bounds[s]) & (chosen < bounds[s + 1])])
        for s in range(len(per_shard))
    ]


def check_shard(task: ShardTask) -> ShardCheck:
    """Structure of one shard, then decode its chosen records (a Ray task under `address`)."""
    import torch
    from torchvision.io import ImageReadMode, decode_image  # a Ray task imports it on its own node

    store = open_store(task.uri)
    result = ShardCheck(task.tar)
    source = store.location.join(task.tar)
    index = parse_index(store.read_bytes(task.index).decode(), store.location.join(task.index))
    result.records = len(index)
    if len(index) != task.samples:
        result.structure_errors.append(f"{task.index}: {len(index)} records, the manifest says {task.samples}")
    size = store.size(task.tar)
    if size is None:
        raise StorageError(f"{source} does not exist; the shard set is incomplete, re-shard it")
    if task.size is not None and size != task.size:
        result.structure_errors.append(f"{task.tar}: {size} bytes, the manifest says {task.size}")
    whole = store.read_bytes(task.tar) if task.decode is None else None
    if whole is not None:
        check_tar_members(io.BytesIO(whole), source)
    elif not store.location.is_s3:
        with open(source, "rb") as tar:
            check_tar_members(tar, source)
    positions = range(len(index)) if task.decode is None else task.decode
    for position in positions:
        if position >= len(index):
            continue
        sample = index[position]
        try:
            members = {ext: _member(store, task.tar, whole, sample, ext) for ext in (task.image_ext, "cls")}
        except ValueError as exc:
            result.structure_errors.append(f"{task.tar}:{sample.key}: {exc}")
            continue
        try:
            image = torch.frombuffer(bytearray(members[task.image_ext]), dtype=torch.uint8)
            decode_image(image, mode=ImageReadMode.RGB)
            result.labels[int(members["cls"])] += 1
            result.decoded += 1
        except (RuntimeError, ValueError) as exc:
            logger.warning("undecodable sample %s:%s (%s)", task.tar, sample.key, exc)
            result.bad_samples.append(f"{task.tar}:{sample.key}")
    return result


def _member(store: Store, tar: str, whole: bytes | None, sample: IndexedSample, ext: str) -> bytes:
    """The bytes of member `ext` of `sample`, after checking the tar header before them names it with that size."""
    offset, size = sample.members[ext]
    start = offset - tarfile.BLOCKSIZE
    if start < 0:
        raise ValueError(f"{ext} offset {offset} leaves no room for its tar header")
    chunk = (
        whole[start : offset + size] if whole is not None else store.read_range(tar, start, tarfile.BLOCKSIZE + size)
    )
    try:
        header = tarfile.TarInfo.frombuf(chunk[: tarfile.BLOCKSIZE], "utf-8", "surrogateescape")
    except tarfile.TarError as exc:
        raise ValueError(f"no tar header before its {ext} at offset {offset} ({exc})") from None
    if header.name != f"{sample.key}.{ext}" or header.size != size:
        raise ValueError(
            f"the index says {sample.key}.{ext} ({size} bytes) at {offset}, the tar header there says "
            f"{header.name} ({header.size} bytes)"
        )
    return chunk[tarfile.BLOCKSIZE :]
