"""The message engine of the sweep schema: pydantic's validation errors as YAML paths with the fix.

`config.py` declares what a sweep file may say; this module turns what pydantic reports about a file that breaks
those rules into one line per YAML path that says what was given and what to write instead:

    sweep.yaml: recipe.lr: '0.1' is text (quoted), not a number; write it without quotes: lr: 0.1

It knows pydantic's error types and the shape of the config classes (to name valid keys and give examples), and
nothing of the sweep itself: the schema passes in what it wants hinted (the keys a `grid:` may sweep).
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Union, get_args, get_origin

import yaml
from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticUndefined

Loc = tuple[str | int, ...]


class PathError(ValueError):
    """A validation error that knows its own YAML path (a validator that checks grid values one by one raises it)."""

    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


def describe_errors(exc: ValidationError, root: type[BaseModel], source: str, sweepable: Collection[str]) -> str:
    """One `source: path: message` line per YAML path that `exc` (raised validating `root`) reports, in order."""
    lines = [
        f"{source}: {_format_loc(path) or '<top>'}: {_describe(site, errors, sweepable)}"
        for path, (site, errors) in _grouped(exc.errors(), root).items()
    ]
    return "\n".join(dict.fromkeys(lines))


def describe_value(exc: ValidationError, model: type[BaseModel], path: Loc) -> str:
    """The message for the first error of `exc`, raised validating one value that stands at `path` in the file (a
    grid value checked against the field of `model` it overrides)."""
    site, errors = next(iter(_grouped(exc.errors(), model).values()))
    return _describe(_Site(path, site.owner, site.field), errors)


@dataclass(frozen=True)
class _Site:
    """Where an error is: its YAML path, the config class whose keys apply there, and the field (if one)."""

    path: Loc
    owner: type[BaseModel] | None
    field: FieldInfo | None

    @property
    def key(self) -> str | None:
        """The YAML key of the value; None for a list item (a grid value)."""
        last = self.path[-1] if self.path else None
        return last if isinstance(last, str) else None


def _members(annotation: Any) -> tuple[Any, ...]:
    """The types a field accepts, without None (`float | Literal["auto"]` -> float, Literal["auto"])."""
    if get_origin(annotation) in (Union, types.UnionType):
        return tuple(a for a in get_args(annotation) if a is not type(None))
    return (annotation,)


def _section(field: FieldInfo | None) -> type[BaseModel] | None:
    """The config class a field holds: itself, or the items of a list of them (`chaos: [{...}, {...}]`)."""
    members = [
        item
        for member in (_members(field.annotation) if field else ())
        for item in (get_args(member) if get_origin(member) in (list, tuple) else (member,))
    ]
    nested = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
    return nested[0] if nested else None


def _site(loc: Loc, root: type[BaseModel]) -> _Site:
    """Walk pydantic's error location through the config classes; drop the union member tags it inserts."""
    path: list[str | int] = []
    cls: type[BaseModel] | None = root
    owner: type[BaseModel] | None = root
    field: FieldInfo | None = None
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        path.append(part)
        owner, field = cls, None
        if cls is not None and isinstance(part, str) and part in cls.model_fields:
            field = cls.model_fields[part]
            cls = _section(field)
            if cls is None and len(_members(field.annotation)) > 1 and parts and isinstance(parts[0], str):
                parts.pop(0)  # e.g. ("recipe", "warmup_epochs", "float"): the tag of the union member that failed
        elif isinstance(part, int) and cls is not None:
            owner = None  # an item of a list of sections: its keys are the section's
        else:
            cls = None
    return _Site(tuple(path), owner, field)


def _grouped(errors: list[ErrorDetails], root: type[BaseModel]) -> dict[Loc, tuple[_Site, list[ErrorDetails]]]:
    """Errors by YAML path, in pydantic's order: each member of a union fails at the same path, reported once."""
    groups: dict[Loc, tuple[_Site, list[ErrorDetails]]] = {}
    for error in errors:
        ctx_error = error.get("ctx", {}).get("error")
        site = (
            _Site(ctx_error.loc, None, None) if isinstance(ctx_error, PathError) else _site(tuple(error["loc"]), root)
        )
        groups.setdefault(site.path, (site, []))[1].append(error)
    return groups


def _yaml(key: str | None, value: Any) -> str:
    """`key: value` (or the bare value of a list item) exactly as it would be written in the sweep file."""
    text = yaml.safe_dump({key: value} if key is not None else [value], default_flow_style=True, width=1_000_000)
    return text.strip()[1:-1]


def _section_example(cls: type[BaseModel]) -> dict[str, Any]:
    """A minimal mapping for a config section: its required keys, else its first key."""
    required = {name: _field_example(f) for name, f in cls.model_fields.items() if f.is_required()}
    if required:
        return required
    for name, field in cls.model_fields.items():
        if (example := _field_example(field)) is not None:
            return {name: example}
    return {}


def _field_example(field: FieldInfo | None) -> Any:
    """A valid value of the field for a "write ..." hint: its documented example, else its default."""
    if field is None:
        return None
    if field.examples:
        return field.examples[0]
    section = _section(field)
    if section is not None:
        return _section_example(section)
    default = field.get_default(call_default_factory=True)
    return None if default is PydanticUndefined or default == {} else default


