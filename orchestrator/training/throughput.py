"""Training throughput of one device, measured on this cluster (`resnet-orch bench`) and kept per model/hardware.

`measure` times full training steps (forward, backward, SGD update; bf16 autocast and channels_last on a GPU, as the
train loop runs there) on synthetic batches, after warm-up steps that absorb cuDNN autotuning and allocation. The
figure is stored under the home (`bench/throughput.json`: hardware -> "model@image_size" -> figure), where
`validate` finds it to estimate a trial's GPU-hours (`sweep/estimate.py`).
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipelines.files import write_atomic

FIGURES_FILE = "bench/throughput.json"


@dataclass(frozen=True)
class Figure:
    """Images per second that one device trains `model` at `image_size` on `hardware`."""

    hardware: str
    model: str
    image_size: int
    images_per_s: float
    macs_per_image: int
    batch_size: int
    steps: int
    measured_at: float

    @property
    def gpu(self) -> bool:
        return not self.hardware.startswith("cpu:")

    @property
    def macs_per_s(self) -> float:
        """Forward multiply-adds per second: what `estimate` scales by to another net on the same hardware."""
        return self.images_per_s * self.macs_per_image


def hardware_name(device: Any) -> str:
    """`NVIDIA H100 80GB HBM3` for a GPU; `cpu:<processor>:<threads>t` for the host's CPUs (torch's thread count)."""
    import torch

    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    return f"cpu:{platform.processor() or platform.machine()}:{torch.get_num_threads()}t"


def measure(model_name: str, image_size: int, batch_size: int, steps: int, warmup: int = 3) -> Figure:
    """Train `model_name` for `warmup` + `steps` steps on one device (the first GPU, else the CPU); time the last."""
    import torch

    from models import get_model
    from models.summary import count_macs

    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps ({steps}) and batch size ({batch_size}) must be at least 1")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = get_model(model_name)
    macs = count_macs(model, image_size)
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, image_size, image_size, generator=generator).to(device)
    labels = torch.randint(0, 10, (batch_size,), generator=generator).to(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return Figure(
        hardware=hardware_name(device),
        model=model_name,
        image_size=image_size,
        images_per_s=steps * batch_size / elapsed,
        macs_per_image=macs,
        batch_size=batch_size,
        steps=steps,
        measured_at=time.time(),
    )


def save_figure(home: Path, figure: Figure) -> Path:
    """Record `figure` under `home` (replacing an earlier one of the same hardware, model and size)."""
    path = home / FIGURES_FILE
    stored = _read(path)
    stored.setdefault(figure.hardware, {})[f"{figure.model}@{figure.image_size}"] = asdict(figure)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(stored, indent=2, sort_keys=True))
    return path


def load_figures(home: Path) -> list[Figure]:
    return [Figure(**row) for per_hw in _read(home / FIGURES_FILE).values() for row in per_hw.values()]


def _read(path: Path) -> dict[str, dict[str, dict[str, Any]]]:
    if not path.is_file():
        return {}
    data: dict[str, dict[str, dict[str, Any]]] = json.loads(path.read_text(encoding="utf-8"))
    return data
