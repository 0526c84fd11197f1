"""Merge a NEAT adapter into its base model and save a plain transformers checkpoint (`neat-hub merge`).

The base model class comes from the adapter: its `task_type` picks a transformers auto class (`CAUSAL_LM` ->
`AutoModelForCausalLM`, `SEQ_CLS` -> `AutoModelForSequenceClassification`, `TOKEN_CLS`, `QUESTION_ANS`,
`SEQ_2_SEQ_LM`, `FEATURE_EXTRACTION` -> `AutoModel`); without one, PEFT's `auto_mapping.base_model_class` names the
transformers class the adapter was saved from (e.g. `ViTForImageClassification`); otherwise `AutoModel`. Pass
`auto_class=` (`--auto-class`) to override. Only classes exported by `transformers` are accepted, the base is loaded
with `use_safetensors=True` and `trust_remote_code=False`, and the merged model is written as safetensors.

When the adapter trains a classification head (`modules_to_save`), the head's size in the adapter file sets
`num_labels`, so a base checkpoint saved with another label count still loads.

Named `export_merged` (not `merge_adapter`) because `NeatModel.merge_adapter()` is the in-place, reversible merge;
this writes a new checkpoint and leaves the adapter files untouched.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers.models.auto.auto_factory import _BaseAutoModelClass
from safetensors import safe_open
from transformers import AutoConfig, AutoTokenizer

from neat_hf.config import read_adapter_config
from neat_hf.constants import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, FILE_KEY_PREFIX
from neat_hf.errors import AdapterLoadError, AdapterMismatchError, NeatError
from neat_hf.io import remove_stale_staging, staging_directory
from neat_hf.hub.download import resolve_adapter_file
from neat_hf.hub.error_translation import loading_errors
from neat_hf.model import NeatModel
from neat_hf.quantization import bnb_config_from_kwargs
from neat_hf.task_types import model_class_for

from neat_hf.cards.merged_card import write_merged_model_card

logger = logging.getLogger(__name__)

_HEAD_CLASS_SUFFIXES = ("ForSequenceClassification", "ForImageClassification", "ForTokenClassification")
_DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_model_class(adapter_config: dict[str, Any], auto_class: str | None = None) -> type:
    """The transformers class to load the base model with (see the module docstring).

    Raises:
        NeatError: `auto_class` is not a class exported by transformers.
    """
    name = auto_class or model_class_for(adapter_config)
    cls = getattr(transformers, name, None) if isinstance(name, str) and name.isidentifier() else None
    # Only model classes: a tokenizer, config or processor class also has `from_pretrained`, and loading one as the
    # base would fail much later with an AttributeError.
    if not isinstance(cls, type) or not issubclass(cls, (transformers.PreTrainedModel, _BaseAutoModelClass)):
        raise NeatError(
            f"{name!r} is not a transformers model class; pass an auto class such as 'AutoModelForCausalLM', "
            "'AutoModelForSequenceClassification' or a class like 'ViTForImageClassification'."
        )
    return cls


@dataclass(frozen=True)
class AdapterLoadPlan:
    """How to load the base an adapter was trained on: its config, weights file, transformers class and kwargs."""

    config: dict[str, Any]
    weights_path: str
    model_class: type
    load_kwargs: dict[str, Any]


def adapter_load_plan(
    base: str | os.PathLike,
    adapter: str | os.PathLike,
    *,
    auto_class: str | None = None,
    adapter_revision: str | None = None,
    base_revision: str | None = None,
    token: str | bool | None = None,
) -> AdapterLoadPlan:
    """Read `adapter`'s config, pick the class to load `base` with (and the kwargs a trained head needs), and refuse a
    base of another architecture before it is loaded. Shared by `neat-hub merge` and `neat-hub export-lora`.

    Raises:
        AdapterLoadError: the adapter cannot be read.
        AdapterMismatchError: `base` is of another architecture than the class the adapter was saved from.
        NeatError: bad `auto_class`, or `base`'s config cannot be loaded (`HubError` when the Hub failed).
    """
    hub = {"revision": adapter_revision, "token": token}
    config = read_adapter_config(resolve_adapter_file(adapter, ADAPTER_CONFIG_NAME, **hub)).to_dict()
    weights_path = resolve_adapter_file(adapter, ADAPTER_WEIGHTS_NAME, **hub)
    cls = resolve_model_class(config, auto_class)
    with loading_errors("the config of base model", base, revision=base_revision):
        base_config = AutoConfig.from_pretrained(os.fspath(base), trust_remote_code=False, revision=base_revision, token=token)
    _check_model_type(base, adapter, cls, base_config)
    load_kwargs: dict[str, Any] = _head_kwargs(config, weights_path, cls.__name__)
    if load_kwargs:
        _check_head_size(load_kwargs["num_labels"], weights_path)
        load_kwargs["ignore_mismatched_sizes"] = True
    return AdapterLoadPlan(config, weights_path, cls, load_kwargs)


#: Most classes a trained head may claim (ImageNet-21k has 21,843): the base is built with a head of that size before
#: any adapter tensor is read, so the claim is bounded before anything is allocated.
MAX_NUM_LABELS = 100_000


def _check_head_size(num_labels: int, weights_path: str) -> None:
    """Refuse a head (modules_to_save) whose class count would make the base's new head huge, before the base is
    built with it (8,000,000 classes took > 3 GB within seconds). Its width is checked against the base's layers by
    the adapter loader, as every other tensor is."""
    if num_labels > MAX_NUM_LABELS:
        raise AdapterLoadError(
            f"Adapter weights {weights_path!r} hold a classification head with {num_labels:,d} classes; at most "
            f"{MAX_NUM_LABELS:,d} are accepted (the base would be built with a head that size). This is not a head "
            "neat-hf trained."
        )


def _check_model_type(base: str | os.PathLike, adapter: str | os.PathLike, cls: type, base_config: Any) -> None:
    """Refuse a base of another architecture than the class the adapter was saved from, before loading it (a LLaMA
    class built from a GPT-2 config would fall back to LLaMA's default, 7B-sized dimensions)."""
    expected = getattr(getattr(cls, "config_class", None), "model_type", None)
    if not expected:  # an Auto class: it follows the base's own config
        return
    model_type = base_config.model_type
    if model_type != expected:
        raise AdapterMismatchError(
            f"Adapter {os.fspath(adapter)!r} was saved from {cls.__name__} ({expected} models) but {os.fspath(base)!r} "
            f"is a {model_type!r} model: the adapter does not fit it. Pass the base it was trained on."
        )


def _head_kwargs(adapter_config: dict[str, Any], weights_path: str, cls_name: str) -> dict[str, Any]:
    """`num_labels` from a trained classification head stored in the adapter file (modules_to_save)."""
    heads = adapter_config.get("modules_to_save") or []
    if not heads or not (
        adapter_config.get("task_type") in ("SEQ_CLS", "TOKEN_CLS") or cls_name.endswith(_HEAD_CLASS_SUFFIXES)
    ):
        return {}
    with safe_open(weights_path, framework="pt") as handle:
        for key in handle.keys():
            module = key[len(FILE_KEY_PREFIX) :].rsplit(".", 1)[0] if key.startswith(FILE_KEY_PREFIX) else ""
            if key.endswith(".weight") and any(module == h or module.endswith(f".{h}") for h in heads):
                shape = handle.get_slice(key).get_shape()
                if len(shape) == 2:
                    return {"num_labels": int(shape[0])}
    return {}


def export_merged(
    base: str | os.PathLike,
    adapter: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    adapter_revision: str | None = None,
    base_revision: str | None = None,
    token: str | bool | None = None,
    dtype: str = "auto",
    auto_class: str | None = None,
    safe_merge: bool = True,
    overwrite: bool = False,
    repo_id: str | None = None,
    quantization: dict[str, Any] | None = None,
) -> Path:
    """Load `base`, apply the NEAT `adapter`, merge it into the weights and save the plain model to `out_dir`.

    Args:
        base (`str` or `os.PathLike`):
            Base model folder or Hub id.
        adapter (`str` or `os.PathLike`):
            Adapter folder or Hub repo id.
        out_dir (`str` or `os.PathLike`):
            Where to write the merged model (safetensors + config + tokenizer when the base has one + README.md).
            Must not exist or be empty unless `overwrite=True`; written to a temporary sibling folder first.
        adapter_revision, base_revision (`str`, *optional*):
            Hub revisions of the adapter and of the base.
        token (`str` or `bool`, *optional*):
            Hub token (defaults to HF_TOKEN / login cache).
        dtype (`str`, *optional*, defaults to `"auto"`):
            dtype to load (and save) the base in: `auto` (the checkpoint's), `float32`, `bfloat16`, `float16`.
        auto_class (`str`, *optional*):
            transformers class to load the base with, overriding the choice from the adapter.
        safe_merge (`bool`, *optional*, defaults to `True`):
            Check every merged weight for NaN/inf before writing any.
        overwrite (`bool`, *optional*, defaults to `False`):
            Replace a non-empty `out_dir`.
        repo_id (`str`, *optional*):
            Hub repo the merged model will be pushed to, for the card's snippet.
        quantization (`dict`, *optional*):
            Load the base quantized, as the adapter was trained: bitsandbytes flags such as
            `{"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}` (`neat_hf.quantization.BNB_FLAGS`). The merged model
            is then the dequantized base plus ΔW, in full precision (`dtype`), i.e. exactly what the adapter computed
            on the quantized base (`NeatModel.merge_and_unload`).

    Returns:
        `pathlib.Path` of `out_dir`.

    Raises:
        NeatError: bad `dtype` / `auto_class`, non-empty `out_dir`, a base that cannot be loaded.
        AdapterLoadError / AdapterMismatchError: the adapter cannot be read or does not fit the base.
        HubError: the Hub failed while loading the base.
    """
    if dtype not in _DTYPES:
        raise NeatError(f"dtype must be one of {list(_DTYPES)}, got {dtype!r}.")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise NeatError(
            f"Output folder {os.fspath(out)!r} exists and is not empty; pick another or pass overwrite=True (neat-hub merge --overwrite)."
        )

    plan = adapter_load_plan(
        base, adapter, auto_class=auto_class, adapter_revision=adapter_revision, base_revision=base_revision, token=token
    )
    config_dict, weights_path, cls, load_kwargs = plan.config, plan.weights_path, plan.model_class, plan.load_kwargs
    bnb_config = bnb_config_from_kwargs(dict(quantization or {}))
    if bnb_config is not None:  # bitsandbytes places the weights while loading: on the GPU if there is one
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
        load_kwargs.update(quantization_config=bnb_config, device_map={"": device})
    logger.info("Loading base %s with %s%s", os.fspath(base), cls.__name__, f" {load_kwargs}" if load_kwargs else "")
    with loading_errors("base model", base, revision=base_revision):
        base_model = cls.from_pretrained(
            os.fspath(base),
            revision=base_revision,
            token=token,
            dtype=dtype,
            use_safetensors=True,
            trust_remote_code=False,
            **load_kwargs,
        )
    model = NeatModel.from_pretrained(base_model, adapter, revision=adapter_revision, token=token)
    merged = model.merge_and_unload(safe_merge=safe_merge)

    # Staged, then swapped into place (kill-safety: io.staging_directory; io.remove_stale_staging clears leftovers).
    remove_stale_staging(out)
    if out.exists() and not out.is_dir():
        out.unlink()
    with staging_directory(out) as tmp:
        merged.save_pretrained(tmp)
        _save_tokenizer(base, tmp, base_revision, token)
        write_merged_model_card(
            tmp, config_dict, weights_path, base=base, repo_id=repo_id, model_name=repo_id or out.name
        )
        pickles = [p.name for p in tmp.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
        if pickles:  # transformers writes safetensors only; refuse to ship anything else
            raise NeatError(f"Merged model save produced pickle files {pickles}; refusing to keep them.")
    return out


def _save_tokenizer(base: str | os.PathLike, out: Path, revision: str | None, token: Any) -> None:
    """Copy the base model's tokenizer next to the merged weights, when it has one (serving needs it)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            os.fspath(base), revision=revision, token=token, trust_remote_code=False
        )
    except Exception as err:  # no tokenizer (e.g. a vision model) or one we cannot load without remote code
        logger.info("No tokenizer saved with the merged model (%s).", type(err).__name__)
        return
    tokenizer.save_pretrained(out)
