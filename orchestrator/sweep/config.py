"""Typed, strict configuration: the `sweep.yaml` schema and the resolved config of one trial.

One frozen class per concern (litgpt's `args.py`, Ray Train's `api/config.py`); every cross-field check
lives in a validator here, so a bad sweep file is refused at load with the YAML path and the fix, before
anything is submitted. Nothing in this module touches Ray, S3, MLflow or the environment.
"""

from __future__ import annotations

import difflib
import itertools
import re
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticUndefined

# The paper's ImageNet nets (Table 1) and its CIFAR-10 nets of 6n+2 layers (Section 4.2, Table 6).
IMAGENET_DEPTHS: tuple[int, ...] = (18, 34, 50, 101, 152)
CIFAR_DEPTHS: tuple[int, ...] = (20, 32, 44, 56, 110, 1202)
ALL_DEPTHS: tuple[int, ...] = IMAGENET_DEPTHS + CIFAR_DEPTHS
# The classes each family is trained on: ILSVRC-2012 (Section 4.1) and CIFAR-10 (Section 4.2). The models registry
# names the CIFAR nets `cifar_resnet<depth>` (models/zoo.py); its builders default to the same counts.
IMAGENET_CLASSES = 1000
CIFAR10_CLASSES = 10
CIFAR_PREFIX = "cifar_"

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class ConfigError(ValueError):
    """A sweep file that cannot run. The message names the file, the YAML path and the fix."""


class _Strict(BaseModel):
    # strict: YAML "0.1" (a string) is not a float, `yes` is not silently a bool; frozen: runtime state is
    # never written into the parsed config (STYLE.md, torchvision's init_distributed_mode anti-pattern).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ModelConfig(_Strict):
    """Which member of the ResNet family a trial trains."""

    depth: int = 18
    residual: bool = True
    # He et al. 2015, Section 3.3 / Table 3: A zero-padding identity, B projection when dimensions grow, C all.
    shortcut: Literal["A", "B", "C"] = "B"
    # v1: stride 2 in the bottleneck's first 1x1 (the paper); v1.5: stride in the 3x3 (torchvision's default).
    variant: Literal["v1", "v1.5"] = "v1.5"
    # Zero-init of each block's last BN (Goyal et al. 2017, arXiv:1706.02677, Section 5.1).
    zero_init_residual: bool = False
    # Width of the first stage; 64 in the paper (16 for CIFAR). Smaller values make CPU smoke runs cheap.
    base_width: int | None = Field(default=None, gt=0)
    # None: the family's dataset, 1000 (ImageNet) or 10 for the CIFAR nets (CIFAR-10); see `resolved_num_classes`.
    num_classes: int | None = Field(default=None, gt=1, examples=[1000])
    # Explicit registry name (e.g. the tiny `test_resnet` used in CI); overrides the name derived from depth.
    arch: str | None = Field(default=None, examples=["test_resnet"])

    @field_validator("depth")
    @classmethod
    def _known_depth(cls, depth: int) -> int:
        if depth not in ALL_DEPTHS:
            choices = ", ".join(str(d) for d in ALL_DEPTHS)
            raise ValueError(f"{depth} is not a ResNet depth; choose one of {choices}")
        return depth

    @property
    def registry_name(self) -> str:
        if self.arch is not None:
            return self.arch
        return f"{CIFAR_PREFIX}resnet{self.depth}" if self.depth in CIFAR_DEPTHS else f"resnet{self.depth}"

    @property
    def is_cifar(self) -> bool:
        return self.registry_name.startswith(CIFAR_PREFIX)

    @property
    def resolved_num_classes(self) -> int:
        if self.num_classes is not None:
            return self.num_classes
        return CIFAR10_CLASSES if self.is_cifar else IMAGENET_CLASSES

    def resolved(self) -> ModelConfig:
        """This config with the family's class count written in (what a trial runs and logs)."""
        return self.model_copy(update={"num_classes": self.resolved_num_classes})

    def model_kwargs(self) -> dict[str, Any]:
        """Overrides for `models.get_model(self.registry_name, **kwargs)`."""
        kwargs: dict[str, Any] = {"residual": self.residual, "num_classes": self.resolved_num_classes}
        if self.base_width is not None:
            kwargs["base_width"] = self.base_width
        if self.arch is None and not self.is_cifar:
            # The CIFAR nets are option A by definition (Section 4.2); the switches below are ImageNet-only.
            kwargs.update(shortcut=self.shortcut, variant=self.variant, zero_init_residual=self.zero_init_residual)
        return kwargs


