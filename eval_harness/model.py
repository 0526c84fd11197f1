"""`NeatLM`: lm-eval's `HFLM` with a NEAT adapter on the base model, registered as `--model neat`.

`HFLM` documents `_create_model` as the place for subclasses to change how the model is built (lm-eval's
`models/hf_steered.py` is another such subclass). We let `HFLM` load the base model with all its arguments, then load
the adapter with [`NeatModel.from_pretrained`] and, by default, merge it into the weights once: evaluation then runs
at base-model speed, whereas `--model hf --model_args peft=...` runs stock PEFT's PEANuT layers, which rebuild a dense
out×in update on every forward.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import huggingface_hub.constants
from huggingface_hub import HfApi
from lm_eval.api.registry import Registry, model_registry
from lm_eval.models.huggingface import HFLM

from neat_hf import NeatConfig, NeatModel, __version__
from neat_hf.errors import AdapterLoadError, NeatError, NeatModelArgsError
from neat_hf.quantization import bnb_config_from_kwargs

logger = logging.getLogger(__name__)

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")

#: HFLM arguments that would load something other than a plain base model for NEAT to wrap.
_REJECTED_ARGS = {
    "delta": "delta weights cannot be combined with a NEAT adapter; merge them into the base model first.",
    "autogptq": "NEAT needs the base model's full-precision nn.Linear weights; GPTQ models are not supported.",
    "gptqmodel": "NEAT needs the base model's full-precision nn.Linear weights; GPTQ models are not supported.",
}


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise NeatModelArgsError(f"{name} must be True or False, got {value!r}.")


def _hub_sha(repo_id: str, revision: str | None) -> str:
    """Commit sha of a Hub repo at `revision`; "" for a local folder, offline, or any Hub error (as HFLM does)."""
    if os.path.isdir(repo_id):
        return ""
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return ""
    try:
        return HfApi().model_info(repo_id=repo_id, revision=revision).sha or ""
    except Exception as err:  # noqa: BLE001 - best effort, exactly like HFLM.get_model_info
        logger.debug("Could not read the Hub sha of %s@%s: %s", repo_id, revision, err)
        return ""


def _check_merged_weights_finite(neat_model: NeatModel, adapter: str) -> None:
    """Refuse an adapter whose W0 + ΔW holds NaN/inf in the base's dtype, merged or not: the check `neat-hub merge`
    makes (`safe_merge`). Its tensors can all be finite (e.g. every weight 3e38) and still overflow on the base, and
    lm-eval would then score the broken model (as chance) instead of failing.

    Raises:
        AdapterLoadError: names the adapter and the first layer whose merged weight is not finite.
    """
    for path, layer in neat_model.neat_layers():
        if not layer.merged_weight_is_finite():
            raise AdapterLoadError(
                f"Adapter {adapter!r} gives NaN/inf in the merged weight of {path} (W0 + ΔW in "
                f"{layer.base_layer.weight.dtype}); it cannot be evaluated (neat-hub merge refuses it too)."
            )


def register_model_once(name: str, *, registry: Registry = model_registry) -> Callable[[type], type]:
    """lm-eval's `@register_model(name)`, tolerant of an entry-point placeholder for the decorated class itself.

    lm-eval's registry takes lazy placeholders, either a `"module:Class"` string or an `importlib.metadata.EntryPoint`.
    When lm-eval registers our `lm_eval.models` entry point as a placeholder and resolves it, importing this module
    runs this decorator while the placeholder is still in place; the registry (0.4.13) accepts that re-registration
    for a string placeholder but raises "already registered" for an `EntryPoint`, so an `EntryPoint` placeholder for
    this very class is left for lm-eval to replace with the class it loads.
    """

    def decorate(cls: type) -> type:
        current = dict(registry.items()).get(name)
        target = f"{cls.__module__}:{cls.__qualname__}"
        if current is not None and not isinstance(current, (str, type)) and getattr(current, "value", None) == target:
            return cls
        return registry.register(name)(cls)

    return decorate


@register_model_once("neat")
class NeatLM(HFLM):
    """lm-eval's Hugging Face backend (`HFLM`) with a NEAT adapter, registered as `--model neat`.

    Every `HFLM` argument passes through unchanged (`dtype`, `device`, `batch_size`, `max_length`,
    `trust_remote_code`, `parallelize`, `revision` of the base model, ...); the arguments below are added.

    Args:
        pretrained (`str`): the base model the adapter was trained on (Hub repo id or local folder).
        adapter (`str`): the NEAT adapter: a folder written by `NeatModel.save_pretrained` (or stock PEFT's PEANuT),
            or a Hub repo id. Required; `peft=` is accepted as its alias, so `--model hf` model_args work unchanged.
        adapter_revision (`str`, *optional*): branch, tag or commit of a Hub adapter (the latest by default).
        merge (`bool`, *optional*, defaults to `True`): merge the adapter into the weights once after loading, so
            evaluation runs at the base model's speed. `False` keeps the adapter as separate layers.
        load_in_4bit, load_in_8bit, bnb_4bit_quant_type, bnb_4bit_compute_dtype, bnb_4bit_use_double_quant
            (*optional*): load the base quantized with bitsandbytes, as the adapter was trained (lm-eval's own
            spelling for `--model hf`). Merging then returns the dequantized base plus ΔW in full precision
            (`NeatModel.merge_and_unload`); with `merge=False` the adapter runs on the quantized base.
        **kwargs: any `HFLM` argument.

    Raises:
        NeatModelArgsError: `adapter` missing (or given as `adapter=` and `peft=` with different values), a bad
            `merge` value, `pretrained` not a name or folder, or an `HFLM` argument that cannot be combined with an
            adapter (`delta`, `autogptq`, `gptqmodel`).
        AdapterLoadError: the adapter folder or repo, or one of its files, is missing or invalid (checked before the
            base model is loaded).
        AdapterMismatchError: the adapter was made for another base model (the message names module and shapes).
        AdapterLoadError: also when the adapter's merged weights hold NaN/inf (checked merged or not).

    Example:
        ```bash
        neat-lm-eval --model neat \\
            --model_args pretrained=meta-llama/Llama-2-7b-hf,adapter=./neat-out,dtype=bfloat16 \\
            --tasks neat_commonsense_gen --batch_size 16
        ```
    """

    def __init__(
        self,
        pretrained: str,
        adapter: str | None = None,
        adapter_revision: str | None = None,
        merge: bool | str = True,
        **kwargs: Any,
    ) -> None:
        # Validate everything cheap before HFLM spends minutes loading the base model.
        if not isinstance(pretrained, (str, os.PathLike)):
            raise NeatModelArgsError(
                f"NeatLM loads the base model itself, so `pretrained` must be a Hub repo id or a folder, got "
                f"{type(pretrained).__name__}. For a model already in memory, merge the adapter "
                "(NeatModel.merge_and_unload()) and pass the result to lm-eval's HFLM(pretrained=model)."
            )
        peft = kwargs.pop("peft", None)  # HFLM's name for the adapter (`--model hf --model_args peft=...`)
        if peft is not None and adapter is not None and str(peft).strip() != str(adapter).strip():
            raise NeatModelArgsError(
                f"adapter={adapter!r} and peft={peft!r} name two adapters; give the NEAT adapter once, as adapter=."
            )
        adapter = adapter if adapter is not None else peft
        if adapter is None or not str(adapter).strip():
            raise NeatModelArgsError(
                "The neat model needs an adapter: --model_args pretrained=<base model>,adapter=<adapter folder or "
                "Hub repo id> (or peft=<...>, as for --model hf)."
            )
        for key, why in _REJECTED_ARGS.items():
            if kwargs.get(key):
                raise NeatModelArgsError(f"{key}={kwargs[key]!r} is not supported by --model neat: {why}")
        self.adapter = str(adapter).strip()
        self.adapter_revision = None if adapter_revision is None else str(adapter_revision)
        self.merge = _as_bool(merge, "merge")
        try:  # bitsandbytes flags become a BitsAndBytesConfig (transformers 5 has no load_in_4bit= argument)
            self._bnb_config = bnb_config_from_kwargs(kwargs)
        except NeatError as err:
            raise NeatModelArgsError(str(err)) from err
        # Reading the config first fails fast on a wrong path, a missing file or a non-NEAT adapter.
        self.adapter_config = NeatConfig.from_pretrained(self.adapter, revision=self.adapter_revision)
        base = self.adapter_config.base_model_name_or_path
        if base and os.fspath(base) != os.fspath(pretrained):
            logger.info("Adapter %s was saved from base model %r; evaluating it on %r.", self.adapter, base, pretrained)
        super().__init__(pretrained=os.fspath(pretrained), **kwargs)

    def _create_model(self, pretrained: str, **kwargs: Any) -> None:
        """Load the base model as `HFLM` does, then the NEAT adapter on top (merged unless `merge=False`)."""
        if self._bnb_config is not None:
            kwargs["quantization_config"] = self._bnb_config
            if not kwargs.get("parallelize") and kwargs.get("device_map") is None:
                kwargs["device_map"] = {"": str(self.device)}  # bitsandbytes places weights while loading
        super()._create_model(pretrained, **kwargs)
        base_model = self._model
        vocab_size = base_model.get_input_embeddings().num_embeddings
        if len(self.tokenizer) > vocab_size:
            # As HFLM does for PEFT adapters trained with added tokens (it also shrinks; growing is all that is needed).
            logger.info("Tokenizer has %d tokens, embeddings %d: resizing.", len(self.tokenizer), vocab_size)
            base_model.resize_token_embeddings(len(self.tokenizer))
        neat_model = NeatModel.from_pretrained(base_model, self.adapter, revision=self.adapter_revision)
        _check_merged_weights_finite(neat_model, self.adapter)
        if self.merge:
            self._model = neat_model.merge_and_unload()
            logger.info("Merged NEAT adapter %s into %s.", self.adapter, pretrained)
        else:
            self._model = neat_model
            logger.info("Loaded NEAT adapter %s on %s (not merged).", self.adapter, pretrained)

    def get_model_info(self) -> dict[str, Any]:
        """`HFLM`'s model info plus the adapter: path or repo, revision, Hub sha, whether it was merged, its shape."""
        info = super().get_model_info()
        config = self.adapter_config
        info.update(
            {
                "adapter": self.adapter,
                "adapter_revision": self.adapter_revision,
                "adapter_sha": _hub_sha(self.adapter, self.adapter_revision),
                "adapter_merged": self.merge,
                "adapter_config": {
                    "peft_type": "PEANUT",
                    "r": config.r,
                    "depth": config.depth,
                    "act_fn": config.act_fn,
                    "scaling": config.scaling,
                    "target_modules": config.target_modules,
                    "base_model_name_or_path": config.base_model_name_or_path,
                },
                "neat_hf_version": __version__,
            }
        )
        return info