# What a value of each pydantic type error should have been, in the words of a YAML user.
_EXPECTED = {
    "float_type": "a number",
    "int_type": "a whole number",
    "bool_type": "true or false",
    "string_type": "text",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a mapping of keys",
    "model_type": "a mapping of keys",
}
_BOUNDS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}
# PyYAML (YAML 1.1) reads `1e-4` as the text '1e-4': its float pattern needs a dot (`1.0e-4`).
_DOTLESS_EXPONENT = re.compile(r"^[-+]?\d+[eE][-+]?\d+$")


def _expected(error: ErrorDetails) -> str:
    """What the value should have been ("a number", "one of 'A', 'B' or 'C'"); "" for an error type not listed."""
    if error["type"] == "literal_error":
        allowed = str(error.get("ctx", {}).get("expected"))
        return f"one of {allowed}" if " or " in allowed else allowed
    return _EXPECTED.get(error["type"], "")


def _given(value: Any) -> str:
    """The offending value as the user sees it: quoted if text; YAML spelling for booleans and null."""
    return _yaml(None, value) if value is None or isinstance(value, bool) else repr(value)


def _from_text(text: str, kinds: set[str]) -> Any:
    """The number or boolean a quoted (or dotless-exponent) YAML scalar meant, if it means one of `kinds`."""
    lowered = text.strip().lower()
    if "bool_type" in kinds and lowered in ("true", "false", "yes", "no", "on", "off"):
        return lowered in ("true", "yes", "on")
    if "int_type" in kinds and re.fullmatch(r"[-+]?\d+", lowered):
        return int(lowered)
    if "float_type" in kinds:
        try:
            number = float(lowered)
        except ValueError:
            return None
        return int(number) if number.is_integer() and "e" not in lowered and "." not in lowered else number
    return None


def _describe(site: _Site, errors: list[ErrorDetails], sweepable: Collection[str] = ()) -> str:
    """The message after `file: path: `, saying what was given and what to write instead.

    `sweepable`: the keys that may be listed under `grid:` instead (a list given to one of them gets that hint).
    """
    first = errors[0]
    kind, given, key = first["type"], first.get("input"), site.key
    shown = _given(given)
    ctx_error = first.get("ctx", {}).get("error")
    if isinstance(ctx_error, PathError):
        return ctx_error.message
    if kind == "value_error":
        return _clean_message(first["msg"], given)
    if kind == "extra_forbidden":
        valid = sorted(site.owner.model_fields) if site.owner else []
        close = difflib.get_close_matches(str(key), valid, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        return f"unknown key; {hint}valid keys here: {', '.join(valid)}"
    example = _field_example(site.field)
    if kind == "missing":
        return f"is required; add it, e.g. {_yaml(key, example)}" if example is not None else "is required"
    if kind in _BOUNDS and site.field is not None:
        return _out_of_range(site.field, shown, _yaml(key, example) if example is not None else None)
    kinds = {e["type"] for e in errors}
    expected = [_expected(e) for e in errors]
    if not all(expected):
        return f"{first['msg']} (got {shown})" + (f"; e.g. {_yaml(key, example)}" if example is not None else "")
    what = " or ".join(expected)
    if isinstance(given, str) and (meant := _from_text(given, kinds)) is not None:
        if _DOTLESS_EXPONENT.match(given.strip()):
            return f"{shown} is text to YAML, not {what} (an exponent needs a dot: 1.0e-4); write {_yaml(key, meant)}"
        return f"{shown} is text (quoted), not {what}; write it without quotes: {_yaml(key, meant)}"
    if isinstance(given, list) and key in sweepable and not kinds & {"list_type", "tuple_type"}:
        return (
            f"{shown} is a list, but {key} takes one value here; to sweep it, list the values under grid: "
            f"{_yaml('grid', {key: given})}"
        )
    if kinds & {"list_type", "tuple_type"} and not isinstance(given, (dict, list)):
        return f"{shown} is not a list; write a list, even of one value: {_yaml(key, [given])}"
    if kind == "string_type" and not isinstance(given, (dict, list)):
        return f"{shown} is not text; quote it: {_yaml(key, str(given))}"
    write = "one of them" if what.startswith("one of") else what
    return f"{shown} is not {what}; write {write}" + (f", e.g. {_yaml(key, example)}" if example is not None else "")


def _out_of_range(field: FieldInfo, shown: str, example: str | None) -> str:
    """`0 is out of range; write a whole number > 0, e.g. epochs: 90`: all bounds of the field, not just the one hit."""
    symbols = {Gt: (">", "gt"), Ge: (">=", "ge"), Lt: ("<", "lt"), Le: ("<=", "le")}
    bounds = [
        f"{symbol} {getattr(limit, attr)}"
        for limit in field.metadata
        for cls, (symbol, attr) in symbols.items()
        if isinstance(limit, cls)
    ]
    number = "a whole number" if int in _members(field.annotation) else "a number"
    hint = f", e.g. {example}" if example is not None else ""
    return f"{shown} is out of range; write {number} {' and '.join(bounds)}{hint}"


def _clean_message(msg: str, value: Any) -> str:
    """Pydantic's message, led by the offending value unless the message names it (or it is a whole section)."""
    msg = msg.removeprefix("Value error, ")
    if isinstance(value, dict) or repr(value) in msg or str(value) in msg:
        return msg
    return f"{value!r}: {msg}"


def _format_loc(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
