"""Reading a saved adapter and checking it against a base model, once, before the base model is touched.

`NeatModel.from_pretrained` and `NeatModel.load_adapter` read through [`read_checked_adapter`]: the config, the
training record and the weights are read once each, and target matching, the shape check and the NaN/inf scan run
once each; a refused adapter leaves the model unchanged. [`checked_config`] is the same check for a config alone
(`get_neat_model`, `add_adapter`).
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any

import torch
from peft.utils import ModulesToSaveWrapper
from torch import nn

from neat_hf.config import NeatConfig, read_adapter_config
from neat_hf.constants import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, FILE_KEY_PREFIX, TRAINING_INFO_NAME
from neat_hf.errors import AdapterLoadError, AdapterMismatchError, NeatError
from neat_hf.hub.download import fetch_companion_file, resolve_adapter_file
from neat_hf.io import check_saved_together, read_adapter_weights, read_tensor_shapes
from neat_hf.layer import layer_features
from neat_hf.quantization import check_quantized_model
from neat_hf.targets import InjectionPlan, plan_injection
from neat_hf.training_info import load_training_info

logger = logging.getLogger(__name__)


def checked_config(model: nn.Module, config: NeatConfig) -> tuple[NeatConfig, InjectionPlan]:
    """A copy of `config` checked against `model` (which is not changed), its targets resolved: neat-hf's presets
    for `target_modules=None`, the task head added to `modules_to_save`, the base model's name filled in; and the
    injection plan. PEFT then injects exactly these modules.

    Raises:
        NoTargetModulesError, UnsupportedModuleError, NeatError: see `neat_hf.targets.plan_injection`.
    """
    if not isinstance(config, NeatConfig):
        raise TypeError(f"config must be a NeatConfig, got {type(config).__name__}.")
    config = copy.deepcopy(config)
    config._validate()  # fields may have been changed after construction
    check_quantized_model(model)
    plan = plan_injection(model, config)
    config.target_modules = plan.target_modules
    config.modules_to_save = plan.modules_to_save_names
    if config.base_model_name_or_path is None:
        config.base_model_name_or_path = getattr(getattr(model, "config", None), "name_or_path", None) or None
    return config, plan


def tensor_shape(tensor: torch.Tensor) -> tuple[int, ...]:
    # Under ZeRO-3 a parameter is a 0-element placeholder; DeepSpeed records the real shape in ds_shape.
    return tuple(getattr(tensor, "ds_shape", tensor.shape))


def read_checked_adapter(
    model: nn.Module, model_id: str | os.PathLike, is_trainable: bool, hub: dict[str, Any], *, check_finite: bool = True
) -> tuple[NeatConfig, dict[str, torch.Tensor]]:
    """Read an adapter (adapter_config.json, training_info.json, the safetensors file: each once) and check it against
    `model` (which is not changed), once: the config as [`checked_config`] returns it, and the tensors.

    Bounded: the config's fields are range-checked when it is parsed, the target regexes match under a time limit,
    the file's tensor shapes are compared (from its header) before any tensor is read, and the values (floating
    point, finite) are scanned once. `NeatModel.from_pretrained` and `load_adapter` build on the result without
    checking again.
    """
    config_path = resolve_adapter_file(model_id, ADAPTER_CONFIG_NAME, **hub)
    fetch_companion_file(model_id, TRAINING_INFO_NAME, **hub)  # the neat-only settings (dropout) live there
    record = _training_record(os.path.dirname(config_path))
    config = read_adapter_config(config_path, training_info=record)
    weights_path = resolve_adapter_file(model_id, ADAPTER_WEIGHTS_NAME, **hub)
    check_saved_together(config_path, weights_path, training_info=record)
    config.inference_mode = not is_trainable
    try:
        config, plan = checked_config(model, config)
    except NeatError as err:
        raise AdapterMismatchError(f"Adapter {os.fspath(model_id)!r} does not fit {type(model).__name__}: {err}") from err
    check_adapter_tensors(read_tensor_shapes(weights_path), expected_adapter_shapes(model, config, plan), type(model).__name__)
    tensors = read_adapter_weights(weights_path)
    check_adapter_values(tensors, exempt_keys=_integer_keys(model, plan), check_finite=check_finite)
    return config, tensors


def _training_record(directory: str) -> dict[str, Any]:
    """The adapter folder's training_info.json, read once per load (`{}` when missing; unreadable: warned, `{}`)."""
    try:
        return load_training_info(directory) or {}
    except AdapterLoadError as err:
        logger.warning("Ignoring the training record: %s", err)
        return {}


