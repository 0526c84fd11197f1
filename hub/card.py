"""Model cards for NEAT adapters: `ModelCardData` + `EvalResult` rendered through `ModelCard.from_template`.

The card's YAML says `library_name: peft` and `base_model: <id>`, which is how the Hub lists the repo as an adapter of
its base; tags are `neat`, `peanut`, `peft` and `base_model:adapter:<id>`. The body explains NEAT in two sentences,
lists the NEAT hyperparameters and parameter count, the training setup (when known), how to load the adapter with
neat-hf and with stock PEFT, evaluation results (also written as `model-index`) and framework versions.

Everything a card shows comes from files in the adapter folder, so `neat-hub card ADAPTER_DIR` can rebuild it at any
time:

* `adapter_config.json` and `adapter_model.safetensors` (hyperparameters; parameter count from the safetensors header),
* `training_info.json` (optional, [`TRAINING_INFO_NAME`]): a flat JSON object written by NeatTrainer or by
  [`save_training_info`] with the training setup. Known keys (all optional): `dataset`, `num_train_epochs`,
  `max_steps`, `global_step`, `learning_rate`, `learning_rates` (`{group: lr}`), `effective_batch_size`,
  `per_device_train_batch_size`, `gradient_accumulation_steps`, `world_size`, `lr_scheduler_type`, `warmup_ratio`,
  `warmup_steps`, `weight_decay`, `optim`, `max_seq_length`, `precision`, `seed`, `deepspeed_stage`, `hardware`,
  `train_runtime`, `train_loss`, `base_model_quantization` (`{setting: value}` of a bitsandbytes 4-/8-bit base,
  written from the live model); other scalar keys are shown as they are. Three keys feed the card without a row:
  `base_model_parameters` (for the trainable share), `framework_versions` (`{package: version}` of the training run,
  shown instead of the current environment's) and `license`. Keys that look like credentials (`*token*`, `*secret*`,
  `*password*`, `*api_key*`) and values that look like Hub tokens are dropped, never written.
* the existing `README.md`, whose `model-index` is kept when the card is rebuilt without new evaluation results.

Tokens never reach a card: nothing here reads one, and training info is scrubbed as above.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from neat_hf.constants import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, MODEL_CARD_NAME
from neat_hf.errors import AdapterLoadError, NeatError
from neat_hf.quantization import quantization_settings

if TYPE_CHECKING:
    from neat_hf.config import NeatConfig

logger = logging.getLogger(__name__)

TRAINING_INFO_NAME = "training_info.json"
TEMPLATE_PATH = Path(__file__).parent / "templates" / "adapter_card.md"
NEAT_TAGS = ("neat", "peanut", "peft")
LM_EVAL_URL = "https://github.com/EleutherAI/lm-evaluation-harness"

#: PEFT task_type -> Hub pipeline_tag.
TASK_TYPE_TO_PIPELINE_TAG = {
    "CAUSAL_LM": "text-generation",
    "SEQ_2_SEQ_LM": "text2text-generation",
    "SEQ_CLS": "text-classification",
    "TOKEN_CLS": "token-classification",
    "QUESTION_ANS": "question-answering",
    "FEATURE_EXTRACTION": "feature-extraction",
}
#: transformers class-name suffix -> Hub pipeline_tag (for adapters saved without task_type, e.g. ViT classifiers).
_CLASS_SUFFIX_TO_PIPELINE_TAG = (
    ("ForCausalLM", "text-generation"),
    ("ForConditionalGeneration", "text2text-generation"),
    ("ForSequenceClassification", "text-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForImageClassification", "image-classification"),
    ("ForMaskedLM", "fill-mask"),
)
#: PEFT task_type -> transformers auto class used in the card's snippet and by `neat-hub merge`.
TASK_TYPE_TO_AUTO_CLASS = {
    "CAUSAL_LM": "AutoModelForCausalLM",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
    "FEATURE_EXTRACTION": "AutoModel",
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")
_SECRET_KEY = re.compile(r"(^|_)(token|secret|password|passwd|api_?key|auth)($|_)", re.IGNORECASE)
_TOKEN_VALUE = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")
_INTERNAL_KEYS = {"base_model_parameters", "framework_versions", "license"}

# (key, label) of the training-setup table, in display order.
_TRAINING_ROWS = (
    ("dataset", "dataset"),
    ("num_train_epochs", "epochs"),
    ("max_steps", "max steps"),
    ("global_step", "optimizer steps"),
    ("learning_rate", "learning rate"),
    ("learning_rates", "learning rates"),
    ("effective_batch_size", "effective batch size"),
    ("per_device_train_batch_size", "batch size per device"),
    ("gradient_accumulation_steps", "gradient accumulation steps"),
    ("world_size", "processes"),
    ("lr_scheduler_type", "LR schedule"),
    ("warmup_ratio", "warmup ratio"),
    ("warmup_steps", "warmup steps"),
    ("weight_decay", "weight decay"),
    ("optim", "optimizer"),
    ("max_seq_length", "max sequence length"),
    ("precision", "precision"),
    ("seed", "seed"),
    ("deepspeed_stage", "DeepSpeed"),
    ("hardware", "hardware"),
    ("train_runtime", "training time"),
    ("train_loss", "final training loss"),
)


# ---------------------------------------------------------------------------------------------------- training info
def sanitize_training_info(info: Mapping[str, Any]) -> dict[str, Any]:
    """Check that `info` is a flat JSON object and drop anything that looks like a credential.

    Values may be JSON scalars, lists of scalars, or objects of scalars (e.g. `learning_rates`).

    Raises:
        NeatError: `info` is not a mapping, a key is not a string, or a value is of another type (named).
    """
    if not isinstance(info, Mapping):
        raise NeatError(f"training_info must be a mapping of setting -> value, got {type(info).__name__}.")
    clean: dict[str, Any] = {}
    for key, value in info.items():
        if not isinstance(key, str):
            raise NeatError(f"training_info keys must be strings, got {key!r}.")
        if _SECRET_KEY.search(key):
            logger.warning("Dropped training_info key %r: it looks like a credential and is never written.", key)
            continue
        value = _check_info_value(key, value)
        if _contains_token(value):
            logger.warning("Dropped training_info key %r: its value looks like a Hub token.", key)
            continue
        clean[key] = value
    return clean


def _check_info_value(key: str, value: Any) -> Any:
    def scalar(v: Any) -> bool:
        return v is None or isinstance(v, (bool, int, float, str))

    if scalar(value):
        return value
    if isinstance(value, (list, tuple)) and all(scalar(v) for v in value):
        return list(value)
    if isinstance(value, Mapping) and all(isinstance(k, str) and scalar(v) for k, v in value.items()):
        return dict(value)
    raise NeatError(
        f"training_info[{key!r}] must be a JSON scalar, a list of scalars or an object of scalars, "
        f"got {type(value).__name__} {value!r:.80}."
    )


def _contains_token(value: Any) -> bool:
    if isinstance(value, str):
        return bool(_TOKEN_VALUE.search(value))
    if isinstance(value, list):
        return any(_contains_token(v) for v in value)
    if isinstance(value, dict):
        return any(_contains_token(v) for v in value.values())
    return False


def load_training_info(directory: str | os.PathLike) -> dict[str, Any] | None:
    """Read `training_info.json` from an adapter folder; None if there is none.

    Raises:
        AdapterLoadError: the file exists but is not a valid JSON object.
    """
    path = Path(directory) / TRAINING_INFO_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise AdapterLoadError(f"{os.fspath(path)!r} is not valid JSON: {err}") from err
    try:
        return sanitize_training_info(data)
    except NeatError as err:
        raise AdapterLoadError(f"Invalid {os.fspath(path)!r}: {err}") from err


def save_training_info(directory: str | os.PathLike, info: Mapping[str, Any]) -> Path:
    """Write `info` (scrubbed by [`sanitize_training_info`]) to `directory/training_info.json` atomically."""
    from neat_hf.io import atomic_write_text

    clean = sanitize_training_info(info)
    os.makedirs(directory, exist_ok=True)
    path = Path(directory) / TRAINING_INFO_NAME
    atomic_write_text(path, json.dumps(clean, indent=2, sort_keys=True) + "\n")
    return path


# ---------------------------------------------------------------------------------------------------- eval results
def eval_results_from_lm_eval(
    results: Mapping[str, Any] | str | os.PathLike,
    *,
    task_type: str = "text-generation",
    include_groups: bool = True,
) -> list[EvalResult]:
    """Turn lm-evaluation-harness results into `EvalResult`s for the card's `model-index`.

    Args:
        results (`dict`, `str` or `os.PathLike`):
            The dict returned by `lm_eval.simple_evaluate`, a `results_<date>.json` written by
            `lm_eval --output_path`, or a folder holding such files (the newest one, by name, is used).
        task_type (`str`, *optional*, defaults to `"text-generation"`):
            Hub task type recorded for every result (lm-eval scores language models).
        include_groups (`bool`, *optional*, defaults to `True`):
            Also record group aggregates (e.g. the mean over a commonsense suite), under the group's name.

    Returns:
        `list[EvalResult]`: one per (task, metric, filter), with the dataset path/config/split from the task config,
        `num_few_shot` (and `limit` when the run used one) in `dataset_args`; standard errors are left out.

    Raises:
        NeatError: the input is not lm-eval output (no `results` object), or the file cannot be read.
    """
    data = _read_lm_eval(results)
    configs = data.get("configs") or {}
    n_shot = data.get("n-shot") or {}
    limit = (data.get("config") or {}).get("limit")
    groups = set((data.get("groups") or {}).keys()) | {
        g for g, subtasks in (data.get("group_subtasks") or {}).items() if subtasks
    }
    out: list[EvalResult] = []
    for task, metrics in data["results"].items():
        if not isinstance(metrics, Mapping):
            raise NeatError(f"lm-eval results[{task!r}] must be an object of metrics, got {type(metrics).__name__}.")
        is_group = task in groups and task not in configs
        if is_group and not include_groups:
            continue
        config = configs.get(task) or {}
        name = str(metrics.get("alias") or task).strip().lstrip("-").strip() or task
        split = config.get("test_split") or config.get("validation_split")
        args: dict[str, Any] = {}
        if isinstance(n_shot.get(task), int):
            args["num_few_shot"] = n_shot[task]
        if limit is not None:
            args["limit"] = limit
        for key, value in metrics.items():
            if key in ("alias", "name", "sample_len", "sample_count") or "," not in key:
                continue
            metric, _, filt = key.partition(",")
            if metric.endswith("_stderr") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            out.append(
                EvalResult(
                    task_type=task_type,
                    dataset_type=str(config.get("dataset_path") or task),
                    dataset_name=name,
                    dataset_config=config.get("dataset_name") if isinstance(config.get("dataset_name"), str) else None,
                    dataset_split=split if isinstance(split, str) else None,
                    dataset_args=args or None,
                    metric_type=metric,
                    metric_value=float(value),
                    metric_name=metric if filt in ("", "none") else f"{metric} ({filt})",
                    metric_config=None if filt in ("", "none") else filt,
                    source_name="lm-evaluation-harness",
                    source_url=LM_EVAL_URL,
                )
            )
    if not out:
        raise NeatError("lm-eval results hold no numeric metric; was the evaluation run to completion?")
    return out


def _read_lm_eval(results: Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    if isinstance(results, Mapping):
        data: Any = dict(results)
        source = "lm-eval results"
    else:
        path = Path(results)
        if path.is_dir():
            candidates = sorted(path.rglob("results_*.json"), key=lambda p: p.name)
            if not candidates:
                raise NeatError(f"No lm-eval results_*.json under {os.fspath(path)!r}.")
            if len(candidates) > 1:
                logger.info("Using the newest of %d lm-eval result files: %s", len(candidates), candidates[-1])
            path = candidates[-1]
        if not path.is_file():
            raise NeatError(f"lm-eval results file {os.fspath(path)!r} does not exist.")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise NeatError(f"{os.fspath(path)!r} is not a JSON file written by lm-eval: {err}") from err
        source = os.fspath(path)
    if not isinstance(data, dict) or not isinstance(data.get("results"), Mapping):
        raise NeatError(
            f"{source} has no 'results' object; expected the JSON that `lm_eval --output_path` writes "
            "(results_<date>.json) or the dict simple_evaluate returns."
        )
    return data


def merge_eval_results(old: Iterable[EvalResult] | None, new: Iterable[EvalResult] | None) -> list[EvalResult]:
    """`old` with every result that `new` measures again replaced; results of other tasks/metrics kept."""

    def key(r: EvalResult) -> tuple:
        return (*r.unique_identifier, r.dataset_name, r.metric_type, r.metric_config)

    new = list(new or [])
    replaced = {key(r) for r in new}
    return [r for r in (old or []) if key(r) not in replaced] + new


# ---------------------------------------------------------------------------------------------------- card building
def count_adapter_parameters(weights_path: str | os.PathLike) -> int:
    """Number of parameters in an adapter_model.safetensors, read from its header (no tensor is loaded)."""
    from safetensors import safe_open

    total = 0
    try:
        with safe_open(os.fspath(weights_path), framework="pt") as handle:
            for key in handle.keys():
                n = 1
                for dim in handle.get_slice(key).get_shape():
                    n *= dim
                total += n
    except Exception as err:  # safetensors raises its own error types
        raise AdapterLoadError(f"Could not read {os.fspath(weights_path)!r} as safetensors: {err}") from err
    return total


def is_hub_id(value: Any) -> bool:
    """Whether `value` can be a Hub repo id (and is not a local path)."""
    return isinstance(value, str) and bool(_HUB_ID.match(value)) and ".." not in value and not os.path.exists(value)


def pipeline_tag_for(adapter_config: Mapping[str, Any]) -> str | None:
    """The Hub pipeline tag implied by an adapter's `task_type`, or its base class (`auto_mapping`)."""
    task_type = adapter_config.get("task_type")
    if task_type in TASK_TYPE_TO_PIPELINE_TAG:
        return TASK_TYPE_TO_PIPELINE_TAG[task_type]
    cls = (adapter_config.get("auto_mapping") or {}).get("base_model_class") or ""
    for suffix, tag in _CLASS_SUFFIX_TO_PIPELINE_TAG:
        if cls.endswith(suffix):
            return tag
    return None


