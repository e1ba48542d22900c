"""Typed, strict configuration: the `sweep.yaml` schema and the resolved config of one trial.

One frozen class per concern (litgpt's `args.py`, Ray Train's `api/config.py`); every cross-field check
lives in a validator here, so a bad sweep file is refused at load with the YAML path and the fix, before
anything is submitted (the wording of those messages: `config_errors.py`). Nothing in this module touches
Ray, S3, MLflow or the environment.
"""

from __future__ import annotations

import difflib
import itertools
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from orchestrator.sweep import cross_checks
from orchestrator.sweep.config_errors import PathError, describe_errors, describe_value
from orchestrator.sweep.job_env import has_password
from orchestrator.sweep.outage_config import OutageConfig
from orchestrator.sweep.strict import Strict
from orchestrator.sweep.tuning_config import BudgetConfig, SchedulerConfig, SearchDomain, check_tuning, sample_search
from pipelines.names import unsafe_name

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


_Strict = Strict


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


class EvalConfig(_Strict):
    """The final evaluation of a trial, after its last epoch, on `data.val`. Every epoch's validation is one center
    crop (cheap); these protocols are the paper's testing (Section 3.4, "In testing"): `ten_crop` (Tables 2 and 3)
    averages the softmax scores of the 4 corner and the center crops and their mirrors; `multi_scale` (Table 4)
    runs the network fully convolutionally on the whole image resized to each shorter side of `scales`, and its
    mirror, and averages their scores."""

    protocols: tuple[Literal["ten_crop", "multi_scale"], ...] = Field(default=(), strict=False)
    # "images are resized such that the shorter side is in {224, 256, 384, 480, 640}" (Section 3.4).
    scales: tuple[int, ...] = Field(default=(224, 256, 384, 480, 640), strict=False)

    @field_validator("protocols")
    @classmethod
    def _unique(cls, protocols: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(protocols)) != len(protocols):
            raise ValueError(f"{list(protocols)} names a protocol twice; list each once")
        return protocols

    @field_validator("scales")
    @classmethod
    def _positive(cls, scales: tuple[int, ...]) -> tuple[int, ...]:
        if not scales or any(s <= 0 for s in scales) or len(set(scales)) != len(scales):
            raise ValueError(f"{list(scales)} must be distinct positive shorter sides, e.g. [224, 256, 384, 480, 640]")
        return scales


