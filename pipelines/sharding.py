"""Write an ImageNet-style folder of JPEGs as WebDataset tar shards + DALI index files + manifest.

Layout written at DEST (a folder or `s3://bucket/prefix`):

    shard-000000.tar   WebDataset: `<key>.jpg` (RGB JPEG) + `<key>.cls` (class index, ASCII decimal)
    shard-000000.idx   DALI `fn.readers.webdataset` index (format v1.2, as DALI's `wds2idx` writes it)
    shard-000000.json  completion record: the shard's plan hash, checksum, sample count
    manifest.json      written last: classes, per-shard samples/bytes/sha256, skipped files, source

A shard set is complete only when `manifest.json` exists; readers refuse a folder without it. A shard is
complete when its record exists, names the same plan, and its tar has the recorded sha256: re-running
skips those, so an interrupted run resumes where it stopped. Samples are shuffled once here (fixed
seed) because DALI's reader shuffles only within a buffer: classes must be mixed inside every shard.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.dali_index import IndexedSample, format_index
from pipelines.files import sha256_file
from pipelines.sources import ShardingError, SourceSample, discover_source
from pipelines.storage import Store, open_store

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "resnet-orch-webdataset"
MANIFEST_VERSION = 1
# A tar member costs a 512-byte header plus padding to 512: two members per sample.
_TAR_OVERHEAD_PER_SAMPLE = 3 * 512
# Quality for images we must re-encode (grayscale/CMYK/PNG): high enough not to add visible artefacts.
_REENCODE_QUALITY = 95


@dataclass(frozen=True)
class ShardPlan:
    index: int
    samples: tuple[SourceSample, ...]

    @property
    def name(self) -> str:
        return f"shard-{self.index:06d}"

    def plan_hash(self) -> str:
        """Identifies what goes into this shard: same files, sizes and labels -> same hash."""
        digest = hashlib.sha256()
        for s in self.samples:
            digest.update(f"{s.path.name}\t{s.path.stat().st_size}\t{s.label}\n".encode())
        return digest.hexdigest()


@dataclass
class ShardReport:
    """What `shard_dataset` did; `skipped` names every undecodable file."""

    dest: str
    samples: int = 0
    shards_written: int = 0
    shards_reused: int = 0
    reencoded: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    classes: int = 0


# ---------------------------------------------------------------------------------------------- plan


def plan_shards(samples: Sequence[SourceSample], shard_bytes: int, shuffle_seed: int | None) -> list[ShardPlan]:
    """Group samples into shards of about `shard_bytes` (from source file sizes), shuffled once first."""
    if shard_bytes <= 0:
        raise ShardingError(f"--shard-size must be positive, got {shard_bytes} bytes")
    order = list(samples)
    if shuffle_seed is not None:
        perm = np.random.default_rng(shuffle_seed).permutation(len(order))
        order = [order[i] for i in perm]
    plans: list[ShardPlan] = []
    current: list[SourceSample] = []
    size = 0
    for sample in order:
        cost = sample.path.stat().st_size + _TAR_OVERHEAD_PER_SAMPLE
        if current and size + cost > shard_bytes:
            plans.append(ShardPlan(len(plans), tuple(current)))
            current, size = [], 0
        current.append(sample)
        size += cost
    if current:
        plans.append(ShardPlan(len(plans), tuple(current)))
    return plans


def parse_size(text: str) -> int:
    """'256MB', '1GiB', '500k', '1048576' -> bytes."""
    units = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "kb": 10**3, "mb": 10**6, "gb": 10**9}
    units |= {"ki": 2**10, "mi": 2**20, "gi": 2**30, "kib": 2**10, "mib": 2**20, "gib": 2**30, "b": 1}
    stripped = text.strip().lower()
    number = stripped.rstrip("abgikm ")
    unit = stripped[len(number) :].strip()
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in units or value <= 0:
        raise ShardingError(f"--shard-size {text!r}: write a positive size such as 256MB, 1GiB or 500k")
    return int(value * units[unit])


# ---------------------------------------------------------------------------------------------- images


@dataclass(frozen=True)
class CheckedImage:
    sample: SourceSample
    jpeg: bytes | None  # None: undecodable, skipped
    reencoded: bool = False
    error: str = ""


def check_image(sample: SourceSample) -> CheckedImage:
    """Decode fully; keep RGB JPEGs byte-for-byte, re-encode anything else (grayscale, CMYK, PNG...) to
    RGB JPEG; report an undecodable file instead of raising."""
    from PIL import Image

    try:
        data = sample.path.read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # full decode: catches truncated files that Image.open alone accepts
            if img.format == "JPEG" and img.mode == "RGB":
                return CheckedImage(sample, data)
            rgb = img.convert("RGB")
        out = io.BytesIO()
        rgb.save(out, format="JPEG", quality=_REENCODE_QUALITY)
        return CheckedImage(sample, out.getvalue(), reencoded=True)
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError...) for bad files
        return CheckedImage(sample, None, error=f"{type(exc).__name__}: {exc}")


def _sample_key(sample: SourceSample, used: set[str]) -> str:
    """Tar member stem: the file stem without dots (DALI splits the extension at the first dot)."""
    base = sample.path.stem.replace(".", "_") or "sample"
    key, n = base, 1
    while key in used:
        key, n = f"{base}_{n}", n + 1
    used.add(key)
    return key


def _tar_member(name: str, data: bytes) -> tarfile.TarInfo:
    # Fixed metadata: identical inputs give a byte-identical tar, so checksums identify content.
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uname = info.gname = ""
    return info


def write_shard_tar(images: Iterator[CheckedImage], tar_path: Path) -> tuple[str, int]:
    """Write the decodable images to `tar_path`; returns (DALI index text, samples written)."""
    used: set[str] = set()
    indexed: list[IndexedSample] = []
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for image in images:
            if image.jpeg is None:
                continue
            key = _sample_key(image.sample, used)
            members = {}
            for ext, data in (("jpg", image.jpeg), ("cls", str(image.sample.label).encode())):
                info = _tar_member(f"{key}.{ext}", data)
                tar.addfile(info, io.BytesIO(data))
                # The member's bytes end the archive so far, padded to a 512-byte block: their start is
                # what DALI's index records.
                members[ext] = (tar.offset - -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE, info.size)
            indexed.append(IndexedSample(key, members))
    return format_index(indexed), len(indexed)


# ---------------------------------------------------------------------------------------------- writer


def _completed_record(store: Store, plan: ShardPlan, plan_hash: str) -> dict[str, Any] | None:
    """The shard's completion record if the shard on `store` is whole and from the same plan."""
    if not store.exists(f"{plan.name}.json"):
        return None
    try:
        record: dict[str, Any] = json.loads(store.read_bytes(f"{plan.name}.json"))
    except ValueError:
        return None
    if record.get("plan") != plan_hash or not store.exists(record["index"]):
        return None
    if store.size(record["name"]) != record.get("bytes"):
        return None
    if store.checksum(record["name"]) != record.get("sha256"):
        return None
    return record