def model_class_for(adapter_config: Mapping[str, Any]) -> str:
    """transformers class to load the base with: from `task_type`, else PEFT's `auto_mapping`, else `AutoModel`."""
    task_type = adapter_config.get("task_type")
    if task_type in TASK_TYPE_TO_AUTO_CLASS:
        return TASK_TYPE_TO_AUTO_CLASS[task_type]
    mapping = adapter_config.get("auto_mapping") or {}
    cls, library = mapping.get("base_model_class"), str(mapping.get("parent_library") or "")
    if isinstance(cls, str) and cls.isidentifier() and library.startswith("transformers"):
        return cls
    return "AutoModel"


def framework_versions(extra: Iterable[str] = ()) -> dict[str, str]:
    """Installed versions of the packages a card lists (missing ones left out)."""
    names = ["neat-hf", "peft", "transformers", "torch", "huggingface_hub", "safetensors", *extra]
    out = {}
    for name in dict.fromkeys(names):
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return out


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _code(value: Any) -> str:
    return f"`{str(value).replace('`', '')}`"


def _fmt_number(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,d}"
    if isinstance(value, float):
        return f"{value:g}"
    return _cell(value)


def _names(value: Any, empty: str) -> str:
    if value is None:
        return empty
    if isinstance(value, str):
        return f"regex {_code(value)}"
    return ", ".join(_code(v) for v in value) if value else empty