class ErrorWarmupConfig(_Strict):
    """A constant low learning rate until the training error falls below a threshold: "we use 0.01 to warm up the
    training until the training error is below 80% (about 400 iterations), and then go back to 0.1" (Section 4.2,
    the 110-layer CIFAR-10 net). The error is the training top-1 error of the last `window_steps` steps' batches
    over all ranks, checked after every step; once below, the recipe's schedule takes over for good."""

    lr: float = Field(default=0.01, gt=0)
    until_train_err: float = Field(default=0.8, gt=0, lt=1)
    # One batch of 128 is a noisy estimate; 10 of them (1,280 images) decide.
    window_steps: int = Field(default=10, gt=0)
    # Only nets at least this deep warm up (the paper: the 110-layer net); None: every net of the sweep.
    min_depth: int | None = Field(default=None, gt=0)


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
    # `step`: milestones count optimizer steps, as the CIFAR-10 recipe does ("divide it by 10 at 32k and 48k
    # iterations", Section 4.2).
    milestone_unit: Literal["epoch", "step"] = "epoch"
    gamma: float = Field(default=0.1, gt=0, lt=1)
    plateau_patience: int = Field(default=5, ge=0)
    # "auto": 5 epochs of linear warm-up when the global batch exceeds 1024 (Goyal et al. 2017, Section 2.2),
    # none at the paper's 256.
    warmup_epochs: float | Literal["auto"] = "auto"
    # Section 4.2: 0.01 until the training error is below 80%, for the 110-layer net; None: no such warm-up.
    error_warmup: ErrorWarmupConfig | None = None
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    # Augmentation preset of pipelines.presets: `standard` (RandomResizedCrop), `paper` (Section 3.4 scale
    # augmentation, per-pixel mean, PCA colour) or `cifar` (Section 4.2: pad 4, random 32x32 crop, flip, per-pixel
    # mean; give image_size and resize_size 32).
    preset: Literal["standard", "paper", "cifar"] = "standard"
    image_size: int = Field(default=224, gt=0)
    resize_size: int = Field(default=256, gt=0)
    # "auto": bf16 autocast on GPU, fp32 on CPU.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # None: channels_last on GPU (faster convolutions on tensor cores), contiguous NCHW on CPU.
    channels_last: bool | None = None
    compile: bool = False
    # True: PyTorch's deterministic algorithms (cudnn.benchmark off), so a GPU restart repeats the same losses bit for
    # bit; False: cudnn.benchmark picks the fastest convolution algorithms (they may differ from run to run).
    deterministic: bool = False
    # Caps an epoch at this many steps (smoke runs); None trains every sample of every epoch.
    steps_per_epoch: int | None = Field(default=None, gt=0)
    # Train exactly this many optimizer steps instead of `epochs` (the last epoch is cut short there): the CIFAR-10
    # recipe stops "at 64k iterations" (Section 4.2).
    max_steps: int | None = Field(default=None, gt=0)
    eval: EvalConfig = EvalConfig()

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
        if self.milestone_unit == "step" and self.schedule != "step":
            raise ValueError(f"milestone_unit 'step' counts the milestones of schedule 'step', not {self.schedule!r}")
        return self

    def total_steps(self, steps_per_epoch: int) -> int:
        """Optimizer steps of the whole trial: `max_steps`, else `epochs` of `steps_per_epoch`."""
        return self.max_steps if self.max_steps is not None else self.epochs * steps_per_epoch

    def total_epochs(self, steps_per_epoch: int) -> int:
        """Epochs the trial runs (the last one cut short when `max_steps` falls inside it)."""
        return -(-self.total_steps(steps_per_epoch) // steps_per_epoch)

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
    # None: derived from resources.cpus_per_worker (`orchestrator.training.setup.decode_threads`).
    num_threads: int | None = Field(default=None, gt=0)
    # Batches DALI prepares ahead of the step; 2 measured best on the 2-core bench (docs/performance.md).
    prefetch_queue_depth: int = Field(default=2, gt=0)
    # Validating on the training images measures memorisation, not generalisation: refused unless said on purpose
    # (a smoke run on a sample too small to split); `report` then marks the errors as training-set errors.
    allow_val_equals_train: bool = False

    @property
    def val_is_train(self) -> bool:
        return self.val is not None and cross_checks.same_location(self.val, self.train)


class WorkerRange(_Strict):
    """An elastic worker count: the trial starts once `min` workers fit and Ray Train restarts its group larger (up
    to `max`) as resources appear, smaller when a worker is lost; every restart resumes from the newest checkpoint.
    The math stays that of `max` workers: each step's global batch is `max` fixed micro-batches, and a group of w
    workers accumulates `max / w` of them per rank (`pipelines.global_order`)."""

    min: int = Field(ge=1, examples=[1])
    max: int = Field(ge=1, examples=[8])
    # How often Ray Train looks for room to grow a running group (ScalingConfig.elastic_resize_monitor_interval_s);
    # each resize restarts the group from the newest checkpoint, so a short interval on a busy cluster costs steps.
    resize_check_s: float = Field(default=60.0, gt=0, strict=False)

    @model_validator(mode="after")
    def _ordered(self) -> WorkerRange:
        if self.min > self.max:
            raise ValueError(f"min {self.min} > max {self.max}; give 1 <= min <= max, e.g. {{min: 1, max: {self.min}}}")
        return self


class ResourcesConfig(_Strict):
    """Per-trial resources: `workers` DDP ranks (a number, or an elastic `{min, max}` range), each with these GPUs and
    CPUs."""

    workers: int | WorkerRange = Field(default=1, union_mode="left_to_right")
    gpus_per_worker: float = Field(default=0, ge=0)
    cpus_per_worker: float = Field(default=1, gt=0)

    @field_validator("workers", mode="before")
    @classmethod
    def _count_or_range(cls, value: Any) -> Any:
        # One message per mistake, at its own YAML path (the union's two branches would each report one).
        where: tuple[str, ...] = ("resources", "workers")
        if isinstance(value, dict):
            try:
                return WorkerRange.model_validate(value)
            except ValidationError as exc:
                loc = (*where, *(str(part) for part in exc.errors()[0]["loc"]))
                raise PathError(loc, describe_value(exc, WorkerRange, loc)) from None
        if isinstance(value, WorkerRange) or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            return value
        raise PathError(
            where,
            f"{value!r} is neither a number of workers nor a range; give a whole number of at least 1 (workers: 2) or "
            "an elastic range (workers: {min: 1, max: 2})",
        )

    @property
    def elastic(self) -> bool:
        return isinstance(self.workers, WorkerRange)

    @property
    def min_workers(self) -> int:
        return self.workers.min if isinstance(self.workers, WorkerRange) else self.workers

    @property
    def max_workers(self) -> int:
        """The workers of a fixed count; the most an elastic range grows to, whose micro-batches every step holds."""
        return self.workers.max if isinstance(self.workers, WorkerRange) else self.workers

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0


class CheckpointConfig(_Strict):
    every_steps: int = Field(default=1000, gt=0, description="also written at each epoch end")
    keep: int = Field(default=3, gt=0)
    # `async`: rank 0 copies the state of the checkpoint's step to CPU memory and one background thread writes, hashes
    # and uploads it (manifest last) while the steps run on; its report goes to the sweep at the next report (an
    # epoch's end waits for its own). `sync`: the step waits for the write and the upload. `sync` by default:
    # `bench/train_step.py --checkpoint-every` showed no gain for `async` on a 2-core CPU machine, where the upload
    # competes with the training threads for the same cores (docs/performance.md).
    upload: Literal["sync", "async"] = "sync"


class TrackingConfig(_Strict):
    # None: the embedded MLflow store under RESNET_ORCH_HOME.
    uri: str | None = Field(default=None, examples=["http://127.0.0.1:5000"])
    experiment: str | None = None
    registered_model: str | None = None

    @field_validator("uri")
    @classmethod
    def _no_password(cls, uri: str | None) -> str | None:
        # The URI is stored with the sweep and printed by `submit`; a sweep file is shared and committed. The message
        # (a PathError: printed as is) names the URI without its credentials.
        if uri is not None and has_password(uri):
            parts = urlsplit(uri)
            shown = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
            raise PathError(
                ("tracking", "uri"),
                f"{shown} is given with a password; write the URI without it and set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the environment",
            )
        return uri

    @field_validator("experiment")
    @classmethod
    def _experiment_name(cls, name: str | None) -> str | None:
        # The embedded store keeps an experiment's artifacts in a folder of that name (`Tracker`).
        reason = None if name is None else unsafe_name(name)
        if reason is not None:
            raise ValueError(f"{name!r} {reason}; an experiment name is one folder name (spaces and quotes are fine)")
        return name

    @field_validator("registered_model")
    @classmethod
    def _model_name(cls, name: str | None) -> str | None:
        # `pull NAME@champion` and `models:/NAME/3` split on '@' and '/'; MLflow itself refuses '/' and ':'.
        if name is not None and not _NAME_PATTERN.match(name):
            raise ValueError(
                f"{name!r} is not a valid model name; use letters, digits, '-', '_' or '.' (at most 63 characters)"
            )
        return name


class ChaosConfig(_Strict):
    """One injected fault for drills: SIGKILL `kill_rank` at `at_step` of attempt `attempt` of every trial.

    `chaos:` takes one fault or a list of them; a fault on a later attempt (`attempt: 1`) kills the restarted
    attempt too, so a drill can fail a trial twice.
    """

    kill_rank: int = Field(ge=0, examples=[0])
    at_step: int = Field(gt=0, examples=[100])
    # `checkpoint`: die while writing the checkpoint of `at_step` (a checkpoint step), so the previous one is used.
    during: Literal["step", "checkpoint"] = "step"
    # 0: the trial's first attempt; 1: the first restart; ...
    attempt: int = Field(default=0, ge=0)


def _as_faults(value: Any) -> Any:
    """`chaos:` as a list of faults: one mapping is a list of one, nothing is an empty list."""
    if value is None:
        return ()
    return [value] if isinstance(value, dict | ChaosConfig) else value


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
    # Ray Train's separate budget of restarts after a preempted node (-1: unlimited, Ray's default).
    max_preemptions: int = Field(default=-1, ge=-1)
    chaos: tuple[ChaosConfig, ...] = Field(default=(), strict=False)
    outages: OutageConfig = OutageConfig()
    # The submitted sweep's id (`layout.expand` sets it): the trial's Ray Train run and live metrics are named by it.
    sweep_id: str | None = None

    @field_validator("chaos", mode="before")
    @classmethod
    def _fault_list(cls, value: Any) -> Any:
        return _as_faults(value)

    @field_validator("model")
    @classmethod
    def _resolved_model(cls, model: ModelConfig) -> ModelConfig:
        # The trial's params and artifact record the class count it trains with, not "the family default".
        return model.resolved()

    @property
    def per_worker_batch(self) -> int:
        """The batch each worker computes at once: the global batch over the workers (an elastic range: over its
        `max`, one micro-batch, of which a smaller group accumulates several per step)."""
        return self.recipe.batch_size // self.resources.max_workers

    @property
    def run_name(self) -> str:
        """The Ray Train run's name, as the dashboard's Train view lists it (sweep id + trial id), and its folder."""
        return f"{self.sweep_id}.{self.trial_id}" if self.sweep_id else self.trial_id

    @property
    def error_warmup(self) -> ErrorWarmupConfig | None:
        """The recipe's error warm-up if it applies to this trial's net (`min_depth`), else None."""
        warmup = self.recipe.error_warmup
        if warmup is None or (warmup.min_depth is not None and self.model.depth < warmup.min_depth):
            return None
        return warmup


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
    # Restarts after a preemption (a spot node reclaimed with notice) a trial may take besides `max_failures`, which
    # they never use up: each resumes from the just-in-time checkpoint of its notice. -1: unlimited.
    max_preemptions: int = Field(default=-1, ge=-1, examples=[20])
    checkpoint: CheckpointConfig = CheckpointConfig()
    # None: RESNET_ORCH_HOME/storage on this machine; a multi-node cluster needs s3:// or a shared path.
    storage: str | None = Field(default=None, examples=["s3://bucket/runs"])
    # True: `storage` is a path every node mounts (NFS, EFS, Lustre), so a multi-node cluster may use it.
    shared_filesystem: bool = False
    tracking: TrackingConfig = TrackingConfig()
    # One fault (a mapping) or a list of them.
    chaos: tuple[ChaosConfig, ...] = Field(default=(), strict=False, examples=[{"kill_rank": 0, "at_step": 100}])
    # Stops trials early (Ray Tune's ASHA or median stopping), samples recipe axes, limits what the sweep spends:
    # `tuning_config.py`.
    scheduler: SchedulerConfig | None = None
    search: dict[str, SearchDomain] = Field(default_factory=dict, examples=[{"lr": {"loguniform": [0.01, 0.5]}}])
    # Draws of `search:` per grid point (Ray Tune's `num_samples`), seeded by `seed`.
    num_samples: int = Field(default=1, gt=0)
    budget: BudgetConfig | None = None
    # How long S3 and MLflow calls are retried when their server is away (`outage_config.py`).
    outages: OutageConfig = OutageConfig()

    @field_validator("chaos", mode="before")
    @classmethod
    def _fault_list(cls, value: Any) -> Any:
        return _as_faults(value)

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
                raise PathError(("grid", axis), f"unknown axis; {hint}choose among {', '.join(GRID_AXES)}")
            if not values:
                raise PathError(("grid", axis), "is empty; list at least one value or remove the axis")
            for index, value in enumerate(values):
                _check_axis_value(self, axis, index, value)
        check_tuning(self, _RECIPE_AXES, lambda loc, axis, value: _check_axis_value(self, axis, 0, value, loc))
        recipes = [c["recipe"] for c in self._combinations()]
        cross_checks.check_stop(self.recipe, self.grid)
        milestones_given = "milestones" in self.recipe.model_fields_set or "milestones" in self.grid
        for recipe in recipes:
            cross_checks.check_recipe(recipe, self.resources, milestones_given=milestones_given)
        cross_checks.check_protocols(recipes, self.data)
        cross_checks.check_faults(self.chaos, self.resources.max_workers, recipes)
        cross_checks.check_elastic(self.resources, self.data)
        cross_checks.check_val(self.data)
        return self

    def _combinations(self) -> list[dict[str, Any]]:
        """Ray Tune's order: `num_samples` passes over the grid, each grid point with its own draw of `search:`."""
        axes = list(self.grid)
        points = list(itertools.product(*(self.grid[a] for a in axes)))
        draws = iter(sample_search(self.search, self.num_samples * len(points), self.seed))
        combos: list[dict[str, Any]] = []
        for values in [p for _ in range(self.num_samples) for p in points]:
            chosen = {**dict(zip(axes, values, strict=True)), **next(draws)}
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
                    max_preemptions=self.max_preemptions,
                    chaos=self.chaos,
                    outages=self.outages,
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
        elif isinstance(value, float):
            parts.append(f"{axis}{value:.4g}")  # a sampled lr such as 0.0123456789 reads as lr0.01235
        else:
            parts.append(f"{axis}{value}".replace("/", "-"))
    return "-".join(parts)


def _check_axis_value(
    sweep: SweepConfig, axis: str, index: int, value: Any, loc: tuple[str | int, ...] | None = None
) -> None:
    loc = loc or ("grid", axis, index)
    if axis == "seed":
        if type(value) is not int:
            raise PathError(loc, f"{value!r} is not an integer seed; write whole numbers, e.g. seed: [0, 1, 2]")
        return
    base: BaseModel = sweep.model if axis in _MODEL_AXES else sweep.recipe
    try:
        base.model_validate({**base.model_dump(), axis: value})
    except ValidationError as exc:
        raise PathError(loc, describe_value(exc, type(base), loc)) from None


def parse_sweep(data: Any, source: str = "<sweep>") -> SweepConfig:
    """Validate already-parsed YAML; raise `ConfigError` listing every problem with its YAML path and the fix."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with at least `name` and `data`")
    try:
        return SweepConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, SweepConfig, source, sweepable=GRID_AXES)) from None


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
