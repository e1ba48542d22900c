"""Write samples as WebDataset tar shards + DALI index files + manifest: an ImageNet-style folder of JPEGs
(`shard_dataset`), or any source with a `Codec` (CIFAR-10's python archive: `pipelines.cifar`).

Layout written at DEST (a folder or `s3://bucket/prefix`):

    shard-000000.tar   WebDataset: `<key>.<image_ext>` (RGB JPEG, or lossless PNG for CIFAR-10) + `<key>.cls`
                       (class index, ASCII decimal)
    shard-000000.idx   DALI `fn.readers.webdataset` index (format v1.2, as DALI's `wds2idx` writes it)
    shard-000000.sums.npz  the shard's pixel sums for the mean image (`pipelines.mean_image`), unless skipped
    shard-000000.json  completion record: the shard's plan hash, checksum, sample count
    mean_image.npy     the per-pixel mean of every sample (`pipelines.mean_image`), unless skipped
    manifest.json      written last: classes, image extension, per-shard samples/bytes/sha256, mean image, skipped
                       files, source

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
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pipelines import presets
from pipelines.codecs import CheckedImage, Codec, FileCodec
from pipelines.dali_index import IndexedSample, format_index
from pipelines.files import sha256_file
from pipelines.mean_image import PixelSums, write_mean_image
from pipelines.names import unsafe_name
from pipelines.ray_tasks import run_tasks
from pipelines.sources import ShardingError, discover_source
from pipelines.storage import Store, open_store

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "resnet-orch-webdataset"
MANIFEST_VERSION = 1
# A tar member costs a 512-byte header plus padding to 512: two members per sample.
_TAR_OVERHEAD_PER_SAMPLE = 3 * 512


@dataclass(frozen=True)
class ShardPlan:
    index: int
    samples: tuple[Any, ...]

    @property
    def name(self) -> str:
        return f"shard-{self.index:06d}"

    def plan_hash(self, codec: Codec, mean_size: int | None = None) -> str:
        """Identifies what goes into this shard: same samples and labels, same mean-image size -> same hash."""
        digest = hashlib.sha256()
        for s in self.samples:
            digest.update(f"{codec.identity(s)}\n".encode())
        if mean_size is not None:
            digest.update(f"mean image {mean_size}\n".encode())
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
    mean_image: bool = False  # written with the set


# ---------------------------------------------------------------------------------------------- plan


def plan_shards(
    samples: Sequence[Any], shard_bytes: int, shuffle_seed: int | None, size_hint: Callable[[Any], int]
) -> list[ShardPlan]:
    """Group samples into shards of about `shard_bytes` (from `size_hint`), shuffled once first."""
    if shard_bytes <= 0:
        raise ShardingError(f"--shard-size must be positive, got {shard_bytes} bytes")
    order = list(samples)
    if shuffle_seed is not None:
        perm = np.random.default_rng(shuffle_seed).permutation(len(order))
        order = [order[i] for i in perm]
    plans: list[ShardPlan] = []
    current: list[Any] = []
    size = 0
    for sample in order:
        cost = size_hint(sample) + _TAR_OVERHEAD_PER_SAMPLE
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


def _sample_key(image: CheckedImage, used: set[str]) -> str:
    """Tar member stem: the key without dots (DALI splits the extension at the first dot)."""
    base = image.key.replace(".", "_") or "sample"
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


def write_shard_tar(images: Iterator[CheckedImage], tar_path: Path, image_ext: str = "jpg") -> tuple[str, int]:
    """Write the decodable images to `tar_path`; returns (DALI index text, samples written)."""
    used: set[str] = set()
    indexed: list[IndexedSample] = []
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for image in images:
            if image.data is None:
                continue
            key = _sample_key(image, used)
            members = {}
            for ext, data in ((image_ext, image.data), ("cls", str(image.label).encode())):
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
    if record.get("sums") and not store.exists(record["sums"]):
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
    mean_size: int | None = presets.MEAN_IMAGE_SIZE,
) -> ShardReport:
    """Shard one split (`src` with class folders, or flat + labels file) into `dest`.

    `progress(done, total)` is called after every image (checked, or in a kept shard). `mean_size` None skips the
    mean image. Returns the report; the manifest at `dest` is written last and only when every shard is whole.
    """
    source = discover_source(src, labels)
    return ShardJob(dest, source.samples, FileCodec(), source.classes, str(src.resolve()), mean_size).run(
        shard_bytes=shard_bytes, shuffle_seed=shuffle_seed, workers=workers, progress=progress
    )


@dataclass(frozen=True)
class ShardJob:
    """One shard set to write: the samples of a source, how they are encoded, where they go."""

    dest: str
    samples: tuple[Any, ...]
    codec: Codec
    classes: dict[str, int]  # class name (wnid) -> class index
    source: str  # recorded in the manifest
    mean_size: int | None = presets.MEAN_IMAGE_SIZE  # None: no mean image

    def run(
        self,
        *,
        shard_bytes: int = 256 * 10**6,
        shuffle_seed: int | None = 0,
        workers: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        address: str | None = None,
    ) -> ShardReport:
        """Write every shard not already whole, the mean image, then the manifest; returns the report.

        `address`: write the shards as Ray tasks on that cluster (`pipelines.ray_tasks`), byte for byte the files
        this process would write: a shard's bytes depend only on its plan."""
        store = open_store(self.dest)
        store.check_writable()
        plans = plan_shards(self.samples, shard_bytes, shuffle_seed, self.codec.size_hint)
        report = ShardReport(dest=self.dest, classes=len(self.classes), mean_image=self.mean_size is not None)
        total = len(self.samples)
        done = 0
        sums = PixelSums(self.mean_size) if self.mean_size is not None else None

        def advance(n: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(done, total)

        records: dict[int, dict[str, Any]] = {}
        todo: list[tuple[ShardPlan, str]] = []
        for plan in plans:
            plan_hash = plan.plan_hash(self.codec, self.mean_size)
            record = _completed_record(store, plan, plan_hash)
            if record is None:
                todo.append((plan, plan_hash))
            else:
                records[plan.index] = record
                report.shards_reused += 1
                advance(len(plan.samples))
                logger.info("kept %s: complete, same plan and sha256", store.location.join(record["name"]))
        if address is None:
            threads = workers or os.cpu_count() or 1
            with ThreadPoolExecutor(max_workers=threads) as pool:
                for plan, plan_hash in todo:
                    records[plan.index] = self.write_shard(plan, plan_hash, pool.map, advance)
                    report.shards_written += 1
        else:
            # One Ray task per shard; each writes its files and completion record, so a rerun resumes as above.
            light = replace(self, samples=())  # a task needs its own plan only, not every sample of the set
            tasks = [(light, plan, plan_hash) for plan, plan_hash in todo]
            for i, record in run_tasks(_write_shard_task, tasks, address=address):
                records[todo[i][0].index] = record
                report.shards_written += 1
                advance(len(todo[i][0].samples))
        shard_entries: list[dict[str, Any]] = []
        for plan in plans:
            record = records[plan.index]
            if sums is not None:
                sums.merge(PixelSums.from_bytes(store.read_bytes(record["sums"])))
            report.samples += record["samples"]
            report.reencoded += record["reencoded"]
            report.skipped += record["skipped"]
            shard_entries.append({k: record[k] for k in ("name", "index", "samples", "bytes", "sha256")})
        if report.samples == 0:
            raise ShardingError(f"SRC {self.source}: none of the {total} images could be decoded; nothing was written")
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "source": self.source,
            "num_samples": report.samples,
            "classes": self.classes,
            "image_ext": self.codec.image_ext,
            "shards": shard_entries,
            "mean_image": write_mean_image(store, sums.mean_image()) if sums is not None else None,
            "reencoded": report.reencoded,
            "skipped": report.skipped,
            "shuffle_seed": shuffle_seed,
            "shard_bytes": shard_bytes,
        }
        store.put_bytes(MANIFEST_NAME, json.dumps(manifest, indent=1).encode())
        return report

    def write_shard(
        self,
        plan: ShardPlan,
        plan_hash: str,
        encode_map: Callable[..., Iterator[CheckedImage]],
        advance: Callable[[int], None],
    ) -> dict[str, Any]:
        """Encode the plan's samples (through `encode_map`, a `map`), write the shard's files to `dest`, its
        completion record last; returns the record."""
        store = open_store(self.dest)
        with tempfile.TemporaryDirectory() as tmp_dir:
            record = self._write_shard(store, plan, plan_hash, encode_map, Path(tmp_dir), advance)
        logger.info("wrote %s (%d samples)", store.location.join(record["name"]), record["samples"])
        return record

    def _write_shard(
        self,
        store: Store,
        plan: ShardPlan,
        plan_hash: str,
        encode_map: Callable[..., Iterator[CheckedImage]],
        tmp: Path,
        advance: Callable[[int], None],
    ) -> dict[str, Any]:
        checked = []
        for image in encode_map(lambda sample: self.codec.encode(sample, self.mean_size), plan.samples):
            checked.append(image)
            advance(1)
        tar_path = tmp / f"{plan.name}.tar"
        index_text, count = write_shard_tar(iter(checked), tar_path, self.codec.image_ext)
        record: dict[str, Any] = {
            "name": f"{plan.name}.tar",
            "index": f"{plan.name}.idx",
            "sums": None,
            "plan": plan_hash,
            "samples": count,
            "bytes": tar_path.stat().st_size,
            "sha256": sha256_file(tar_path),
            "reencoded": [c.source for c in checked if c.reencoded],
            "skipped": [{"file": c.source, "error": c.error} for c in checked if c.data is None],
        }
        for bad in record["skipped"]:
            logger.warning("skipped undecodable image %s (%s)", bad["file"], bad["error"])
        # Order matters for resume: tar, index and pixel sums, then the record that declares them complete.
        store.put_file(record["name"], tar_path, sha256=record["sha256"])
        store.put_bytes(record["index"], index_text.encode())
        if self.mean_size is not None:
            sums = PixelSums(self.mean_size)
            for image in checked:
                if image.data is not None and image.pixels is not None:
                    sums.add(image.pixels)
            record["sums"] = f"{plan.name}.sums.npz"
            store.put_bytes(record["sums"], sums.to_bytes())
        store.put_bytes(f"{plan.name}.json", json.dumps(record, indent=1).encode())
        tar_path.unlink(missing_ok=True)
        return record


