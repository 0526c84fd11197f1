"""`NeatConfig`: the hyperparameters of a NEAT adapter, stored as PEFT's PEANUT `adapter_config.json`.

Field names follow `peft.PeanutConfig` (peft >= 0.19) so that stock PEFT reads our files and we read theirs. The only
neat-only field, `dropout`, changes how an adapter is *trained* but never what a saved adapter *computes*; stock PEFT
warns about keys it does not know, so `dropout` is stored in `training_info.json` next to the config (see
`NEAT_ONLY_FIELDS`), and [`read_adapter_config`] reads it back from there. A setting stock PEFT cannot represent (`act_fn="sin"`) is rejected by PEFT's own
config check, so such an adapter fails loudly there rather than loading with different behaviour.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import InitVar, dataclass, field
from collections.abc import Mapping
from typing import Any

from peft import PeanutConfig
from peft.config import PeftConfigMixin
from peft.utils import PeftType

from neat_hf.activations import available_activations, is_peft_compatible_activation
from neat_hf.constants import ADAPTER_CONFIG_NAME, PEFT_TYPE, TASK_TYPES, TRAINING_INFO_NAME
from neat_hf.errors import AdapterLoadError, NeatError
from neat_hf.io import atomic_write_text, read_json_file
from neat_hf.hub.download import fetch_companion_file, resolve_adapter_file
from neat_hf.peft_patch import apply_neat_to_peft
from neat_hf.training_info import current_training_info, load_training_info, save_training_info

logger = logging.getLogger(__name__)

# Keys PEFT writes into adapter_config.json that neat-hf does not use but must tolerate when reading.
_IGNORED_PEFT_KEYS = frozenset({"peft_version", "auto_mapping_dict"})
#: neat-hf fields that stock PEFT does not know. They stay out of adapter_config.json (PEFT would warn "Unexpected
#: keyword arguments") and live in training_info.json beside it, where [`read_adapter_config`] finds them.
NEAT_ONLY_FIELDS = ("dropout",)

# Upper bounds that make loading an untrusted adapter_config.json cheap to refuse. Everything a loader allocates
# (the expected tensor list, the adapter itself) grows with these, so they are checked before anything else. They are
# far above any published NEAT/PEANuT setting (paper: r <= 64, depth <= 3).
#: Largest accepted rank `r`.
MAX_R = 16384
#: Largest accepted `depth` (hidden r x r layers per side).
MAX_DEPTH = 64
#: Largest adapter_config.json read (bytes); PEFT's own files are about 1 KB.
MAX_CONFIG_BYTES = 1 << 20
#: Longest accepted string value (a module name, a regex, a model id).
MAX_STRING_CHARS = 4096
#: Most entries accepted in a list field (target_modules, modules_to_save, layers_to_transform, ...).
MAX_LIST_ITEMS = 4096


@dataclass
class NeatConfig(PeanutConfig):
    """Configuration of a NEAT adapter: PEFT's `PeanutConfig`, with neat-hf's checks and one training-only setting.

    A `peft.PeftConfig`, so TRL (`peft_config=`), Axolotl and `peft.get_peft_model` take it as they take PEFT's own;
    creating one makes PEFT build neat-hf's factored layers for PEANuT (`neat_hf.peft_patch.apply_neat_to_peft`).

    NEAT adapts a frozen linear weight W0 (out×in) with a small network of the weight itself:
    H = σ(W0ᵀAᵀ) (in×r), then `depth` encoder and `depth` decoder r×r layers with residuals, and
    y = W0x + scaling·(xH)Bᵀ with B zero-initialised, so a new adapter starts as a no-op.

    Args:
        r (`int`, defaults to `32`):
            Rank: the hidden width of the weight network. ΔW has rank ≤ r. Larger `r` adds capacity and parameters.
        target_modules (`list[str]` or `str`, *optional*):
            Modules to adapt: a list of names (exact module path, or a path suffix after a dot) or a regex matched
            against the full module path. `None` picks the preset for the model's `model_type` (LLaMA/Mistral/Qwen2/
            Gemma: q,k,v,up,down as in the paper; BERT/RoBERTa/ViT: query,value; GPT-2: c_attn).
        exclude_modules (`list[str]` or `str`, *optional*):
            Modules never to adapt, matched like `target_modules`.
        depth (`int`, defaults to `0`):
            Hidden r×r layers per side: `depth` encoders then `depth` decoders, each decoder adding back the input of
            its mirrored encoder. The paper's "depth D" (all layers, A and B included) is D = 2 + 2·depth.
        act_fn (`str`, defaults to `"relu"`):
            σ: any key of `transformers.activations.ACT2FN`, or `"sin"` for sin(2πx) (paper §5; neat-hf only).
            `activation=` is accepted as an alias in the constructor.
        scaling (`float`, defaults to `1.0`):
            Multiplier s of the adapter output.
        dropout (`float`, defaults to `0.0`):
            Dropout on the adapter's input during training (like LoRA's `lora_dropout`). Training-only, so stock PEFT,
            which ignores this key, computes the same function at inference.
        modules_to_save (`list[str]`, *optional*):
            Extra modules (e.g. a classification head) that are trained in full and saved with the adapter.
        layers_to_transform (`int` or `list[int]`, *optional*):
            Only adapt these layer indices of the block list (found through `layers_pattern`).
        layers_pattern (`str` or `list[str]`, *optional*):
            Name of the `nn.ModuleList` holding the blocks (`"layers"`, `"h"`, …); only with `layers_to_transform`.
        init_weights (`bool`, defaults to `True`):
            `True`: B = 0 (no-op start), the rest kaiming-uniform. `False`: B kaiming-uniform too (for tests).
        task_type (`str`, *optional*):
            PEFT task type, e.g. `"CAUSAL_LM"` or `"SEQ_CLS"`. `"SEQ_CLS"` makes the classifier head trainable when
            `modules_to_save` is not given, as in PEFT.
        base_model_name_or_path (`str`, *optional*):
            The base model the adapter was made for (filled in by `get_neat_model` from the model's config).
        revision (`str`, *optional*):
            Revision of the base model.
        inference_mode (`bool`, defaults to `False`):
            Written as `True` by `save_pretrained`, as PEFT does.

    Example:

    ```python
    >>> from neat_hf import NeatConfig
    >>> config = NeatConfig(r=8, target_modules=["q_proj", "v_proj"], depth=1, act_fn="gelu")
    ```
    """

    r: int = field(default=32, metadata={"help": "Rank r: hidden width of the weight network (ΔW has rank ≤ r)."})
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module names (exact or dotted suffix) or a regex; None = preset for the model_type."},
    )
    exclude_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Module names or a regex never to adapt."}
    )
    depth: int = field(default=0, metadata={"help": "Hidden r×r layers per side (encoders = decoders = depth)."})
    act_fn: str = field(
        default="relu", metadata={"help": "Activation σ: a key of transformers' ACT2FN, or 'sin' for sin(2πx)."}
    )
    scaling: float = field(default=1.0, metadata={"help": "Multiplier s of the adapter output."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter input (training only)."})
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Extra modules (e.g. a classifier head) trained in full and saved."}
    )
    layers_to_transform: list[int] | int | None = field(
        default=None, metadata={"help": "Only adapt these block indices."}
    )
    layers_pattern: list[str] | str | None = field(
        default=None, metadata={"help": "Name of the block ModuleList (with layers_to_transform)."}
    )
    init_weights: bool = field(default=True, metadata={"help": "True: B=0 (no-op start); False: B random (tests)."})
    task_type: str | None = field(default=None, metadata={"help": "PEFT task type, e.g. CAUSAL_LM or SEQ_CLS."})
    base_model_name_or_path: str | None = field(default=None, metadata={"help": "Base model the adapter is for."})
    revision: str | None = field(default=None, metadata={"help": "Revision of the base model."})
    inference_mode: bool = field(default=False, metadata={"help": "Whether the adapter is frozen (set on save)."})
    auto_mapping: dict[str, Any] | None = field(
        default=None, metadata={"help": "Base model class information, as written by PEFT."}
    )
    peft_type: str = field(default=PEFT_TYPE, metadata={"help": "Always 'PEANUT' (PEFT's name for NEAT)."})
    activation: InitVar[str | None] = None

    def __post_init__(self, activation: str | None) -> None:
        if activation is not None:
            if self.act_fn not in ("relu", activation):
                raise NeatError(
                    f"NeatConfig got act_fn={self.act_fn!r} and activation={activation!r}; they are aliases, "
                    "set it in only one place."
                )
            self.act_fn = activation
        self._validate()
        # Then PEFT's common part (peft_version); not PeanutConfig's own checks, which turn lists into sets and refuse
        # act_fn="sin" (neat-hf computes it; `is_peft_compatible` says stock PEFT cannot).
        PeftConfigMixin.__post_init__(self)
        apply_neat_to_peft()

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        if self.peft_type != PEFT_TYPE:
            raise NeatError(f"peft_type must be {PEFT_TYPE!r} for a NEAT adapter, got {self.peft_type!r}.")
        self.peft_type = PeftType.PEANUT
        _check_int(self.r, "r", minimum=1, maximum=MAX_R, rule="a positive integer (e.g. 8, 16, 32)")
        _check_int(self.depth, "depth", minimum=0, maximum=MAX_DEPTH, rule="a non-negative integer (0 = A and B only)")
        if not isinstance(self.act_fn, str) or self.act_fn not in available_activations():
            raise NeatError(f"Unknown act_fn {short_repr(self.act_fn)}. Must be one of {available_activations()}.")
        if isinstance(self.scaling, bool) or not isinstance(self.scaling, (int, float)) or not math.isfinite(self.scaling):
            raise NeatError(f"scaling must be a finite float, got {type(self.scaling).__name__} {self.scaling!r}.")
        self.scaling = float(self.scaling)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise NeatError(f"dropout must be a float in [0, 1), got {self.dropout!r}.")
        self.dropout = float(self.dropout)
        self.target_modules = _names_or_regex(self.target_modules, "target_modules")
        self.exclude_modules = _names_or_regex(self.exclude_modules, "exclude_modules")
        self.modules_to_save = _names_or_regex(self.modules_to_save, "modules_to_save", allow_regex=False)
        self.layers_pattern = _names_or_regex(self.layers_pattern, "layers_pattern")
        self.layers_to_transform = _layer_indices(self.layers_to_transform)
        if self.layers_pattern is not None and self.layers_to_transform is None:
            raise NeatError("layers_pattern is only used with layers_to_transform; set layers_to_transform too.")
        for name in ("init_weights", "inference_mode"):
            if not isinstance(getattr(self, name), bool):
                raise NeatError(f"{name} must be a bool, got {short_repr(getattr(self, name))}.")
        if self.task_type is not None and self.task_type not in TASK_TYPES:
            raise NeatError(f"task_type must be one of {sorted(TASK_TYPES)} or None (PEFT's task types), got {short_repr(self.task_type)}.")
        for name in ("task_type", "base_model_name_or_path", "revision"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise NeatError(f"{name} must be a string or null, got {type(value).__name__} {short_repr(value)}.")
            _check_sizes(value, name)
        if self.auto_mapping is not None and not isinstance(self.auto_mapping, dict):
            raise NeatError(f"auto_mapping must be an object or null, got {short_repr(self.auto_mapping)}.")
        for name in ("auto_mapping", "target_modules", "exclude_modules", "modules_to_save", "layers_pattern"):
            _check_sizes(getattr(self, name), name)

    @property
    def is_peft_compatible(self) -> bool:
        """Whether stock PEFT can compute this adapter (False for act_fn='sin')."""
        return is_peft_compatible_activation(self.act_fn)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """The JSON-serialisable dict written to adapter_config.json: PEFT's PEANUT fields only, so that stock PEFT
        loads it without a warning (the neat-only fields are in [`neat_only_settings`])."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in NEAT_ONLY_FIELDS}

    def neat_only_settings(self) -> dict[str, Any]:
        """The neat-only fields (`NEAT_ONLY_FIELDS`) that differ from their defaults, as stored in training_info.json."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        return {name: getattr(self, name) for name in NEAT_ONLY_FIELDS if getattr(self, name) != defaults[name]}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config dict") -> NeatConfig:
        """Build a config from an adapter_config.json dict, checking every field's type.

        Raises:
            AdapterLoadError: naming `source`, the bad field and what would be accepted.
        """
        if not isinstance(data, dict):
            raise AdapterLoadError(f"{source} must hold a JSON object, got {type(data).__name__}.")
        if data.get("peft_type") != PEFT_TYPE:
            raise AdapterLoadError(
                f"{source} has peft_type={data.get('peft_type')!r}; neat-hf loads NEAT adapters, whose peft_type "
                f"is {PEFT_TYPE!r} (PEFT's PEANuT)."
            )
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        unknown = sorted(set(data) - known - _IGNORED_PEFT_KEYS)
        if unknown:
            logger.warning("Ignoring unknown keys in %s: %s", source, unknown)
        try:
            return cls(**kwargs)
        except (NeatError, TypeError, ValueError) as err:
            raise AdapterLoadError(f"Invalid {source}: {err}") from err

    def to_json_string(self) -> str:
        """The exact text `save_pretrained` writes to adapter_config.json."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Write adapter_config.json into `save_directory` atomically (and the neat-only settings into
        training_info.json). `PeftModel.save_pretrained`'s extra arguments (`auto_mapping_dict`, ...) are accepted and
        not written: stock PEFT loads the file without them."""
        os.makedirs(save_directory, exist_ok=True)
        store_neat_only_settings(save_directory, self.neat_only_settings())
        atomic_write_text(os.path.join(save_directory, ADAPTER_CONFIG_NAME), self.to_json_string())

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike,
        *,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | None = None,
        local_files_only: bool | None = None,
    ) -> NeatConfig:
        """Read adapter_config.json from a local folder or a Hub repo (through huggingface_hub's cache)."""
        hub = dict(revision=revision, token=token, cache_dir=cache_dir, local_files_only=local_files_only)
        path = resolve_adapter_file(path_or_repo_id, ADAPTER_CONFIG_NAME, **hub)
        fetch_companion_file(path_or_repo_id, TRAINING_INFO_NAME, **hub)  # the neat-only settings live there
        return read_adapter_config(path)


def read_adapter_config(path: str | os.PathLike, *, training_info: Mapping[str, Any] | None = None) -> NeatConfig:
    """Parse and validate an adapter_config.json file (JSON only), with the neat-only settings (dropout) of the
    training record next to it: `training_info` when the caller has read it already, else read here.

    Raises:
        AdapterLoadError: the file is not UTF-8 JSON, or a field is invalid (named).
    """
    data = read_json_file(path, max_bytes=MAX_CONFIG_BYTES, what="an adapter config (about 1 KB)")
    if isinstance(data, dict):
        if training_info is None:
            settings = _stored_neat_only_settings(os.path.dirname(os.fspath(path)))
        else:
            settings = _neat_only_settings(training_info)
        data = {**settings, **data}
    return NeatConfig.from_dict(data, source=os.fspath(path))


def _stored_neat_only_settings(directory: str) -> dict[str, Any]:
    """The neat-only fields stored in `directory/training_info.json` (none when it is missing or unreadable)."""
    try:
        info = load_training_info(directory) or {}
    except AdapterLoadError as err:
        logger.warning("Ignoring neat-only adapter settings: %s", err)
        return {}
    return _neat_only_settings(info)


def _neat_only_settings(info: Mapping[str, Any]) -> dict[str, Any]:
    """The neat-only fields (dropout) of a training record."""
    return {name: info[name] for name in NEAT_ONLY_FIELDS if name in info}


def with_neat_only_settings(info: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    """`info` (a training_info dict) with its neat-only fields replaced by `settings` (the non-default ones)."""
    updated = {key: value for key, value in info.items() if key not in NEAT_ONLY_FIELDS}
    updated.update(settings)
    return updated


def store_neat_only_settings(directory: str | os.PathLike, settings: dict[str, Any]) -> None:
    """Record `settings` in `directory/training_info.json`, after the adapter weights are saved there and before their
    config. An existing record is kept (its neat-only fields replaced) when it describes these weights, dropped when
    it describes others (`neat_hf.training_info.current_training_info`); without a record and settings nothing is
    written."""
    try:
        info = current_training_info(directory)
    except AdapterLoadError:
        info = {}
    if not settings and not os.path.exists(os.path.join(directory, TRAINING_INFO_NAME)):
        return
    save_training_info(directory, with_neat_only_settings(info, settings))


def _check_int(value: Any, name: str, *, minimum: int, rule: str, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise NeatError(f"{name} must be {rule}, got {short_repr(value)}.")
    if maximum is not None and value > maximum:
        raise NeatError(f"{name} must be at most {maximum} (neat_hf.config.MAX_{name.upper()}), got {value}.")


def short_repr(value: Any) -> str:
    """repr of `value`, cut to a readable length (hostile configs may hold megabytes)."""
    text = repr(value)
    return text if len(text) <= 200 else f"{text[:200]}… ({len(text):,d} characters)"


def _check_sizes(value: Any, name: str) -> None:
    """Refuse strings longer than MAX_STRING_CHARS and lists/dicts with more than MAX_LIST_ITEMS entries (nested)."""
    if isinstance(value, str):
        if len(value) > MAX_STRING_CHARS:
            raise NeatError(f"{name} holds a string of {len(value):,d} characters; at most {MAX_STRING_CHARS} are accepted.")
    elif isinstance(value, (list, tuple, dict)):
        if len(value) > MAX_LIST_ITEMS:
            raise NeatError(f"{name} has {len(value):,d} entries; at most {MAX_LIST_ITEMS} are accepted.")
        for item in value.items() if isinstance(value, dict) else value:
            _check_sizes(item, name)


def _names_or_regex(
    value: Any, name: str, *, allow_regex: bool = True
) -> list[str] | str | None:
    if value is None:
        return None
    if isinstance(value, str):
        if allow_regex:
            return value
        return [value]
    if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value):
        items = sorted(value) if isinstance(value, (set, frozenset)) else list(value)
        return list(dict.fromkeys(items))
    accepted = "a list of module names" + (" or a regex string" if allow_regex else "")
    raise NeatError(f"{name} must be {accepted}, got {type(value).__name__} {short_repr(value)}.")


def _layer_indices(value: Any) -> list[int] | None:
    if value is None:
        return None
    values = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(values, (list, tuple)) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values
    ):
        raise NeatError(f"layers_to_transform must be a non-negative int or a list of them, got {short_repr(value)}.")
    if len(values) > MAX_LIST_ITEMS:
        raise NeatError(f"layers_to_transform has {len(values):,d} entries; at most {MAX_LIST_ITEMS} are accepted.")
    return list(values)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    return value


# `activation` is a constructor alias (an InitVar, so it is not a field and is never serialised); reading it back
# returns the one stored value, `act_fn`.
NeatConfig.activation = property(lambda self: self.act_fn, doc="Alias of `act_fn`.")  # type: ignore[assignment]
