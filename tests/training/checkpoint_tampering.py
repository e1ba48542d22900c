"""Ways a checkpoint in storage goes bad, applied through a pyarrow filesystem (local or S3) as the trial reads it:
a truncated file, a flipped bit, and a train state replaced by a pickle that runs a command when unpickled (with its
manifest updated to match, as someone with write access to the bucket would)."""

from __future__ import annotations

import hashlib
import io
import json
import os

import pyarrow.fs
import torch

from orchestrator.training.checkpointing import MANIFEST_FILE, MODEL_FILE, STATE_FILE


def _read(fs: pyarrow.fs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as stream:
        return bytes(stream.read())


def _write(fs: pyarrow.fs.FileSystem, path: str, data: bytes) -> None:
    with fs.open_output_stream(path) as out:
        out.write(data)


def truncate(fs: pyarrow.fs.FileSystem, checkpoint: str, name: str = MODEL_FILE) -> None:
    """Cut `name` to half its size (a copy that stopped part-way)."""
    data = _read(fs, f"{checkpoint}/{name}")
    _write(fs, f"{checkpoint}/{name}", data[: len(data) // 2])


def flip_bit(fs: pyarrow.fs.FileSystem, checkpoint: str, name: str = STATE_FILE) -> None:
    """Flip one bit in the middle of `name`: same size, different SHA-256 (silent corruption on disk)."""
    data = bytearray(_read(fs, f"{checkpoint}/{name}"))
    data[len(data) // 2] ^= 0x01
    _write(fs, f"{checkpoint}/{name}", bytes(data))


class Payload:
    """Unpickling this runs `touch marker` (what `torch.load(weights_only=False)` would do with it)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def malicious_state(marker: str) -> bytes:
    """A `train_state.pt` that looks like a training state and carries the payload."""
    buffer = io.BytesIO()
    torch.save({"step": 1, "epoch": 0, "payload": Payload(marker)}, buffer)
    return buffer.getvalue()


def plant_payload(fs: pyarrow.fs.FileSystem, checkpoint: str, marker: str) -> None:
    """Replace the train state with `malicious_state(marker)` and make the manifest's size and hash agree."""
    data = malicious_state(marker)
    _write(fs, f"{checkpoint}/{STATE_FILE}", data)
    manifest = json.loads(_read(fs, f"{checkpoint}/{MANIFEST_FILE}"))
    manifest["files"][STATE_FILE] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    _write(fs, f"{checkpoint}/{MANIFEST_FILE}", json.dumps(manifest).encode())