def shard_dataset(
    src: Path,
    dest: str,
    *,
    shard_bytes: int = 256 * 10**6,
    labels: Path | None = None,
    shuffle_seed: int | None = 0,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ShardReport:
    """Shard one split (`src` with class folders, or flat + labels file) into `dest`.

    `progress(done, total)` is called after every image (checked, or in a kept shard). Returns the
    report; the manifest at `dest` is written last and only when every shard is whole.
    """
    source = discover_source(src, labels)
    store = open_store(dest)
    store.check_writable()
    plans = plan_shards(source.samples, shard_bytes, shuffle_seed)
    report = ShardReport(dest=dest, classes=len(source.classes))
    total = len(source.samples)
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    shard_entries: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool, tempfile.TemporaryDirectory() as tmp:
        for plan in plans:
            plan_hash = plan.plan_hash()
            record = _completed_record(store, plan, plan_hash)
            if record is None:
                record = _write_shard(store, plan, plan_hash, pool, Path(tmp), advance)
                report.shards_written += 1
                logger.info("wrote %s (%d samples)", store.location.join(record["name"]), record["samples"])
            else:
                report.shards_reused += 1
                advance(len(plan.samples))
                logger.info("kept %s: complete, same plan and sha256", store.location.join(record["name"]))
            report.samples += record["samples"]
            report.reencoded += record["reencoded"]
            report.skipped += record["skipped"]
            shard_entries.append({k: record[k] for k in ("name", "index", "samples", "bytes", "sha256")})
    if report.samples == 0:
        raise ShardingError(f"SRC {src}: none of the {total} images could be decoded; nothing was written")
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": str(src.resolve()),
        "num_samples": report.samples,
        "classes": source.classes,
        "shards": shard_entries,
        "reencoded": report.reencoded,
        "skipped": report.skipped,
        "shuffle_seed": shuffle_seed,
        "shard_bytes": shard_bytes,
    }
    store.put_bytes(MANIFEST_NAME, json.dumps(manifest, indent=1).encode())
    return report


def _write_shard(
    store: Store, plan: ShardPlan, plan_hash: str, pool: ThreadPoolExecutor, tmp: Path, advance: Callable[[int], None]
) -> dict[str, Any]:
    checked = []
    for image in pool.map(check_image, plan.samples):
        checked.append(image)
        advance(1)
    tar_path = tmp / f"{plan.name}.tar"
    index_text, count = write_shard_tar(iter(checked), tar_path)
    record: dict[str, Any] = {
        "name": f"{plan.name}.tar",
        "index": f"{plan.name}.idx",
        "plan": plan_hash,
        "samples": count,
        "bytes": tar_path.stat().st_size,
        "sha256": sha256_file(tar_path),
        "reencoded": [str(c.sample.path) for c in checked if c.reencoded],
        "skipped": [{"file": str(c.sample.path), "error": c.error} for c in checked if c.jpeg is None],
    }
    for bad in record["skipped"]:
        logger.warning("skipped undecodable image %s (%s)", bad["file"], bad["error"])
    # Order matters for resume: tar, then index, then the record that declares both complete.
    store.put_file(record["name"], tar_path, sha256=record["sha256"])
    store.put_bytes(record["index"], index_text.encode())
    store.put_bytes(f"{plan.name}.json", json.dumps(record, indent=1).encode())
    tar_path.unlink(missing_ok=True)
    return record


def read_manifest(uri: str, store: Store | None = None) -> dict[str, Any]:
    """The manifest of the shard set at `uri` (read through `store` if given); StorageError/ShardingError when absent
    or not ours."""
    store = store if store is not None else open_store(uri)
    if not store.exists(MANIFEST_NAME):
        raise ShardingError(
            f"{store.location.join(MANIFEST_NAME)} not found: {uri} is not a complete shard set; "
            "run `resnet-orch data shard SRC DEST` to completion first"
        )
    manifest: dict[str, Any] = json.loads(store.read_bytes(MANIFEST_NAME))
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ShardingError(f"{store.location.join(MANIFEST_NAME)} is not a resnet-orch shard manifest")
    return manifest
