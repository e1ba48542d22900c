"""The DALI WebDataset index format (v1.2, as DALI's `wds2idx` writes it): written by the sharder, read by the
torchvision fallback loader and by `data check`, fed as is to DALI's `fn.readers.webdataset`.

    v1.2 <samples>
    jpg <offset> <size> <key>.jpg cls <offset> <size> <key>.cls     one line per sample, one group per member

`offset` is where the member's bytes start in the tar (after its 512-byte header), `size` their length.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pipelines.names import UnsafeName, unsafe_name

VERSION = "v1.2"


@dataclass(frozen=True)
class IndexedSample:
    """One sample of a shard: its key and, per member extension (`jpg`, `cls`), the (offset, size) of its bytes."""

    key: str
    members: dict[str, tuple[int, int]]

    def slice(self, tar: bytes, ext: str) -> bytes:
        """The bytes of member `ext` of this sample in the shard's `tar` bytes."""
        offset, size = self.members[ext]
        return tar[offset : offset + size]


def format_index(samples: Iterable[IndexedSample]) -> str:
    """The index file's text for `samples`, in tar order."""
    lines = [
        " ".join(f"{ext} {offset} {size} {sample.key}.{ext}" for ext, (offset, size) in sample.members.items())
        for sample in samples
    ]
    return f"{VERSION} {len(lines)}\n" + "".join(line + "\n" for line in lines)


def parse_index(text: str, source: str = "index") -> list[IndexedSample]:
    """The samples of an index file's text, in tar order; `source` names the file in errors.

    Raises `UnsafeName` for a member name that is not a plain file name (`..`, absolute, a separator): keys are
    what `data check` reports and what anyone extracting the tar would create.
    """
    samples = []
    for line_number, line in enumerate(text.splitlines()[1:], start=2):
        parts = line.split()
        for name in parts[3::4]:
            reason = unsafe_name(name)
            if reason is not None:
                raise UnsafeName(f"{source}, line {line_number}: member {name!r} {reason}; re-shard the source")
        members = {parts[i]: (int(parts[i + 1]), int(parts[i + 2])) for i in range(0, len(parts), 4)}
        samples.append(IndexedSample(parts[3].rsplit(".", 1)[0], members))
    return samples