def _write_shard_task(task: tuple[ShardJob, ShardPlan, str]) -> dict[str, Any]:
    """One shard, in a Ray task: encoded one image after another (the task holds one CPU)."""
    job, plan, plan_hash = task
    return job.write_shard(plan, plan_hash, map, lambda n: None)


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
    _check_shard_names(manifest, store.location.join(MANIFEST_NAME))
    return manifest


def _check_shard_names(manifest: dict[str, Any], where: str) -> None:
    """Every shard entry names a `.tar` and an `.idx` file of the set's own folder (the flat layout above): a manifest
    written elsewhere must not point a reader at `../../etc/passwd` or `/etc/passwd`."""
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not all(isinstance(entry, dict) for entry in shards):
        raise ShardingError(f"{where}: `shards` is not a list of shard entries; re-shard with `resnet-orch data shard`")
    for i, entry in enumerate(shards):
        for field_name, suffix in (("name", ".tar"), ("index", ".idx")):
            name = entry.get(field_name)
            reason = unsafe_name(name)
            if reason is None and not str(name).endswith(suffix):
                reason = f"does not end in {suffix}"
            if reason is not None:
                raise ShardingError(
                    f"{where}: shards[{i}].{field_name} {name!r} {reason}; a manifest names files of its own folder "
                    "(shard-NNNNNN.tar, .idx), so this one is damaged or hostile: refusing it, re-shard the source"
                )
