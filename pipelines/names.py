"""Names that come from data and are joined to a folder: each must name something inside that folder.

A shard set's manifest names its tar and index files, an index names each sample's tar members, a labels file
names the images of its folder, and a tar names its members. Whoever wrote those files may not be whoever reads
them (a shard set shared on S3, a source tree on a shared disk), so a name is checked before it is joined:

* a file name is one path component: not empty, no `/` or `\\`, not `.` or `..`, no NUL or other control character
  (the layouts this project documents are flat: `shard-000000.tar` next to `manifest.json`, images next to their
  labels file, `<key>.jpg` members in a tar);
* a storage key (`Store` and `Location.join`) may have `/`-separated components, each a file name as above, and is
  never absolute.

`unsafe_name` and `unsafe_key` say why a name is refused (None when it is fine), so each caller raises its own
error naming the entry (`manifest.json: shards[3].name ...`, `labels.tsv, line 7: ...`). Tars are only ever read
through their index (never extracted); `check_tar_members` refuses a tar whose member names would escape a folder
anyone extracted it into.
"""

from __future__ import annotations

import tarfile
from typing import IO


def unsafe_name(name: object) -> str | None:
    """Why `name` cannot be joined to a folder as one of its files, or None when it can."""
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not a file name"
    if not name:
        return "is empty"
    if "\x00" in name:
        return "contains a NUL byte"
    if name.startswith(("/", "\\")):
        return "is an absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "climbs out of its folder ('..')"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if name == ".":
        return "names the folder itself ('.')"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return "contains a control character"
    return None


def unsafe_key(key: object) -> str | None:
    """Why `key` cannot be joined to a storage location (a relative, `/`-separated path), or None when it can."""
    if not isinstance(key, str):
        return f"is a {type(key).__name__}, not a path"
    if key.startswith(("/", "\\")):
        return "is an absolute path"
    for part in key.split("/"):
        reason = unsafe_name(part)
        if reason is not None:
            return reason if part else "has an empty path component"
    return None


class UnsafeName(ValueError):
    """A name from data that would escape its folder; the message names the file and the entry."""


def check_tar_members(tar: IO[bytes], source: str) -> int:
    """Every member of the tar read from `tar` is a plain file with a safe name; returns how many members it has.

    Raises `UnsafeName` naming `source` and the member otherwise (`..`, an absolute name, a link or a device).
    """
    count = 0
    with tarfile.open(fileobj=tar, mode="r:") as archive:
        for member in archive:
            reason = unsafe_name(member.name)
            if reason is None and not member.isfile():
                reason = "is not a regular file (a link, folder or device)"
            if reason is not None:
                raise UnsafeName(
                    f"{source}: tar member {member.name!r} {reason}; a shard holds only <key>.jpg and <key>.cls files, "
                    "so this one was not written by `resnet-orch data shard`: do not extract it, re-shard the source"
                )
            count += 1
    return count
