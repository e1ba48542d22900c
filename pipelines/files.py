"""Local file plumbing shared by every layer: all-or-nothing writes and SHA-256 checksums.

A reader (another process, a resumed run, a crash investigation) must never see half a file: every file this
project rewrites in place goes through `atomic_path`, which hands out a sibling `<name>.<random>.partial` and renames
it over the target only when the writer finished. A crash leaves at most a `.partial` file behind, never a torn
target.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

PARTIAL_SUFFIX = ".partial"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], mode: int = 0o666) -> Iterator[Path]:
    """A fresh sibling of `path` to write; renamed over `path` when the block ends, removed if it raises.

    `mode` (less the umask) is the file's permissions from its creation on: 0o600 keeps a secret this user's alone.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A unique name: two writers of one file (two CLI calls) never write into each other's temporary file. Created
    # with the umask's permissions (not mkstemp's 0600), so a shard set or state file reads as any other file would.
    tmp = target.with_name(f"{target.name}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike[str], data: bytes | str, mode: int = 0o666) -> None:
    """Write `data` (text as UTF-8) to `path` all or nothing, with permissions `mode` (see `atomic_path`)."""
    with atomic_path(path, mode) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (shards and checkpoints are far larger than memory wants)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