def _hyperparameter_rows(
    config: Mapping[str, Any], num_adapter_parameters: int | None, num_base_parameters: int | None
) -> list[tuple[str, str]]:
    depth = config.get("depth", 0)
    rows = [
        ("rank `r`", _fmt_number(config.get("r"))),
        (
            "depth",
            f"{depth} hidden r×r layer(s) per side (paper depth {2 + 2 * depth})"
            if isinstance(depth, int)
            else _cell(depth),
        ),
        ("activation `act_fn`", _code(config.get("act_fn"))),
        ("scaling", _fmt_number(config.get("scaling"))),
        ("target modules", _names(config.get("target_modules"), "preset for the model type")),
    ]
    if config.get("exclude_modules"):
        rows.append(("excluded modules", _names(config["exclude_modules"], "")))
    if config.get("layers_to_transform") is not None:
        layers = config["layers_to_transform"]
        rows.append(("layers", ", ".join(str(i) for i in (layers if isinstance(layers, list) else [layers]))))
    if config.get("modules_to_save"):
        rows.append(("fully trained modules", _names(config["modules_to_save"], "")))
    if config.get("dropout"):
        rows.append(("dropout (training only)", _fmt_number(config["dropout"])))
    if config.get("task_type"):
        rows.append(("task type", _code(config["task_type"])))
    if num_adapter_parameters is not None:
        text = f"{num_adapter_parameters:,d}"
        if num_base_parameters:
            share = 100.0 * num_adapter_parameters / num_base_parameters
            text += f" ({share:.4f}% of the base model's {num_base_parameters:,d})"
        rows.append(("adapter parameters", text))
    return rows


