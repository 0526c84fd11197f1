"""`NeatModel` and `get_neat_model`: inject NEAT into a transformers model, train, save, load, merge.

`NeatModel` is a `peft.PeftModel` (`get_neat_model` is `get_peft_model`, for NEAT), so users switch with a rename and
tools that know PEFT take it as it is. Files are PEFT's PEANUT format: stock `peft` >= 0.19 loads what we save, and
we load what it saves.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import CommitInfo
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer, set_adapter
from peft.utils import ModulesToSaveWrapper
from torch import nn
from tqdm.auto import tqdm

from neat_hf.adapter_names import check_adapter_name
from neat_hf.cards.adapter_card import write_model_card
from neat_hf.config import NeatConfig, store_neat_only_settings
from neat_hf.constants import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    DEFAULT_ADAPTER_NAME,
    FILE_KEY_PREFIX,
)
from neat_hf.parallel.dtensor import copy_into, full_tensor, is_dtensor
from neat_hf.errors import AdapterMismatchError, NeatError, UnsupportedQuantizationError
from neat_hf.hub.commit import PUSH_OPTIONS, check_repo_id, push_adapter_folder
from neat_hf.io import (
    CONFIG_SHA_KEY,
    WEIGHTS_SHA_KEY,
    atomic_save_safetensors,
    atomic_write_text,
    folder_lock,
    remove_stale_temporaries,
    tensors_sha256,
    text_sha256,
)
from neat_hf.layer import NeatLayer
from neat_hf.loading import check_adapter_tensors, check_adapter_values, checked_config, read_checked_adapter, tensor_shape
from neat_hf.export.lora import save_as_lora
from neat_hf.mixed_batch import adapter_names_hooks
from neat_hf.peft_patch import apply_neat_to_peft
from neat_hf.quantization import (
    dequantize_model,
    dequantize_weight,
    requantize_layer,
)

logger = logging.getLogger(__name__)


class NeatModel(PeftModel):
    """A `peft.PeftModel` whose PEANuT adapters are neat-hf's factored NEAT layers, with neat-hf's checks on top.

    Built on PEFT's machinery (`PeftModel` holding a `neat_hf.tuner.NeatTuner`, PEFT's `BaseTuner`):
    target matching, `modules_to_save`, forward, generate, parameter counts and the Trainer/TRL/Accelerate integrations
    are PEFT's, so every tool that checks `isinstance(model, peft.PeftModel)` takes it. What neat-hf adds: a config is
    checked against the model before anything changes (bounded target regexes, neat-hf's per-architecture presets,
    one-line errors), loading is bounded and checked (shapes from the file header, NaN/inf, whole-or-refused folders),
    saving is atomic with a model card, merging works on bitsandbytes bases, and the LoRA export.

    Use [`get_neat_model`] to create one and [`NeatModel.from_pretrained`] to load a saved adapter.

    Args:
        model (`nn.Module`): the base model; its targets are replaced in place and its own weights frozen.
        config ([`NeatConfig`]): the adapter configuration (copied; the caller's object is not changed).
        adapter_name (`str`, *optional*, defaults to `"default"`): name of the adapter.
        autocast_adapter_dtype (`bool`, *optional*, defaults to `True`): keep adapter weights in fp32 when the base is
            fp16/bf16, as PEFT does.
        low_cpu_mem_usage (`bool`, *optional*, defaults to `False`): PEFT's option (adapter weights on the meta device
            until loaded).
    """

    def __init__(
        self,
        model: nn.Module,
        config: NeatConfig,
        adapter_name: str = DEFAULT_ADAPTER_NAME,
        *,
        autocast_adapter_dtype: bool = True,
        low_cpu_mem_usage: bool = False,
        _config_checked: bool = False,
    ) -> None:
        if any(isinstance(m, (BaseTunerLayer, ModulesToSaveWrapper)) for m in model.modules()):
            raise NeatError(
                f"This {type(model).__name__} already holds adapter layers (it was passed to get_neat_model, "
                "NeatModel.from_pretrained or get_peft_model before). Add adapters through that model (add_adapter / "
                "load_adapter), or start from a fresh base model."
            )
        check_adapter_name(adapter_name)
        if not _config_checked:  # from_pretrained checked it (with the file) already: once per load
            config, _ = checked_config(model, config)
        apply_neat_to_peft()
        with warnings.catch_warnings():
            # PEFT 0.21 reads `model.is_gradient_checkpointing`, which transformers 5 deprecated: not the user's doing.
            warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)
            super().__init__(model, config, adapter_name, autocast_adapter_dtype=autocast_adapter_dtype, low_cpu_mem_usage=low_cpu_mem_usage)
        if not autocast_adapter_dtype:
            self._cast_adapter_to_base_dtype(adapter_name)
        self._sync_active_adapter()

    def forward(self, *args: Any, adapter_names: list[str] | None = None, **kwargs: Any) -> Any:
        """`PeftModel.forward`; `adapter_names` (one adapter name per batch row, `"__base__"` for none) serves several
        adapters in one batch without merging (inference only; `neat_hf.mixed_batch`), one name per row exactly."""
        with adapter_names_hooks(self.get_base_model(), adapter_names, self.peft_config):
            return self.get_base_model()(*args, **kwargs)

    def generate(self, *args: Any, adapter_names: list[str] | None = None, **kwargs: Any) -> Any:
        """`PeftModel.generate`; `adapter_names` as in [`forward`], each name repeated for the rows `generate`
        expands a prompt into (beams, `num_return_sequences`)."""
        with adapter_names_hooks(self.get_base_model(), adapter_names, self.peft_config, expand=True):
            return self.get_base_model().generate(*args, **kwargs)

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None, **kwargs: Any) -> None:
        """Enable activation (gradient) checkpointing on the base model, and input gradients so that checkpointed
        blocks see a grad-requiring input although the embeddings are frozen (what PEFT's `prepare_model_for_*` does).
        """
        base = self.get_base_model()
        if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5
            base.activation_checkpointing_enable(activation_checkpointing_kwargs, **kwargs)
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=activation_checkpointing_kwargs, **kwargs)
        if hasattr(base, "enable_input_require_grads") and not getattr(base, "_require_grads_hooks", None):
            base.enable_input_require_grads()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, **kwargs: Any) -> None:
        """transformers 4.x name of [`activation_checkpointing_enable`]."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    # ------------------------------------------------------------------ adapters
    def neat_layers(self) -> Iterator[tuple[str, NeatLayer]]:
        """(path relative to the transformers model, layer) for every NEAT layer."""
        for name, module in self.get_base_model().named_modules():
            if isinstance(module, NeatLayer):
                yield name, module

    def saved_modules(self) -> Iterator[tuple[str, ModulesToSaveWrapper]]:
        """(path relative to the transformers model, PEFT's wrapper) for every `modules_to_save` module."""
        for name, module in self.get_base_model().named_modules():
            if isinstance(module, ModulesToSaveWrapper):
                yield name, module

    def add_adapter(
        self,
        adapter_name: str,
        peft_config: NeatConfig,
        low_cpu_mem_usage: bool = False,
        autocast_adapter_dtype: bool = True,
    ) -> None:
        """Inject a new adapter (PEFT's `add_adapter`). It is not made active (see [`set_adapter`]) and stays frozen
        until it is. The config is checked against the model first, so a refused call leaves the model unchanged.

        Raises:
            NoTargetModulesError, UnsupportedModuleError, NeatError: see `neat_hf.targets.plan_injection`.
        """
        check_adapter_name(adapter_name)
        if adapter_name in self.peft_config:
            raise NeatError(f"An adapter named {adapter_name!r} already exists; pick another name or delete it first.")
        config, _ = checked_config(self.get_base_model(), peft_config)
        self._add_checked_adapter(adapter_name, config, low_cpu_mem_usage, autocast_adapter_dtype)

    def _add_checked_adapter(
        self, adapter_name: str, config: NeatConfig, low_cpu_mem_usage: bool = False, autocast_adapter_dtype: bool = True
    ) -> None:
        super().add_adapter(adapter_name, config, low_cpu_mem_usage=low_cpu_mem_usage, autocast_adapter_dtype=autocast_adapter_dtype)
        if not autocast_adapter_dtype:
            self._cast_adapter_to_base_dtype(adapter_name)
        self._sync_active_adapter()

    def _cast_adapter_to_base_dtype(self, adapter_name: str) -> None:
        """autocast_adapter_dtype=False: the adapter in its base layer's (floating) dtype, as PEFT leaves it."""
        for _, layer in self.neat_layers():
            dtype = layer.base_layer.weight.dtype
            if adapter_name in layer.peanut_A and dtype.is_floating_point:
                for attr in NeatLayer.adapter_layer_names:
                    getattr(layer, attr)[adapter_name].to(dtype)

    def _sync_active_adapter(self, inference_mode: bool | None = None) -> None:
        """Point every NEAT layer and `modules_to_save` wrapper at the active adapter and make exactly that adapter
        trainable, unless it was loaded for inference (its config's `inference_mode`) or `inference_mode` says so.
        Base weights are left as they are."""
        active = self.active_adapter
        frozen = self.peft_config[active].inference_mode if inference_mode is None else inference_mode
        set_adapter(self.get_base_model(), active, inference_mode=frozen, layer_cls=NeatLayer)

    def set_adapter(self, adapter_name: str, inference_mode: bool = False) -> None:
        """Make `adapter_name` the active adapter, and the only trainable one unless it was loaded for inference or
        `inference_mode=True`."""
        if adapter_name not in self.peft_config:
            raise NeatError(f"Unknown adapter {adapter_name!r}; adapters: {sorted(self.peft_config)}.")
        if any(layer.merged for _, layer in self.neat_layers()):
            raise NeatError("Unmerge the adapter (unmerge_adapter()) before switching the active adapter.")
        self.active_adapter = self.base_model.active_adapter = adapter_name  # PeftModel's and its tuner's record
        self._sync_active_adapter(inference_mode or self.peft_config[adapter_name].inference_mode)

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove a non-active adapter."""
        if adapter_name not in self.peft_config:
            raise NeatError(f"Unknown adapter {adapter_name!r}; adapters: {sorted(self.peft_config)}.")
        if adapter_name == self.active_adapter:
            raise NeatError(f"{adapter_name!r} is the active adapter; set_adapter() another one before deleting it.")
        active = self.active_adapter
        super().delete_adapter(adapter_name)
        self.active_adapter = self.base_model.active_adapter = active
        self._sync_active_adapter()

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Context manager: run the plain base model inside the block (a merged adapter is unmerged, then merged
        back). Which adapter trains is as before when the block ends (PEFT's re-enabling would unfreeze an adapter
        loaded for inference)."""
        was_merged = any(layer.merged for _, layer in self.neat_layers())
        if was_merged:
            self.unmerge_adapter()
        self.base_model.disable_adapter_layers()
        try:
            yield
        finally:
            self.base_model.enable_adapter_layers()
            self._sync_active_adapter()
            if was_merged:
                self.merge_adapter()

    # ------------------------------------------------------------------ merge / unload
    def merge_adapter(self, adapter_names: list[str] | None = None, *, safe_merge: bool = False) -> None:
        """Merge the active adapter into the base weights (reversible with [`unmerge_adapter`]).

        With `safe_merge=True` every merged weight is checked (in the base dtype) before any is written.
        """
        self._check_mergeable(adapter_names)
        if any(layer.quantized for _, layer in self.neat_layers()):
            raise UnsupportedQuantizationError(
                "merge_adapter() cannot merge into a bitsandbytes-quantized base in place (the sum would be rounded to "
                "the 4/8-bit grid and could not be unmerged exactly); use merge_and_unload(), which returns a "
                "full-precision model, or merge_and_unload(requantize=True) to keep the base quantized."
            )
        layers = [layer for _, layer in self.neat_layers() if not layer.merged]
        if not layers:
            warnings.warn(f"Adapter {self.active_adapter!r} is already merged; nothing to do.", stacklevel=2)
            return
        if safe_merge:
            self._check_finite_merge(layers)
        for layer in layers:
            layer.merge()

    def unmerge_adapter(self) -> None:
        """Restore the original base weights exactly."""
        for _, layer in self.neat_layers():
            if layer.merged:
                layer.unmerge()

    def merge_and_unload(
        self,
        progressbar: bool = False,
        safe_merge: bool = False,
        adapter_names: list[str] | None = None,
        *,
        requantize: bool = False,
    ) -> nn.Module:
        """Merge the active adapter into the weights and return the plain base model (NEAT layers removed, trained
        `modules_to_save` copies in place). Not in-place for the wrapper: use the returned model.

        With `safe_merge=True` every merged weight is checked for NaN/inf (in the base dtype) before anything is written.

        On a bitsandbytes 4-bit/8-bit base, every quantized layer is dequantized (bitsandbytes' own functions) into an
        `nn.Linear` in the model's dtype and ΔW is added to it: the returned model is full precision, drops its
        `quantization_config` and computes what the adapted model computed (up to rounding in that dtype). With
        `requantize=True` the adapted layers are quantized again instead (PEFT's bitsandbytes LoRA merge), which keeps
        the memory footprint but rounds W0 + ΔW to the 4/8-bit grid (README, "Quantized base models", measures it).
        """
        self._check_mergeable(adapter_names)
        if requantize:
            return self._unload_requantized(progressbar=progressbar, safe_merge=safe_merge)
        if any(layer.quantized for _, layer in self.neat_layers()):
            if safe_merge:  # checked on the quantized layers before any of them is replaced
                self._check_finite_merge([layer for _, layer in self.neat_layers() if not layer.merged])
            dequantize_model(self.get_base_model())
        return self._unload(merge=True, progressbar=progressbar, safe_merge=safe_merge)

    @torch.no_grad()
    def _unload_requantized(self, *, progressbar: bool, safe_merge: bool) -> nn.Module:
        """merge_and_unload(requantize=True): W0 + ΔW quantized back into each bitsandbytes layer."""
        layers = [(path, layer) for path, layer in self.neat_layers() if layer.quantized]
        if not layers:
            raise UnsupportedQuantizationError("requantize=True needs a bitsandbytes-quantized base; this one is not.")
        if safe_merge:
            self._check_finite_merge([layer for _, layer in self.neat_layers() if not layer.quantized and not layer.merged])
        merged = {}
        for path, layer in layers:  # all computed (and checked) before any layer changes
            weight = dequantize_weight(layer.base_layer, torch.float32) + layer.delta_weight(layer.active_adapter).float()
            if safe_merge and not torch.isfinite(weight).all():
                raise NeatError(f"NaN or inf in the merged weight of {path!r}; nothing was merged.")
            merged[path] = weight
        for path, layer in layers:
            requantize_layer(layer.base_layer, merged.pop(path))
            parent, child = self._parent(path)
            setattr(parent, child, layer.base_layer)
        return self._unload(merge=True, progressbar=progressbar, safe_merge=safe_merge)

    def unload(self) -> nn.Module:
        """Return the base model with NEAT removed and nothing merged (original `modules_to_save` modules back)."""
        return self._unload(merge=False)

    def _check_mergeable(self, adapter_names: list[str] | None) -> None:
        if adapter_names is not None and list(adapter_names) != [self.active_adapter]:
            raise NeatError(
                f"neat-hf merges the active adapter ({self.active_adapter!r}) only, got adapter_names={adapter_names}; "
                "call set_adapter(name) first."
            )
        if any(layer.disable_adapters for _, layer in self.neat_layers()):
            raise NeatError("Cannot merge inside `with model.disable_adapter():`; merge after the block.")

    @staticmethod
    def _check_finite_merge(layers: list[NeatLayer]) -> None:
        for layer in layers:  # all checked before any weight changes
            if layer.active_adapter in layer.peanut_A and not layer.merged_weight_is_finite():
                raise NeatError(
                    f"NaN or inf in the merged weight of a {type(layer.base_layer).__name__} "
                    f"(adapter {layer.active_adapter!r}); nothing was merged."
                )

    def _unload(self, *, merge: bool, progressbar: bool = False, safe_merge: bool = False) -> nn.Module:
        layers = list(self.neat_layers())
        if merge and safe_merge:
            self._check_finite_merge([layer for _, layer in layers if not layer.merged])
        for path, layer in tqdm(layers, disable=not progressbar, desc="Unloading and merging" if merge else "Unloading"):
            if merge and not layer.merged:
                layer.merge(keep_original=False)
            elif not merge and layer.merged:
                layer.unmerge()
            parent, child = self._parent(path)
            setattr(parent, child, layer.base_layer)
        for path, wrapper in list(self.saved_modules()):
            parent, child = self._parent(path)
            trained = wrapper.modules_to_save[self.active_adapter] if self.active_adapter in wrapper.modules_to_save else None
            setattr(parent, child, trained if merge and trained is not None else wrapper.original_module)
        return self.get_base_model()

    def _parent(self, path: str) -> tuple[nn.Module, str]:
        """(parent module, attribute name) of the module at `path` in the transformers model."""
        parent_path, _, child = path.rpartition(".")
        base = self.get_base_model()
        return (base.get_submodule(parent_path) if parent_path else base), child

    # ------------------------------------------------------------------ serialisation
    def adapter_key_map(self, adapter_name: str) -> dict[str, str]:
        """{key in this module's state_dict: key in adapter_model.safetensors} for one adapter."""
        mapping = {}
        for path, layer in self.neat_layers():
            for attr in NeatLayer.adapter_layer_names:
                container = getattr(layer, attr)
                if adapter_name not in container:
                    continue
                for pname, _ in container[adapter_name].named_parameters():
                    mapping[f"{FILE_KEY_PREFIX}{path}.{attr}.{adapter_name}.{pname}"] = f"{FILE_KEY_PREFIX}{path}.{attr}.{pname}"
        for path, wrapper in self.saved_modules():
            if adapter_name in wrapper.modules_to_save:
                for key in wrapper.modules_to_save[adapter_name].state_dict():
                    mapping[f"{FILE_KEY_PREFIX}{path}.modules_to_save.{adapter_name}.{key}"] = f"{FILE_KEY_PREFIX}{path}.{key}"
        return mapping

    def get_adapter_state_dict(
        self, state_dict: dict[str, torch.Tensor] | None = None, adapter_name: str | None = None
    ) -> dict[str, torch.Tensor]:
        """The adapter's tensors under PEFT's file keys.

        Args:
            state_dict (`dict`, *optional*): a full state dict of this model to take the tensors from (e.g. one that
                DeepSpeed ZeRO-3 consolidated); defaults to `self.state_dict()`.
            adapter_name (`str`, *optional*): defaults to the active adapter.
        """
        adapter_name = adapter_name or self.active_adapter
        state_dict = self.state_dict() if state_dict is None else state_dict
        mapping = self.adapter_key_map(adapter_name)
        missing = [k for k in mapping if k not in state_dict]
        if missing:
            raise NeatError(f"state_dict lacks {len(missing)} adapter tensors, e.g. {missing[:3]}.")
        return {file_key: state_dict[key] for key, file_key in mapping.items()}

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        state_dict: dict[str, torch.Tensor] | None = None,
        is_main_process: bool = True,
        safe_serialization: bool = True,
        selected_adapters: list[str] | None = None,
        model_card: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Write adapter_config.json and adapter_model.safetensors (PEFT PEANUT format) into `save_directory`.

        Adapters other than "default" go to a sub-folder of their name, as in PEFT. Files are written atomically. The
        active adapter's folder also gets a model card (README.md, see `neat_hf.cards.adapter_card`).

        Args:
            state_dict (`dict`, *optional*): full state dict to take the tensors from (the Trainer passes one under
                DeepSpeed ZeRO-3).
            is_main_process (`bool`, *optional*, defaults to `True`): only the main process writes.
            safe_serialization (`bool`, *optional*, defaults to `True`): must stay True; only safetensors is written.
            model_card (`dict`, *optional*): what the card says beyond the saved files (`repo_id`, `training_info`,
                `eval_results`, `tags`, ...: `neat_hf.cards.write_model_card`'s arguments). The card is written once
                per save, here; `NeatTrainer` passes everything its run has gathered (`neat_hf.cards.CardFacts`).
        """
        if not safe_serialization:
            raise NeatError("neat-hf writes safetensors only; drop safe_serialization=False.")
        if os.path.isfile(save_directory):
            raise NeatError(f"save_directory {os.fspath(save_directory)!r} is a file; pass a folder.")
        if kwargs.pop("push_to_hub", False):
            raise NeatError("save_pretrained(push_to_hub=True) is not supported: call model.push_to_hub(repo_id).")
        # Accepted for drop-in compatibility with PeftModel.save_pretrained; an adapter is one small file.
        unknown = [kw for kw in kwargs if kw not in ("max_shard_size", "token", "save_embedding_layers")]
        if unknown:
            raise TypeError(f"save_pretrained() got unexpected keyword arguments {unknown}.")
        if state_dict is None and any(is_dtensor(p) for p in self.parameters()):
            # FSDP2: gather the adapter tensors (only those) on every rank, before non-main processes return.
            state_dict = {key: full_tensor(tensor).detach().cpu() for key, tensor in self._adapter_tensors().items()}
        if not is_main_process:
            return
        names = list(self.peft_config) if selected_adapters is None else list(selected_adapters)
        bad = [n for n in names if n not in self.peft_config]
        if bad:
            raise NeatError(f"Unknown adapters {bad}; adapters: {sorted(self.peft_config)}.")
        for name in names:
            directory = os.fspath(save_directory) if name == DEFAULT_ADAPTER_NAME else os.path.join(save_directory, name)
            tensors = self.get_adapter_state_dict(state_dict, name)
            os.makedirs(directory, exist_ok=True)
            with folder_lock(directory):  # one save into a folder at a time: never two saves' files mixed
                remove_stale_temporaries(directory)
                # Weights first, carrying the digests of their config and of themselves; then the card and
                # training_info.json (stamped with the weights' digest); the config last. A save killed anywhere in
                # between leaves a folder that loading refuses (`neat_hf.io.check_saved_together`), never one that
                # loads as a mix of two saves.
                config = self.config_for_saving(name)
                config_text = config.to_json_string()
                metadata = {CONFIG_SHA_KEY: text_sha256(config_text), WEIGHTS_SHA_KEY: tensors_sha256(tensors)}
                atomic_save_safetensors(tensors, os.path.join(directory, ADAPTER_WEIGHTS_NAME), metadata=metadata)
                if name == self.active_adapter:
                    # Like PEFT, a saved adapter carries its model card (README.md); kept up to date on each save.
                    # The neat-only settings (dropout) go into training_info.json, which stock PEFT does not read.
                    write_model_card(directory, model=self, config=config, **dict(model_card or {}))
                else:
                    store_neat_only_settings(directory, config.neat_only_settings())
                atomic_write_text(os.path.join(directory, ADAPTER_CONFIG_NAME), config_text)

    def _adapter_tensors(self) -> dict[str, torch.Tensor]:
        """{state_dict key: tensor} of every adapter, in the same (sorted) order on every rank."""
        state = self.state_dict(keep_vars=True)
        keys = sorted({key for name in self.peft_config for key in self.adapter_key_map(name)})
        return {key: state[key] for key in keys}

    def config_for_saving(self, adapter_name: str) -> NeatConfig:
        """The config `save_pretrained` writes for `adapter_name`: a copy in inference mode, naming the base model's
        class when it has no task type (PEFT's `auto_mapping`)."""
        config = copy.deepcopy(self.peft_config[adapter_name])
        config.inference_mode = True
        if config.task_type is None and config.auto_mapping is None:
            cls = type(self.get_base_model())
            config.auto_mapping = {"base_model_class": cls.__name__, "parent_library": cls.__module__}
        return config

    def load_adapter_weights(
        self, tensors: dict[str, torch.Tensor], adapter_name: str | None = None, *, check_finite: bool = True
    ) -> None:
        """Copy adapter tensors keyed like adapter_model.safetensors into this model, after checking all of them.

        Raises:
            AdapterMismatchError: a tensor has no place in the model, is missing, or has another shape (the message
                names the module and both shapes); nothing is copied then.
            AdapterLoadError: a tensor is not floating point, or holds NaN/inf (unless `check_finite=False`).
        """
        adapter_name = adapter_name or self.active_adapter
        targets = self._adapter_targets(adapter_name)
        check_adapter_tensors(tensors, {fk: tensor_shape(p) for fk, p in targets.items()}, type(self.get_base_model()).__name__)
        integer = {fk for fk, p in targets.items() if not p.is_floating_point()}
        check_adapter_values(tensors, exempt_keys=integer, check_finite=check_finite)
        self._copy_adapter_weights(tensors, adapter_name, targets)

    def _adapter_targets(self, adapter_name: str) -> dict[str, torch.Tensor]:
        """{key in adapter_model.safetensors: this model's parameter or buffer it loads into} for one adapter."""
        params = dict(self.state_dict(keep_vars=True))
        return {file_key: params[key] for key, file_key in self.adapter_key_map(adapter_name).items()}

    def _copy_adapter_weights(
        self, tensors: dict[str, torch.Tensor], adapter_name: str, targets: dict[str, torch.Tensor] | None = None
    ) -> None:
        """Copy tensors that were checked against this model (names, shapes, values): by `load_adapter_weights`, or by
        `neat_hf.loading.read_checked_adapter` with the file."""
        targets = self._adapter_targets(adapter_name) if targets is None else targets
        with torch.no_grad():
            for file_key, tensor in tensors.items():
                copy_into(targets[file_key].data, tensor)  # under FSDP2: this rank's rows

    @classmethod
    def from_pretrained(
        cls,
        model: nn.Module,
        model_id: str | os.PathLike,
        adapter_name: str = DEFAULT_ADAPTER_NAME,
        is_trainable: bool = False,
        *,
        revision: str | None = None,
        subfolder: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | None = None,
        local_files_only: bool | None = None,
        autocast_adapter_dtype: bool = True,
        check_finite: bool = True,
    ) -> NeatModel:
        """Load a NEAT/PEANuT adapter (neat-hf's or stock PEFT's) from a folder or a Hub repo onto `model`.

        Config and tensors are read and checked against the base model before the base model is touched, so a
        mismatched adapter raises and leaves `model` unchanged.

        Args:
            model (`nn.Module`): the base model the adapter was trained on.
            model_id (`str` or `os.PathLike`): a local folder or a Hub repo id.
            adapter_name (`str`, *optional*, defaults to `"default"`)
            is_trainable (`bool`, *optional*, defaults to `False`): keep adapter weights trainable (to resume
                training); otherwise they are frozen and the model is put in eval mode, as in PEFT.
            revision, subfolder, token, cache_dir, local_files_only: where the files are (a branch, tag or commit
                and a folder inside the repo or directory); passed to `huggingface_hub.hf_hub_download`.
            check_finite (`bool`, *optional*, defaults to `True`): refuse tensors holding NaN or inf. Set `False`
                only to inspect a broken adapter (for debugging); such a model computes NaN.

        Raises:
            AdapterLoadError: missing or corrupt files, invalid or out-of-range adapter_config.json, non-float or
                non-finite tensors, weights and config from two different saves.
            AdapterMismatchError: the adapter does not fit `model`.
        """
        hub = dict(revision=revision, subfolder=subfolder, token=token, cache_dir=cache_dir, local_files_only=local_files_only)
        config, tensors = read_checked_adapter(model, model_id, is_trainable, hub, check_finite=check_finite)
        neat_model = cls(model, config, adapter_name, autocast_adapter_dtype=autocast_adapter_dtype, _config_checked=True)
        neat_model._copy_adapter_weights(tensors, adapter_name)
        if not is_trainable:
            neat_model.eval()
        return neat_model

    def load_adapter(
        self,
        model_id: str | os.PathLike,
        adapter_name: str,
        is_trainable: bool = False,
        *,
        revision: str | None = None,
        subfolder: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | None = None,
        local_files_only: bool | None = None,
        check_finite: bool = True,
    ) -> None:
        """Load one more saved adapter into this model under `adapter_name` (not made active: see [`set_adapter`]).

        Checked against the model before anything is added, like [`from_pretrained`].
        """
        check_adapter_name(adapter_name)
        hub = dict(revision=revision, subfolder=subfolder, token=token, cache_dir=cache_dir, local_files_only=local_files_only)
        if adapter_name in self.peft_config:
            # PEFT's (and the Trainer's resume path's) meaning: new weights for an existing adapter. The file is
            # checked against that adapter's own tensors (names, shapes, values) before anything is copied.
            config, tensors = read_checked_adapter(self.get_base_model(), model_id, is_trainable, hub, check_finite=check_finite)
            current = self.peft_config[adapter_name]
            differs = [f for f in ("r", "depth", "act_fn", "scaling", "target_modules") if getattr(config, f) != getattr(current, f)]
            if differs:
                raise AdapterMismatchError(
                    f"{os.fspath(model_id)!r} holds another adapter than {adapter_name!r} (different {differs}); load it "
                    "under a new adapter_name."
                )
            self._copy_adapter_weights(tensors, adapter_name)  # the same names and shapes: checked with the file
            return
        config, tensors = read_checked_adapter(self.get_base_model(), model_id, is_trainable, hub, check_finite=check_finite)
        self._add_checked_adapter(adapter_name, config)
        self._copy_adapter_weights(tensors, adapter_name)

    def save_as_lora(
        self,
        save_directory: str | os.PathLike,
        adapter_name: str | None = None,
        dtype: str | torch.dtype | None = None,
        **kwargs: Any,
    ) -> Path:
        """Write the adapter as an exact, standard PEFT LoRA adapter folder, for LoRA-only servers (vLLM, SGLang, TGI).

        NEAT's ΔW = s·B·Hᵀ has rank ≤ r for a fixed base, so lora_B = B, lora_A = s·Hᵀ, lora_alpha = r reproduce it
        exactly on *this* base; see `neat_hf.export.lora.save_as_lora` for the keyword options (`server`,
        `base_model`, `revision`, `exported_from`, `repo_id`).

        Args:
            save_directory (`str` or `os.PathLike`): the folder (adapter_config.json, adapter_model.safetensors,
                README.md, training_info.json), written atomically.
            adapter_name (`str`, *optional*): defaults to the active adapter.
            dtype (`str` or `torch.dtype`, *optional*): dtype the base will be served in; H is computed from the base
                weights rounded to it (fp32 accumulation). Defaults to the base's current dtype.
        """
        return save_as_lora(self, save_directory, adapter_name, dtype, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> CommitInfo:
        """Push the adapter(s) and the model card to the Hub in one commit.

        The model is saved with [`save_pretrained`] into a temporary folder, its card naming `repo_id` (written once),
        and that folder is pushed by `neat_hf.hub.push_adapter_folder`: `adapter_config.json`,
        `adapter_model.safetensors` (PEFT PEANUT format: stock `peft` loads it), `README.md`, `training_info.json`;
        non-default adapters in sub-folders, as `save_pretrained` writes them. Base model weights are never uploaded.

        Args:
            repo_id (`str`): `"namespace/name"`, or `"name"` for your own namespace. Created if missing.
            kwargs: `private`, `token`, `revision`, `commit_message`, `commit_description`, `create_pr`,
                `delete_conflicting` (see `push_adapter_folder`); `training_info`, `eval_results` and the card's
                `base_model`, `datasets`, `license`, `language`, `pipeline_tag`, `tags`, `model_name` (see
                `neat_hf.cards.write_model_card`).

        Returns:
            `huggingface_hub.CommitInfo` of the commit (with `pr_url` when `create_pr=True`).

        Raises:
            HubError: the repo, revision or permissions are wrong (message names which).
            NeatError: invalid card inputs, or the token would end up in an uploaded file or the commit message.

        Example:

        ```python
        >>> model.push_to_hub("my-user/llama-neat-r8", training_info={"dataset": "yahma/alpaca-cleaned"})
        ```
        """
        check_repo_id(repo_id)
        push = {k: kwargs.pop(k) for k in PUSH_OPTIONS if k in kwargs}
        with tempfile.TemporaryDirectory(prefix="neat-save-") as folder:

            def save(full_id: str) -> None:
                self.save_pretrained(folder, model_card={**kwargs, "repo_id": full_id})

            return push_adapter_folder(folder, repo_id, save=save, **push)


def get_neat_model(
    model: nn.Module,
    config: NeatConfig,
    adapter_name: str = DEFAULT_ADAPTER_NAME,
    *,
    autocast_adapter_dtype: bool = True,
) -> NeatModel:
    """Wrap `model` with a NEAT adapter described by `config` (PEFT's `get_peft_model`, for NEAT).

    The base model's layers matched by `config.target_modules` are replaced in place by NEAT layers and all base
    weights are frozen; only adapter weights and `modules_to_save` train. Everything is checked first, so an error
    leaves `model` unchanged.

    Example:

    ```python
    >>> from transformers import AutoModelForCausalLM
    >>> from neat_hf import NeatConfig, get_neat_model
    >>> model = get_neat_model(AutoModelForCausalLM.from_pretrained("meta-llama/Llama-2-7b-hf"), NeatConfig(r=32))
    >>> model.print_trainable_parameters()
    ```
    """
    return NeatModel(model, config, adapter_name, autocast_adapter_dtype=autocast_adapter_dtype)
