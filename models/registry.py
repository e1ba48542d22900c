"""Name -> builder registry for the model family (the pattern of timm's `_registry.py`).

Builders are registered once at import time; `get_model` checks the name and every override against the
builder's keyword-only parameters before calling it, so a typo in a sweep file fails with the valid choices
instead of a `TypeError` deep inside a Ray worker.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import re
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

Builder = Callable[..., nn.Module]
_B = TypeVar("_B", bound=Builder)

_REGISTRY: dict[str, Builder] = {}


def register_model(builder: _B, *, name: str | None = None) -> _B:
    """Register `builder` under `name` (default: its `__name__`); usable as a bare decorator.

    Options are the builder's keyword-only parameters. A name registered twice raises: two builders behind one
    name would make a sweep's results depend on import order.
    """
    key = name if name is not None else getattr(builder, "__name__", None)
    if not key:
        raise ValueError("register_model needs a name for a builder without __name__ (e.g. a functools.partial)")
    if key in _REGISTRY:
        raise ValueError(f"model {key!r} is already registered; pick another name")
    _REGISTRY[key] = builder
    return builder


def list_models(pattern: str | None = None) -> list[str]:
    """Registered names in natural order (resnet18 before resnet101); `pattern` filters with shell wildcards."""
    names = sorted(_REGISTRY, key=_natural_key)
    return names if pattern is None else [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def model_options(name: str) -> dict[str, Any]:
    """The options `get_model(name, ...)` accepts, with their defaults."""
    params = inspect.signature(_builder(name)).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def get_model(name: str, **overrides: Any) -> nn.Module:
    """Build the registered model `name` with `overrides` for its options (e.g. `shortcut="A"`)."""
    options = model_options(name)
    unknown = sorted(set(overrides) - set(options))
    if unknown:
        raise ValueError(
            f"{name} has no option {', '.join(map(repr, unknown))}; valid options: {', '.join(sorted(options))}"
        )
    return _builder(name)(**overrides)


def _builder(name: str) -> Builder:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}; registered models: {', '.join(list_models())}") from None


def _natural_key(name: str) -> list[int | str]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
