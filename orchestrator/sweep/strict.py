"""The base of every `sweep.yaml` class: strict and frozen."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    # strict: YAML "0.1" (a string) is not a float, `yes` is not silently a bool; frozen: runtime state is
    # never written into the parsed config (STYLE.md, torchvision's init_distributed_mode anti-pattern).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