class RecipeConfig(_Strict):
    """The optimisation recipe. Defaults are the paper's ImageNet recipe (Section 3.4)."""

    # "SGD with a mini-batch size of 256. The learning rate starts from 0.1" (Section 3.4); scaled linearly with
    # the global batch (Goyal et al. 2017): lr_effective = lr * batch_size / lr_reference_batch.
    lr: float = Field(default=0.1, gt=0)
    lr_reference_batch: int = Field(default=256, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=1e-4, ge=0)
    batch_size: int = Field(default=256, gt=0, description="global batch, summed over all workers")
    epochs: int = Field(default=90, gt=0)
    # "divided by 10 when the error plateaus" (Section 3.4); `step` at fixed epochs is torchvision's 30/60/80.
    schedule: Literal["step", "plateau", "cosine"] = "step"
    # strict=False: a YAML list is the natural way to write these.
    milestones: tuple[int, ...] = Field(default=(30, 60, 80), strict=False)
    gamma: float = Field(default=0.1, gt=0, lt=1)
    plateau_patience: int = Field(default=5, ge=0)
    # "auto": 5 epochs of linear warm-up when the global batch exceeds 1024 (Goyal et al. 2017, Section 2.2),
    # none at the paper's 256.
    warmup_epochs: float | Literal["auto"] = "auto"
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    # Augmentation preset of pipelines.presets: `standard` (RandomResizedCrop) or `paper` (Section 3.4 scale aug).
    preset: Literal["standard", "paper"] = "standard"
    image_size: int = Field(default=224, gt=0)
    resize_size: int = Field(default=256, gt=0)
    # "auto": bf16 autocast on GPU, fp32 on CPU.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # None: channels_last on GPU (faster convolutions on tensor cores), contiguous NCHW on CPU.
    channels_last: bool | None = None
    compile: bool = False
    # Caps an epoch at this many steps (smoke runs); None trains every sample of every epoch.
    steps_per_epoch: int | None = Field(default=None, gt=0)

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, milestones: tuple[int, ...]) -> tuple[int, ...]:
        if any(b <= a for a, b in itertools.pairwise(milestones)) or any(m <= 0 for m in milestones):
            raise ValueError(f"{list(milestones)} must be positive and strictly increasing, e.g. [30, 60, 80]")
        return milestones

    @model_validator(mode="after")
    def _crop_fits(self) -> RecipeConfig:
        if self.image_size > self.resize_size:
            raise ValueError(
                f"image_size {self.image_size} is larger than resize_size {self.resize_size}; "
                "the validation center crop must fit in the resized image (the paper: 224 of 256)"
            )
        return self

    @property
    def scaled_lr(self) -> float:
        return self.lr * self.batch_size / self.lr_reference_batch

    @property
    def resolved_warmup_epochs(self) -> float:
        if self.warmup_epochs == "auto":
            return 5.0 if self.batch_size > 1024 else 0.0
        return self.warmup_epochs


class DataConfig(_Strict):
    """Where the shards are (a local path or `s3://bucket/prefix` written by `resnet-orch data shard`)."""

    train: str = Field(examples=["s3://bucket/imagenet/train"])
    val: str | None = Field(default=None, examples=["s3://bucket/imagenet/val"])
    backend: Literal["auto", "dali", "torch"] = "auto"
    num_threads: int = Field(default=4, gt=0)


class ResourcesConfig(_Strict):
    """Per-trial resources: `workers` DDP ranks, each with these GPUs and CPUs."""

    workers: int = Field(default=1, gt=0)
    gpus_per_worker: float = Field(default=0, ge=0)
    cpus_per_worker: float = Field(default=1, gt=0)

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0


class CheckpointConfig(_Strict):
    every_steps: int = Field(default=1000, gt=0, description="also written at each epoch end")
    keep: int = Field(default=3, gt=0)


class TrackingConfig(_Strict):
    # None: the embedded MLflow store under RESNET_ORCH_HOME.
    uri: str | None = Field(default=None, examples=["http://127.0.0.1:5000"])
    experiment: str | None = None
    registered_model: str | None = None