def _training_rows(info: Mapping[str, Any]) -> list[tuple[str, str]]:
    info = dict(info)
    if "effective_batch_size" not in info and isinstance(info.get("per_device_train_batch_size"), int):
        info["effective_batch_size"] = (
            info["per_device_train_batch_size"]
            * int(info.get("gradient_accumulation_steps") or 1)
            * int(info.get("world_size") or 1)
        )
    rows = []
    known = {key for key, _ in _TRAINING_ROWS}
    for key, label in _TRAINING_ROWS:
        if key not in info or (info[key] is None and key != "deepspeed_stage"):
            continue
        value = info[key]
        if key == "dataset":
            items = value if isinstance(value, list) else [value]
            text = ", ".join(
                f"[{v}](https://huggingface.co/datasets/{v})" if is_hub_id(v) and "/" in str(v) else _code(v)
                for v in items
            )
        elif key == "learning_rates" and isinstance(value, dict):
            text = ", ".join(f"{_cell(k)}: {_fmt_number(v)}" for k, v in value.items())
        elif key == "deepspeed_stage":
            text = "not used" if value in (None, 0, False) else f"ZeRO stage {value}"
        elif key == "train_runtime" and isinstance(value, (int, float)):
            text = f"{value:.1f} s"
        elif key == "max_steps" and isinstance(value, int) and value <= 0:
            continue
        else:
            text = ", ".join(_fmt_number(v) for v in value) if isinstance(value, list) else _fmt_number(value)
        rows.append((label, text))
    for key, value in info.items():
        if key in known or key in _INTERNAL_KEYS or key in ("dataset_name",):
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k}: {_fmt_number(v)}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(_fmt_number(v) for v in value)
        else:
            value = _fmt_number(value)
        rows.append((_cell(key.replace("_", " ")), value))
    return rows


