"""What `data shard` reads: an ImageNet-style folder (`<wnid>/*.JPEG` class folders, `train/` + `val/` split
folders, or a flat folder with a labels file) as samples with their class indices.

Class indices follow the ILSVRC-2012 rule (the wnid's rank in sorted order) unless a labels file gives them.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from pipelines.names import unsafe_name

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class ShardingError(ValueError):
    """Bad sharding input; the message names the file or option and the fix."""


@dataclass(frozen=True)
class SourceSample:
    path: Path
    wnid: str
    label: int


@dataclass(frozen=True)
class Source:
    root: Path
    samples: tuple[SourceSample, ...]
    classes: dict[str, int]  # wnid -> class index


def _read_labels_file(labels: Path) -> dict[str, tuple[str, int | None]]:
    """`file -> (wnid, class_index or None)` from a TSV/CSV with a header naming `file` and `wnid`."""
    try:
        text = labels.read_text()
    except OSError as exc:
        raise ShardingError(f"labels file {labels}: cannot read it ({exc.strerror})") from exc
    dialect = "excel-tab" if "\t" in text.splitlines()[0] else "excel"
    rows = list(csv.DictReader(io.StringIO(text), dialect=dialect))
    fields = set(rows[0]) if rows else set()
    if not {"file", "wnid"} <= fields:
        raise ShardingError(
            f"labels file {labels}: header must name columns 'file' and 'wnid' (optional 'class_index'); "
            f"found {sorted(fields)}"
        )
    out: dict[str, tuple[str, int | None]] = {}
    for line, row in enumerate(rows, start=2):
        reason = unsafe_name(row["file"])
        if reason is not None:
            # A labels file names images of its own (flat) folder; anything else would read files from elsewhere.
            raise ShardingError(
                f"labels file {labels}, line {line}: file {row['file']!r} {reason}; name an image of the folder itself"
            )
        index = row.get("class_index")
        try:
            out[row["file"]] = (row["wnid"], int(index) if index not in (None, "") else None)
        except ValueError as exc:
            raise ShardingError(f"labels file {labels}, line {line}: class_index {index!r} is not an integer") from exc
    return out


def _class_map(wnids: set[str], given: dict[str, int]) -> dict[str, int]:
    """The labels file's indices where given, else the wnid's rank in sorted order (ILSVRC-2012 rule)."""
    if given:
        if set(given) != wnids:
            raise ShardingError("labels file gives class_index for only some wnids; give it for all or none")
        if sorted(given.values()) != list(range(len(given))):
            raise ShardingError("labels file class_index values must be 0..K-1, each used by one wnid")
        return dict(sorted(given.items(), key=lambda kv: kv[1]))
    return {wnid: i for i, wnid in enumerate(sorted(wnids))}


def discover_source(src: Path, labels: Path | None = None) -> Source:
    """Read an ImageNet-style tree (`<wnid>/*.JPEG`) or a flat folder with a labels file.

    A flat folder's labels file is `labels` or `src/labels.tsv`.
    """
    _require_folder(src)
    labels = labels if labels is not None else (src / "labels.tsv" if (src / "labels.tsv").is_file() else None)
    samples: list[tuple[Path, str]] = []
    given: dict[str, int] = {}
    if labels is not None:
        table = _read_labels_file(labels)
        for name, (wnid, index) in table.items():
            path = src / name
            if not path.is_file():
                raise ShardingError(f"labels file {labels} lists {name!r}, which is not in {src}; fix the file")
            samples.append((path, wnid))
            if index is not None:
                if given.get(wnid, index) != index:
                    raise ShardingError(f"labels file {labels}: wnid {wnid} has two class indices")
                given[wnid] = index
    else:
        class_dirs = sorted(d for d in src.iterdir() if d.is_dir() and not d.name.startswith("."))
        for d in class_dirs:
            samples.extend(
                (p, d.name) for p in sorted(d.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
    if not samples:
        raise ShardingError(
            f"SRC {src}: no images found; expected <wnid>/*.JPEG class folders or a flat folder with --labels"
        )
    _check_inside(src, [path for path, _ in samples])
    classes = _class_map({w for _, w in samples}, given)
    ordered = sorted(samples, key=lambda pw: (classes[pw[1]], pw[0].name))
    return Source(root=src, samples=tuple(SourceSample(p, w, classes[w]) for p, w in ordered), classes=classes)


def _check_inside(src: Path, paths: list[Path]) -> None:
    """Every image is a file of SRC itself: a symlink (to a file or a class folder) that leads out of SRC would pack
    a file from elsewhere on this machine (a key, a password file) into shards that others read."""
    root = src.resolve()
    for path in paths:
        target = path.resolve()
        if not target.is_relative_to(root):
            raise ShardingError(
                f"SRC {src}: {path.relative_to(src)} leads to {target}, outside SRC (a symlink); shard only files "
                "inside SRC: copy the image in, or give the folder it points to as SRC"
            )


def _require_folder(src: Path) -> None:
    if not src.is_dir():
        raise ShardingError(f"SRC {src} is not a folder; give an ImageNet-style folder of class folders or images")


def split_folders(src: Path) -> dict[str, Path]:
    """`{'train': src/train, 'val': src/val}` where SRC is a dataset root with split folders, else {}."""
    _require_folder(src)
    found = {name: src / name for name in ("train", "val") if (src / name).is_dir()}
    return found if "train" in found else {}


def split_jobs(src: Path, dest: str, labels: Path | None = None) -> dict[str, tuple[Path, str]]:
    """What `data shard SRC DEST` writes where: each split folder of a dataset root to `DEST/<split>`, or (a single
    folder, or a flat one with a labels file) SRC itself to DEST under the name ''."""
    splits = split_folders(src) if labels is None else {}
    return {name: (path, f"{dest.rstrip('/')}/{name}") for name, path in splits.items()} or {"": (src, dest)}