class ChaosConfig(_Strict):
    """Fault injection for drills: SIGKILL `kill_rank` at `at_step` of each trial's first attempt only."""

    kill_rank: int = Field(ge=0, examples=[0])
    at_step: int = Field(gt=0, examples=[100])
    # `checkpoint`: die while writing the checkpoint of `at_step` (a checkpoint step), so the previous one is used.
    during: Literal["step", "checkpoint"] = "step"


class TrialConfig(_Strict):
    """Everything one trial runs with, fully resolved (logged as the trial's MLflow params and artifact)."""

    trial_id: str
    sweep_name: str
    seed: int
    model: ModelConfig
    recipe: RecipeConfig
    data: DataConfig
    resources: ResourcesConfig
    checkpoint: CheckpointConfig
    storage: str
    max_failures: int = Field(ge=0)
    chaos: ChaosConfig | None = None

    @field_validator("model")
    @classmethod
    def _resolved_model(cls, model: ModelConfig) -> ModelConfig:
        # The trial's params and artifact record the class count it trains with, not "the family default".
        return model.resolved()

    @property
    def per_worker_batch(self) -> int:
        return self.recipe.batch_size // self.resources.workers


_MODEL_AXES = frozenset(ModelConfig.model_fields)
_RECIPE_AXES = frozenset(RecipeConfig.model_fields)
GRID_AXES: tuple[str, ...] = ("seed", *sorted(_MODEL_AXES), *sorted(_RECIPE_AXES))


class SweepConfig(_Strict):
    """The `sweep.yaml` schema. `grid` maps an axis (a model or recipe field, or `seed`) to its values."""

    name: str = Field(examples=["resnet-paper"])
    grid: dict[str, list[Any]] = Field(default_factory=dict, examples=[{"depth": [18, 34]}])
    seed: int = 0
    model: ModelConfig = ModelConfig()
    recipe: RecipeConfig = RecipeConfig()
    data: DataConfig
    resources: ResourcesConfig = ResourcesConfig()
    max_concurrent_trials: int | None = Field(default=None, gt=0, examples=[4])
    max_failures: int = Field(default=3, ge=0)
    checkpoint: CheckpointConfig = CheckpointConfig()
    # None: RESNET_ORCH_HOME/storage on this machine; a multi-node cluster needs s3:// or a shared path.
    storage: str | None = Field(default=None, examples=["s3://bucket/runs"])
    tracking: TrackingConfig = TrackingConfig()
    chaos: ChaosConfig | None = None

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        if not _NAME_PATTERN.match(name):
            raise ValueError(
                f"{name!r} is not a valid sweep name; use letters, digits, '-', '_' or '.' (at most 63 characters)"
            )
        return name

    @model_validator(mode="after")
    def _cross_checks(self) -> SweepConfig:
        for axis, values in self.grid.items():
            if axis not in GRID_AXES:
                close = difflib.get_close_matches(axis, GRID_AXES, n=1)
                hint = f"did you mean {close[0]}? " if close else ""
                raise _PathError(("grid", axis), f"unknown axis; {hint}choose among {', '.join(GRID_AXES)}")
            if not values:
                raise _PathError(("grid", axis), "is empty; list at least one value or remove the axis")
            for index, value in enumerate(values):
                _check_axis_value(self, axis, index, value)
        for trial in self._combinations():
            workers = self.resources.workers
            batch = trial["recipe"].batch_size
            if batch % workers:
                raise _PathError(
                    ("recipe", "batch_size"),
                    f"{batch} is not divisible by resources.workers={workers}; choose a multiple of {workers}",
                )
        if self.chaos is not None and self.chaos.kill_rank >= self.resources.workers:
            raise _PathError(
                ("chaos", "kill_rank"),
                f"{self.chaos.kill_rank} is not a rank of a {self.resources.workers}-worker trial; "
                f"choose 0..{self.resources.workers - 1}",
            )
        return self

    def _combinations(self) -> list[dict[str, Any]]:
        axes = list(self.grid)
        combos: list[dict[str, Any]] = []
        for values in itertools.product(*(self.grid[a] for a in axes)):
            chosen = dict(zip(axes, values, strict=True))
            model_overrides = {k: v for k, v in chosen.items() if k in _MODEL_AXES}
            recipe_overrides = {k: v for k, v in chosen.items() if k in _RECIPE_AXES}
            combos.append(
                {
                    "axes": chosen,
                    "seed": chosen.get("seed", self.seed),
                    "model": self.model.model_validate({**self.model.model_dump(), **model_overrides}),
                    "recipe": self.recipe.model_validate({**self.recipe.model_dump(), **recipe_overrides}),
                }
            )
        return combos

    def expand(self, storage_root: str | None = None) -> list[TrialConfig]:
        """The grid's cartesian product, in file order, one `TrialConfig` each with a stable id."""
        storage = self.storage or storage_root
        if storage is None:
            raise ConfigError("storage: not set; give `storage:` in the sweep file or a default storage root")
        trials = []
        for index, combo in enumerate(self._combinations()):
            trials.append(
                TrialConfig(
                    trial_id=trial_id(index, combo["axes"]),
                    sweep_name=self.name,
                    seed=combo["seed"],
                    model=combo["model"],
                    recipe=combo["recipe"],
                    data=self.data,
                    resources=self.resources,
                    checkpoint=self.checkpoint,
                    storage=storage,
                    max_failures=self.max_failures,
                    chaos=self.chaos,
                )
            )
        return trials


