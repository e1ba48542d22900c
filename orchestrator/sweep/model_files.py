"""What `resnet-orch pull` writes: a registered model as one self-contained file, in the format asked for.

* `export` (the default, `.pt2`): a `torch.export` program, `torch.export.load(path).module()(images)`. The batch
  size is free; the image size is the one the model was registered with. Needs torch only.
* `torchscript`: a traced TorchScript module, `torch.jit.load(path)`, for runtimes that still read TorchScript
  (torch 2.14 deprecates TorchScript save and load: both warn).
* `state-dict`: `torch.load(path, weights_only=True)` gives `{"model": registry name, "kwargs": builder keyword
  arguments, "image_size": ..., "state_dict": ...}` for those who build the net themselves
  (`models.get_model(model, **kwargs)`; resnet18-152 with shortcut B and variant v1.5 are torchvision's nets with
  the same parameter names, so `torchvision.models.resnet50(num_classes=...)` loads it as is).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Literal, get_args

from orchestrator.sweep.config import TrialConfig
from orchestrator.sweep.tracking import models_uri, pull_model, use_store

PullFormat = Literal["export", "torchscript", "state-dict"]
PULL_FORMATS: tuple[str, ...] = get_args(PullFormat)
STATE_DICT_FORMAT = "resnet-orch-state-dict"
# Traces and exports run on a batch of 2: a batch of 1 would specialise the batch dimension to 1.
_EXAMPLE_BATCH = 2


def write_model_file(tracking_uri: str, model_uri: str, output: Path, fmt: PullFormat = "export") -> Path:
    """Write the registered model `model_uri` (`name@alias`, `name/3`, `models:/...`) to `output` as `fmt`."""
    import torch
    from mlflow.models import get_model_info

    # get_model_info resolves `models:/` through the process's registry: the store given here, not MLflow's default.
    use_store(tracking_uri)
    info = get_model_info(models_uri(model_uri))
    module = pull_model(tracking_uri, model_uri)
    shape = info.signature.inputs.inputs[0].shape
    example = torch.randn(_EXAMPLE_BATCH, *shape[1:])
    output.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "export":
        program = torch.export.export(module, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
        torch.export.save(program, output)
    elif fmt == "torchscript":
        with torch.no_grad():
            traced = torch.jit.trace(module, example, check_trace=False)
        torch.jit.save(traced, str(output))
    else:
        model = _trial_model(tracking_uri, info.run_id)
        state = {key: value.detach().clone() for key, value in module.state_dict().items()}
        payload = {
            "format": STATE_DICT_FORMAT,
            "model": model["name"],
            "kwargs": model["kwargs"],
            "image_size": int(shape[-1]),
            "state_dict": state,
        }
        torch.save(payload, output)
    return output


def _trial_model(tracking_uri: str, run_id: str) -> dict[str, Any]:
    """The registry name and builder kwargs of the trial whose run registered the model (its `config/trial.json`)."""
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        local = MlflowClient(tracking_uri=tracking_uri).download_artifacts(run_id, "config/trial.json", tmp)
        trial = TrialConfig.model_validate_json(Path(local).read_text(encoding="utf-8"))
    return {"name": trial.model.registry_name, "kwargs": trial.model.model_kwargs()}