def _eval_rows(results: Sequence[EvalResult]) -> list[list[str]]:
    rows = []
    for r in results:
        args = r.dataset_args or {}
        rows.append(
            [
                _cell(r.dataset_name),
                _cell(r.metric_name or r.metric_type),
                f"{r.metric_value:.4f}" if isinstance(r.metric_value, float) else _cell(r.metric_value),
                _cell(args.get("num_few_shot", "")),
                _cell(r.dataset_split or ""),
            ]
        )
    return rows


def build_model_card(
    adapter_config: NeatConfig | Mapping[str, Any],
    *,
    repo_id: str | None = None,
    base_model: str | None = None,
    model_name: str | None = None,
    num_adapter_parameters: int | None = None,
    num_base_parameters: int | None = None,
    training_info: Mapping[str, Any] | None = None,
    eval_results: Sequence[EvalResult] | None = None,
    datasets: str | Sequence[str] | None = None,
    license: str | None = None,
    language: str | Sequence[str] | None = None,
    pipeline_tag: str | None = None,
    tags: Sequence[str] | None = None,
    merged: bool = False,
) -> ModelCard:
    """Render the model card of a NEAT adapter (or, with `merged=True`, of a base model with the adapter merged in).

    Args:
        adapter_config (`NeatConfig` or `dict`):
            The adapter's config (`adapter_config.json` contents).
        repo_id (`str`, *optional*):
            Where the adapter lives on the Hub; used in the loading snippets and as the `model-index` name.
        base_model (`str`, *optional*):
            Hub id of the base model. Defaults to the config's `base_model_name_or_path` when that is a Hub id (a
            local path is never written into the metadata).
        model_name (`str`, *optional*):
            Title and `model-index` name. Defaults to `repo_id`.
        num_adapter_parameters (`int`, *optional*):
            Parameters stored in the adapter file.
        num_base_parameters (`int`, *optional*):
            Parameters of the base model, for the trainable share.
        training_info (`dict`, *optional*):
            Training setup (see the module docstring for keys); scrubbed of credentials.
        eval_results (`list[EvalResult]`, *optional*):
            Written as `model-index` and as a table (see [`eval_results_from_lm_eval`]).
        datasets, license, language, pipeline_tag (*optional*):
            Card metadata. `datasets` defaults to `training_info["dataset"]` when that is a Hub id, `license` to
            `training_info["license"]`, `pipeline_tag` to the one implied by `task_type` / `auto_mapping`.
        tags (`list[str]`, *optional*):
            Extra tags, added after `neat`, `peanut`, `peft` and `base_model:adapter:<base>`.
        merged (`bool`, *optional*, defaults to `False`):
            Card for `neat-hub merge` output: `library_name: transformers`, no adapter tags.

    Returns:
        `huggingface_hub.ModelCard`

    Raises:
        NeatError: invalid `training_info` or `eval_results`.
    """
    config = adapter_config.to_dict() if hasattr(adapter_config, "to_dict") else dict(adapter_config)
    info = sanitize_training_info(training_info or {})
    config_base = config.get("base_model_name_or_path")
    base_id = base_model if base_model is not None else (config_base if is_hub_id(config_base) else None)
    if base_id is not None and not is_hub_id(base_id):
        raise NeatError(f"base_model must be a Hub model id like 'org/name', got {base_id!r}.")
    if datasets is None and info.get("dataset") is not None:
        candidates = info["dataset"] if isinstance(info["dataset"], list) else [info["dataset"]]
        hub_datasets = [d for d in candidates if is_hub_id(d)]
        datasets = hub_datasets or None
    license = license if license is not None else info.get("license")
    pipeline_tag = pipeline_tag if pipeline_tag is not None else pipeline_tag_for(config)

    all_tags = ["neat", "peanut", "merged-adapter"] if merged else list(NEAT_TAGS)
    if base_id is not None and not merged:
        all_tags.append(f"base_model:adapter:{base_id}")
    all_tags += [t for t in (tags or []) if t not in all_tags]
    if eval_results:
        if not all(isinstance(r, EvalResult) for r in eval_results):
            raise NeatError("eval_results must be huggingface_hub.EvalResult objects (see eval_results_from_lm_eval).")
    name = model_name or repo_id or (f"{base_id.split('/')[-1]}-neat" if base_id else "neat-adapter")
    card_data = ModelCardData(
        base_model=base_id,
        library_name="transformers" if merged else "peft",
        tags=all_tags,
        datasets=list(datasets) if isinstance(datasets, (list, tuple)) else datasets,
        license=license,
        language=language,
        pipeline_tag=pipeline_tag,
        model_name=name if eval_results else None,
        eval_results=list(eval_results) if eval_results else None,
    )

    versions = dict(info.get("framework_versions") or {}) or framework_versions(
        [p for p, used in (("deepspeed", info.get("deepspeed_stage")), ("lm_eval", eval_results)) if used]
    )
    local_base = config_base if isinstance(config_base, str) and not is_hub_id(config_base) else None
    if base_id:
        base_model_link = f"[`{base_id}`](https://huggingface.co/{base_id})"
    elif local_base:
        base_model_link = f"a local base model (`{_cell(os.path.basename(local_base.rstrip('/')))}`)"
    else:
        base_model_link = "its base model"
    eval_note = "Evaluation results (also in the `model-index` metadata)."
    if eval_results and any(r.source_name == "lm-evaluation-harness" for r in eval_results):
        limit = _limit(eval_results)
        subset = f", on the first {_fmt_number(limit)} examples of each task (`limit`)" if limit else ""
        eval_note = f"Scores from [lm-evaluation-harness]({LM_EVAL_URL}){subset}; also in the `model-index` metadata."
    card = ModelCard.from_template(
        card_data,
        template_path=os.fspath(TEMPLATE_PATH),
        title=name,
        merged=merged,
        base_model_link=base_model_link,
        base_model_ref=base_id or "BASE_MODEL_ID_OR_PATH",
        repo_ref=repo_id or "PATH_OR_REPO_ID",
        model_class=model_class_for(config),
        act_fn=config.get("act_fn"),
        peft_compatible=config.get("act_fn") != "sin",
        hyperparameters=_hyperparameter_rows(config, num_adapter_parameters, num_base_parameters),
        training_rows=_training_rows(info),
        eval_rows=_eval_rows(eval_results or []),
        eval_note=eval_note,
        versions=sorted(versions.items()),
    )
    # Jinja leaves runs of blank lines where optional sections are skipped; Markdown needs at most one.
    return ModelCard(re.sub(r"\n{3,}", "\n\n", str(card)).rstrip("\n") + "\n")