def trial_id(index: int, axes: dict[str, Any]) -> str:
    """`003-depth34-plain-shortcutB-seed1`: stable across resumes, readable in `status` and MLflow."""
    parts = [f"{index:03d}"]
    for axis, value in axes.items():
        if axis == "residual":
            parts.append("residual" if value else "plain")
        elif isinstance(value, bool):
            parts.append(axis if value else f"no-{axis}")
        else:
            parts.append(f"{axis}{value}".replace("/", "-"))
    return "-".join(parts)


Loc = tuple[str | int, ...]


class _PathError(ValueError):
    """A validation error that knows its own YAML path (grid values are checked one by one)."""

    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


def _check_axis_value(sweep: SweepConfig, axis: str, index: int, value: Any) -> None:
    loc = ("grid", axis, index)
    if axis == "seed":
        if type(value) is not int:
            raise _PathError(loc, f"{value!r} is not an integer seed; write whole numbers, e.g. seed: [0, 1, 2]")
        return
    base: BaseModel = sweep.model if axis in _MODEL_AXES else sweep.recipe
    try:
        base.model_validate({**base.model_dump(), axis: value})
    except ValidationError as exc:
        site, errors = next(iter(_grouped(exc.errors(), type(base)).values()))
        raise _PathError(loc, _describe(_Site(loc, site.owner, site.field), errors)) from None


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
    nested = (
        [m for m in _members(field.annotation) if isinstance(m, type) and issubclass(m, BaseModel)] if field else []
    )
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
        else:
            cls = None
    return _Site(tuple(path), owner, field)


def _grouped(errors: list[ErrorDetails], root: type[BaseModel]) -> dict[Loc, tuple[_Site, list[ErrorDetails]]]:
    """Errors by YAML path, in pydantic's order: each member of a union fails at the same path, reported once."""
    groups: dict[Loc, tuple[_Site, list[ErrorDetails]]] = {}
    for error in errors:
        ctx_error = error.get("ctx", {}).get("error")
        site = (
            _Site(ctx_error.loc, None, None) if isinstance(ctx_error, _PathError) else _site(tuple(error["loc"]), root)
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


def _describe(site: _Site, errors: list[ErrorDetails]) -> str:
    """The message after `file: path: `, saying what was given and what to write instead."""
    first = errors[0]
    kind, given, key = first["type"], first.get("input"), site.key
    shown = _given(given)
    ctx_error = first.get("ctx", {}).get("error")
    if isinstance(ctx_error, _PathError):
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
    if isinstance(given, list) and key in GRID_AXES and not kinds & {"list_type", "tuple_type"}:
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


def parse_sweep(data: Any, source: str = "<sweep>") -> SweepConfig:
    """Validate already-parsed YAML; raise `ConfigError` listing every problem with its YAML path and the fix."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with at least `name` and `data`")
    try:
        return SweepConfig.model_validate(data)
    except ValidationError as exc:
        lines = [
            f"{source}: {_format_loc(path) or '<top>'}: {_describe(site, errors)}"
            for path, (site, errors) in _grouped(exc.errors(), SweepConfig).items()
        ]
        raise ConfigError("\n".join(dict.fromkeys(lines))) from None


def load_sweep(path: str | Path) -> SweepConfig:
    """Read and validate a sweep file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; pass the path of a sweep YAML (see examples/)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}; fix the syntax there") from None
    return parse_sweep(data, source=str(path))
