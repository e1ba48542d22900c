"""Read every sample of a shard set through the training pipeline, before anyone spends GPU hours on it.

First every name the set holds is checked (manifest entries when it is opened, then each index and tar member:
`pipelines.names`), so a set that would escape a folder is refused with the entry named. The fast pass runs the real
train loader (DALI where it imports) over one epoch on one rank and counts labels. A decoder error aborts a DALI
pipeline, so when the fast pass fails, a second pass decodes every sample alone (torchvision `decode_jpeg`) to name
each undecodable one.
"""

from __future__ import annotations

import io
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torchvision.io import ImageReadMode, decode_image

from pipelines.dali_index import parse_index
from pipelines.loader import Backend, LoaderSpec, ShardSet
from pipelines.loader_factory import make_loader
from pipelines.names import check_tar_members
from pipelines.storage import StorageError, open_store

logger = logging.getLogger(__name__)


@dataclass
class CheckReport:
    uri: str
    backend: str
    samples: int = 0  # decoded through the pipeline
    expected_samples: int = 0  # what the manifest promises
    classes: int = 0  # distinct labels seen
    expected_classes: int = 0
    decode_errors: int = 0
    bad_samples: list[str] = field(default_factory=list)  # "shard-000001.tar:key"
    label_errors: int = 0  # labels outside 0..K-1
    per_class: dict[int, int] = field(default_factory=dict)
    images_per_s: float = 0.0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            self.decode_errors == 0
            and self.label_errors == 0
            and self.samples == self.expected_samples
            and self.classes == self.expected_classes
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"ok": self.ok}


def check_shards(
    uri: str,
    *,
    batch_size: int = 64,
    num_threads: int = 4,
    backend: Backend = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> CheckReport:
    """Decode and augment every sample of `uri` once (train preset, one rank) and count what came out."""
    shards = ShardSet.open(uri)
    _check_names(shards)
    spec = LoaderSpec(uri=uri, split="train", batch_size=batch_size, num_threads=num_threads, backend=backend, seed=0)
    loader = make_loader(spec, 0, 1, torch.device("cpu"))
    report = CheckReport(
        uri=uri,
        backend=getattr(loader, "backend", backend),
        expected_samples=shards.num_samples,
        expected_classes=len(shards.classes),
    )
    counts: Counter[int] = Counter()
    start = time.perf_counter()
    try:
        for k, batch in enumerate(loader):
            counts.update(batch.labels[batch.valid].tolist())
            if progress is not None:
                progress(min((k + 1) * batch_size, shards.num_samples), shards.num_samples)
    except Exception as exc:  # DALI raises RuntimeError for a bad image; torch a RuntimeError too
        logger.warning("pipeline failed (%s); decoding every sample alone to find the bad ones", exc)
        counts, report.bad_samples = _scan_samples(shards)
        report.decode_errors = len(report.bad_samples)
    report.seconds = time.perf_counter() - start
    report.samples = sum(counts.values())
    report.per_class = dict(sorted(counts.items()))
    report.classes = len(counts)
    report.label_errors = sum(n for label, n in counts.items() if not 0 <= label < report.expected_classes)
    report.images_per_s = report.samples / report.seconds if report.seconds > 0 else 0.0
    return report


def _check_names(shards: ShardSet) -> None:
    """Every index entry and tar member of the set is a plain file name; raises `UnsafeName` naming it.

    A local tar is read header by header (seeking past the images); an S3 one is fetched once more.
    """
    store = open_store(shards.uri)
    for tar_name, index_name in zip(shards.tar_names, shards.index_names, strict=True):
        parse_index(store.read_bytes(index_name).decode(), store.location.join(index_name))
        source = store.location.join(tar_name)
        if store.location.is_s3:
            check_tar_members(io.BytesIO(store.read_bytes(tar_name)), source)
        else:
            try:
                with open(source, "rb") as tar:
                    check_tar_members(tar, source)
            except FileNotFoundError:
                raise StorageError(f"{source} does not exist; the shard set is incomplete, re-shard it") from None


def _scan_samples(shards: ShardSet) -> tuple[Counter[int], list[str]]:
    """Decode each sample on its own: labels of the good ones, names of the bad ones."""
    store = open_store(shards.uri)
    counts: Counter[int] = Counter()
    bad: list[str] = []
    for tar_name, index_name in zip(shards.tar_names, shards.index_names, strict=True):
        data = store.read_bytes(tar_name)
        for sample in parse_index(store.read_bytes(index_name).decode(), store.location.join(index_name)):
            try:
                encoded = torch.frombuffer(bytearray(sample.slice(data, shards.image_ext)), dtype=torch.uint8)
                decode_image(encoded, mode=ImageReadMode.RGB)
                counts[int(sample.slice(data, "cls"))] += 1
            except (RuntimeError, ValueError) as exc:
                logger.warning("undecodable sample %s:%s (%s)", tar_name, sample.key, exc)
                bad.append(f"{tar_name}:{sample.key}")
    return counts, bad