def _limit(results: Sequence[EvalResult] | None) -> Any:
    for r in results or []:
        if r.dataset_args and r.dataset_args.get("limit") is not None:
            return r.dataset_args["limit"]
    return None


def existing_eval_results(card_path: str | os.PathLike) -> list[EvalResult]:
    """The `model-index` results of an existing card (none if the file is missing or has none)."""
    if not Path(card_path).is_file():
        return []
    try:
        card = ModelCard.load(card_path, ignore_metadata_errors=True)
    except Exception as err:  # a hand-edited README with broken YAML must not block a rebuild
        logger.warning(
            "Could not parse the existing card %s (%s); its evaluation results are not kept.", card_path, err
        )
        return []
    return list(card.data.eval_results or [])


def write_model_card(
    save_directory: str | os.PathLike,
    *,
    model: Any = None,
    repo_id: str | None = None,
    training_info: Mapping[str, Any] | None = None,
    eval_results: Sequence[EvalResult] | None = None,
    keep_eval_results: bool = True,
    **card_kwargs: Any,
) -> Path:
    """Write `README.md` for the adapter saved in `save_directory` (atomically), and `training_info.json` if given.

    Call it after `save_pretrained(save_directory)`: the card is built from the files there, so it always describes
    what is saved.

    Args:
        save_directory (`str` or `os.PathLike`):
            Folder holding `adapter_config.json` and `adapter_model.safetensors`.
        model ([`NeatModel`], *optional*):
            The live model, to count the base model's parameters (stored in `training_info.json` as
            `base_model_parameters`, so later rebuilds keep the trainable share).
        repo_id (`str`, *optional*):
            Hub repo the adapter is (or will be) pushed to; used in the loading snippets.
        training_info (`dict`, *optional*):
            Training setup; merged over an existing `training_info.json` and written back.
        eval_results (`list[EvalResult]`, *optional*):
            New evaluation results; merged with the ones of the existing card (same task and metric replaced).
        keep_eval_results (`bool`, *optional*, defaults to `True`):
            Keep the existing card's `model-index`; set False for a freshly trained adapter.
        card_kwargs:
            Passed to [`build_model_card`] (`base_model`, `datasets`, `license`, `language`, `pipeline_tag`, `tags`,
            `model_name`).

    Returns:
        `pathlib.Path` of the written README.md.

    Raises:
        AdapterLoadError: the folder lacks adapter_config.json / adapter_model.safetensors or they are invalid.
        NeatError: invalid `training_info` / `eval_results`.
    """
    from neat_hf.io import atomic_write_text, read_adapter_config

    directory = Path(save_directory)
    config_path, weights_path = directory / ADAPTER_CONFIG_NAME, directory / ADAPTER_WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise AdapterLoadError(
                f"No {path.name} in {os.fspath(directory)!r}; write the adapter with save_pretrained() before its card."
            )
    config = read_adapter_config(config_path)  # validates every field
    num_adapter = count_adapter_parameters(weights_path)

    info = dict(load_training_info(directory) or {})
    if training_info:
        info.update(sanitize_training_info(training_info))
    if model is not None:
        num_base = _base_parameter_count(model, num_adapter)
        if num_base is not None:
            info["base_model_parameters"] = num_base
        # A 4-/8-bit base is part of how the adapter was trained (outputs on another copy of the base differ
        # slightly); recorded here, not in adapter_config.json, whose unknown keys make stock PEFT warn.
        quantization = quantization_settings(model)
        if quantization:
            info["base_model_quantization"] = quantization
    if training_info or (model is not None and "base_model_parameters" in info):
        save_training_info(directory, info)

    card_path = directory / MODEL_CARD_NAME
    results = merge_eval_results(existing_eval_results(card_path) if keep_eval_results else [], eval_results)
    card = build_model_card(
        config,
        repo_id=repo_id,
        num_adapter_parameters=num_adapter,
        num_base_parameters=info.get("base_model_parameters"),
        training_info=info,
        eval_results=results,
        **card_kwargs,
    )
    atomic_write_text(card_path, str(card))
    return card_path


def _base_parameter_count(model: Any, num_adapter: int) -> int | None:
    """Parameters of the base model = all parameters of the wrapped model minus the adapter's (and minus the trained
    copies of `modules_to_save`, which the adapter file holds)."""
    try:
        _, total = model.get_nb_trainable_parameters()
    except AttributeError:
        try:
            total = sum(p.numel() for p in model.parameters())
        except AttributeError:
            return None
    base = int(total) - int(num_adapter)
    return base if base > 0 else None


def is_neat_card(card_path: str | os.PathLike) -> bool:
    """Whether `card_path` is a card this module wrote (`library_name: peft` and the `neat` tag)."""
    try:
        data = ModelCard.load(card_path, ignore_metadata_errors=True).data
    except Exception:
        return False
    return data.get("library_name") == "peft" and "neat" in (data.get("tags") or [])