def _integer_keys(model: nn.Module, plan: InjectionPlan) -> set[str]:
    """File keys of `modules_to_save` tensors that are not floating point in `model` (e.g. integer buffers)."""
    keys = set()
    for path in plan.modules_to_save:
        module = model.get_submodule(path)
        module = module.original_module if isinstance(module, ModulesToSaveWrapper) else module
        for key, tensor in module.state_dict(keep_vars=True).items():
            if not tensor.is_floating_point():
                keys.add(f"{FILE_KEY_PREFIX}{path}.{key}")
    return keys


def check_adapter_values(
    tensors: dict[str, torch.Tensor], *, exempt_keys: set[str] | None = None, check_finite: bool = True
) -> None:
    """Refuse non-floating-point tensors (never cast: an int8/bool adapter is not one neat-hf wrote) and, unless
    `check_finite=False`, tensors holding NaN or inf. `exempt_keys` lists the keys exempt from the float rule
    (integer buffers of a `modules_to_save` module).

    Raises:
        AdapterLoadError: naming the tensor, its dtype or how many values are not finite.
    """
    exempt = exempt_keys or set()
    for key, tensor in tensors.items():
        if key in exempt:
            continue
        if not tensor.is_floating_point():
            raise AdapterLoadError(
                f"Adapter tensor {key!r} has dtype {tensor.dtype}; adapter weights must be floating point "
                "(float32/float16/bfloat16). It is refused rather than cast."
            )
        if check_finite and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise AdapterLoadError(
                f"Adapter tensor {key!r} holds {bad} NaN/inf values of {tensor.numel()}; the adapter is broken "
                "(diverged training?). Pass check_finite=False only to inspect it."
            )


def expected_adapter_shapes(model: nn.Module, config: NeatConfig, plan: InjectionPlan) -> dict[str, tuple[int, ...]]:
    """{file key: shape} that an adapter with `config` must have on `model` (computed without changing `model`)."""
    shapes: dict[str, tuple[int, ...]] = {}
    r = config.r
    for path in plan.targets:
        _, out_features, _ = layer_features(model.get_submodule(path))
        base = f"{FILE_KEY_PREFIX}{path}"
        shapes[f"{base}.peanut_A.weight"] = (r, out_features)
        shapes[f"{base}.peanut_B.weight"] = (out_features, r)
        for i in range(config.depth):
            shapes[f"{base}.peanut_encoders.{i}.weight"] = (r, r)
            shapes[f"{base}.peanut_decoders.{i}.weight"] = (r, r)
    for path in plan.modules_to_save:
        module = model.get_submodule(path)
        module = module.original_module if isinstance(module, ModulesToSaveWrapper) else module
        for key, tensor in module.state_dict(keep_vars=True).items():
            shapes[f"{FILE_KEY_PREFIX}{path}.{key}"] = tensor_shape(tensor)
    return shapes


def check_adapter_tensors(
    tensors: dict[str, torch.Tensor] | dict[str, list[int]], expected: dict[str, tuple[int, ...]], model_name: str
) -> None:
    """Raise `AdapterMismatchError` unless `tensors` (tensors, or shapes read from a file header) has exactly the
    `expected` keys and shapes."""
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise AdapterMismatchError(
            f"The adapter holds {len(unexpected)} tensors with no place in {model_name}, e.g. {unexpected[:3]}: "
            "it was made for a base model with other module names (or another target_modules)."
        )
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise AdapterMismatchError(f"The adapter file lacks {len(missing)} tensors {model_name} needs, e.g. {missing[:3]}.")
    for key, shape in expected.items():
        found = tensors[key]
        found = tuple(found.shape) if isinstance(found, torch.Tensor) else tuple(found)
        if found != tuple(shape):
            module, _, tensor_name = key[len(FILE_KEY_PREFIX):].partition(".peanut_")
            raise AdapterMismatchError(
                f"Shape mismatch for module {module!r} ({'peanut_' + tensor_name if tensor_name else key}): the adapter "
                f"has {list(found)} but {model_name} needs {list(shape)}. The adapter was made for a "
                "base model of other dimensions."
            )
