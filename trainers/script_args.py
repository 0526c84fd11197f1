"""The script arguments of `neat-train`: model, data and NEAT dataclasses (the training arguments are
[`NeatTrainingArguments`], in `training_args.py`), as TRL's scripts keep `ScriptArguments` apart from the trainer config.

Each field carries `metadata["help"]`, which `HfArgumentParser` turns into `--help`. NEAT fields are prefixed `neat_`
(as TRL's `ModelConfig` prefixes `lora_`) so that they never collide with a `TrainingArguments` flag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from neat_hf import NeatConfig
from neat_hf.errors import TrainingArgumentError
from neat_hf.trainers.default_job import TINY_LLAMA
from neat_hf.trainers.prompts import PROMPT_TEMPLATES

#: `--torch_dtype` values and the dtype each names (`auto` lets transformers read it from the checkpoint).
TORCH_DTYPES = ("auto", "float32", "bfloat16", "float16")

#: `--task` values (the `AutoModelFor…` class each loads) → the PEFT task type (one of `neat_hf.constants.TASK_TYPES`)
#: written into adapter_config.json; image classification has none in PEFT.
TASK_TYPE_OF_TASK: dict[str, str | None] = {
    "causal-lm": "CAUSAL_LM",
    "sequence-classification": "SEQ_CLS",
    "image-classification": None,
}
TASKS = tuple(TASK_TYPE_OF_TASK)
#: `--dataset_format` values: how rows become examples (see `data.py`).
DATASET_FORMATS = ("instruction", "metamathqa", "text-classification", "image-classification")

_REGEX_CHARS = re.compile(r"[\\^$*+?()\[\]{}|]")


@dataclass
class ModelArguments:
    """Which base model to adapt, and how to load it.

    Args:
        model_name_or_path (`str`, defaults to `"builtin:tiny-llama"`):
            Hub model id or local folder; `builtin:tiny-llama` is the small LLaMA of the embedded default job.
        model_revision (`str`, *optional*):
            Branch, tag or commit of the model on the Hub.
        tokenizer_name_or_path (`str`, *optional*):
            Tokenizer or image processor to load instead of the model's own.
        task (`str`, defaults to `"causal-lm"`):
            `causal-lm`, `sequence-classification` or `image-classification`: picks the `AutoModelFor…` class.
        torch_dtype (`str`, *optional*):
            dtype of the base weights: `auto`, `float32`, `bfloat16` or `float16`. The NEAT parameters follow the
            base layer's dtype; use `--bf16` for mixed precision instead of a half-precision base when training on CPU.
        trust_remote_code (`bool`, defaults to `False`):
            Run modelling code from the model repository. Off unless you trust the repository.
        attn_implementation (`str`, *optional*):
            Attention kernel, e.g. `sdpa`, `eager` or `flash_attention_2`.
        num_labels (`int`, *optional*):
            Classes of a classification head; read from the dataset's labels when omitted.
        cache_dir (`str`, *optional*):
            Where downloaded models and datasets are stored.
    """

    model_name_or_path: str = field(
        default=TINY_LLAMA,
        metadata={
            "help": "Hub model id or local folder of the base model; `builtin:tiny-llama` builds the small LLaMA of "
            "the embedded default job from the packaged config."
        },
    )
    model_revision: str | None = field(default=None, metadata={"help": "Branch, tag or commit of the model."})
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer / image processor to load instead of the model's own."}
    )
    task: str = field(
        default="causal-lm",
        metadata={"help": "Model head to load.", "choices": list(TASKS)},
    )
    torch_dtype: str | None = field(
        default=None,
        metadata={"help": "dtype of the base weights (default: float32 for a local config, `auto` is the checkpoint's).",
                  "choices": list(TORCH_DTYPES)},
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run modelling code shipped in the model repository (off by default)."}
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "Attention kernel: `sdpa`, `eager`, `flash_attention_2`, …"}
    )
    num_labels: int | None = field(
        default=None, metadata={"help": "Classes of a classification head (default: read from the dataset)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Cache folder for downloads."})

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise TrainingArgumentError(f"task={self.task!r} is not supported; use one of {list(TASKS)}.")
        if self.torch_dtype is not None and self.torch_dtype not in TORCH_DTYPES:
            raise TrainingArgumentError(f"torch_dtype={self.torch_dtype!r} is not supported; use one of {list(TORCH_DTYPES)}.")
        if self.num_labels is not None and self.num_labels < 1:
            raise TrainingArgumentError(f"num_labels must be ≥ 1, got {self.num_labels}.")


@dataclass
class DataArguments:
    """What to train and evaluate on, and how to turn rows into model inputs.

    Args:
        dataset_name (`str`, *optional*):
            Hub dataset id, local dataset folder or data file, or `builtin:number-words` (generated, no download).
        dataset_config_name (`str`, *optional*):
            Dataset configuration, e.g. `sst2` for `nyu-mll/glue` (also picks the GLUE text columns).
        dataset_revision (`str`, *optional*):
            Branch, tag or commit of the dataset on the Hub.
        train_file (`str`, *optional*):
            Local training file (`.json`, `.jsonl`, `.csv`, `.tsv`, `.parquet`); replaces `dataset_name`.
        validation_file (`str`, *optional*):
            Local evaluation file, same format as `train_file`.
        column_names (`str`, *optional*):
            Comma-separated column names for a headerless CSV/TSV file, e.g. `label,sentence`.
        dataset_format (`str`, *optional*):
            `instruction` (instruction/input/output, LLM-Adapters template), `metamathqa` (query/response),
            `text-classification` or `image-classification`; defaults to the task's natural format.
        train_split (`str`, defaults to `"train"`):
            Split to train on.
        eval_split (`str`, *optional*):
            Split to evaluate on; by default the first of `validation`, `validation_matched`, `valid`, `dev`.
        eval_split_size (`float`, defaults to `0`):
            Without an eval split, hold out this many training rows (a fraction when < 1) for evaluation.
        max_train_samples (`int`, *optional*):
            Keep only the first N training rows (for `builtin:number-words`: generate N).
        max_eval_samples (`int`, *optional*):
            Keep only the first N eval rows (for `builtin:number-words`: generate N).
        prompt_template (`str`, defaults to `"llm-adapters"`):
            Prompt of instruction data: `llm-adapters` (LLM-Adapters / Alpaca, as in the paper) or
            `llm-adapters-short` (the same sections without the preamble sentence).
        cutoff_len (`int`, defaults to `256`):
            Tokens per example; longer ones are truncated (LLM-Adapters' `cutoff_len`, GLUE's `max_length`).
        train_on_inputs (`bool`, defaults to `False`):
            Also compute the loss on the prompt. By default prompt tokens are masked (label -100).
        text_column (`str`, *optional*):
            Text column for text classification (default: from the GLUE table, else `sentence`).
        text_pair_column (`str`, *optional*):
            Second text column for sentence-pair tasks.
        label_column (`str`, defaults to `"label"`):
            Label column for classification.
        image_column (`str`, defaults to `"image"`):
            Image column for image classification (`img` for `uoft-cs/cifar10`).
        preprocessing_num_workers (`int`, *optional*):
            Processes for tokenization.
        eval_before_training (`bool`, defaults to `True`):
            Evaluate before training too, so the run reports a before/after comparison.
    """

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset id, local folder or data file, or `builtin:number-words` (generated locally)."
        },
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "Dataset configuration, e.g. `sst2` for nyu-mll/glue."}
    )
    dataset_revision: str | None = field(default=None, metadata={"help": "Branch, tag or commit of the dataset."})
    train_file: str | None = field(
        default=None, metadata={"help": "Local training file: .json/.jsonl/.csv/.tsv/.parquet."}
    )
    validation_file: str | None = field(default=None, metadata={"help": "Local evaluation file."})
    column_names: str | None = field(
        default=None, metadata={"help": "Comma-separated column names of a headerless .csv/.tsv, e.g. `label,sentence`."}
    )
    dataset_format: str | None = field(
        default=None,
        metadata={"help": "How rows become examples (default: the task's natural format).",
                  "choices": list(DATASET_FORMATS)},
    )
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(
        default=None, metadata={"help": "Split to evaluate on (default: validation / validation_matched / valid / dev)."}
    )
    eval_split_size: float = field(
        default=0.0,
        metadata={"help": "Without an eval split, hold out this many training rows (fraction when < 1)."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only the first N eval rows."})
    prompt_template: str = field(
        default="llm-adapters",
        metadata={"help": "Prompt of instruction data (`llm-adapters-short` drops the preamble sentence).",
                  "choices": list(PROMPT_TEMPLATES)},
    )
    cutoff_len: int = field(default=256, metadata={"help": "Maximum tokens per example (longer are truncated)."})
    train_on_inputs: bool = field(
        default=False, metadata={"help": "Also train on prompt tokens (default: loss on the response only)."}
    )
    text_column: str | None = field(default=None, metadata={"help": "Text column for text classification."})
    text_pair_column: str | None = field(default=None, metadata={"help": "Second text column (sentence pairs)."})
    label_column: str = field(default="label", metadata={"help": "Label column for classification."})
    image_column: str = field(default="image", metadata={"help": "Image column for image classification."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenization."})
    eval_before_training: bool = field(
        default=True, metadata={"help": "Also evaluate before training, to print a before/after comparison."}
    )

    def __post_init__(self) -> None:
        if self.dataset_format is not None and self.dataset_format not in DATASET_FORMATS:
            raise TrainingArgumentError(
                f"dataset_format={self.dataset_format!r} is not supported; use one of {list(DATASET_FORMATS)}."
            )
        if self.prompt_template not in PROMPT_TEMPLATES:
            raise TrainingArgumentError(
                f"prompt_template={self.prompt_template!r} is not supported; use one of {list(PROMPT_TEMPLATES)}."
            )
        if self.cutoff_len < 2:
            raise TrainingArgumentError(f"cutoff_len must be ≥ 2 tokens, got {self.cutoff_len}.")
        if self.eval_split_size < 0:
            raise TrainingArgumentError(f"eval_split_size must be ≥ 0, got {self.eval_split_size}.")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise TrainingArgumentError(f"{name} must be ≥ 1, got {value}.")


@dataclass
class NeatArguments:
    """The NEAT adapter: each `neat_<x>` flag sets `NeatConfig.<x>`.

    Args:
        neat_r (`int`, defaults to `32`):
            Rank r, the hidden width of the weight network.
        neat_target_modules (`list[str]`, *optional*):
            Module names to adapt (suffix match), or one regex matched against full paths. Default: the preset for
            the model type (LLaMA: q,k,v,up,down; RoBERTa/ViT: query,value).
        neat_exclude_modules (`list[str]`, *optional*):
            Module names never to adapt.
        neat_depth (`int`, defaults to `0`):
            Hidden r×r layers per side (the paper's depth D = 2 + 2·depth).
        neat_act_fn (`str`, defaults to `"relu"`):
            Nonlinearity σ: a `transformers` ACT2FN key or `sin`.
        neat_scaling (`float`, defaults to `1.0`):
            Multiplier s of the adapter output (LoRA-style α/r: α=32, r=32 → 1.0).
        neat_dropout (`float`, defaults to `0.0`):
            Dropout on the adapter input during training.
        neat_modules_to_save (`list[str]`, *optional*):
            Extra modules trained in full and saved with the adapter (e.g. `classifier`); they get `head_learning_rate`.
        neat_layers_to_transform (`list[int]`, *optional*):
            Only adapt these layer indices.
        neat_layers_pattern (`str`, *optional*):
            Name of the layer list that `neat_layers_to_transform` indexes (`layers`, `layer`, `h`, …).
        neat_init_weights (`bool`, defaults to `True`):
            Zero-initialise B so that training starts from the base model.
    """

    neat_r: int = field(default=32, metadata={"help": "Rank r of the NEAT weight network."})
    neat_target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Modules to adapt (names, suffix match; or one regex). Default: the model type's preset."},
    )
    neat_exclude_modules: list[str] | None = field(default=None, metadata={"help": "Modules never to adapt."})
    neat_depth: int = field(default=0, metadata={"help": "Hidden r×r layers per side (paper depth = 2 + 2·depth)."})
    neat_act_fn: str = field(default="relu", metadata={"help": "Nonlinearity: an ACT2FN name or `sin`."})
    neat_scaling: float = field(default=1.0, metadata={"help": "Multiplier s of the adapter output (α/r)."})
    neat_dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter input during training."})
    neat_modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules trained in full and saved with the adapter (e.g. `classifier`)."}
    )
    neat_layers_to_transform: list[int] | None = field(
        default=None, metadata={"help": "Only adapt these layer indices."}
    )
    neat_layers_pattern: str | None = field(
        default=None, metadata={"help": "Layer list indexed by --neat_layers_to_transform (`layers`, `layer`, `h`)."}
    )
    neat_init_weights: bool = field(
        default=True, metadata={"help": "Zero-initialise B (start from the base model). False only for tests."}
    )

    def to_neat_config(
        self, *, task: str = "causal-lm", base_model_name_or_path: str | None = None, revision: str | None = None
    ) -> NeatConfig:
        """Builds the [`~neat_hf.NeatConfig`] these arguments describe (its own checks run here, before any model is
        touched)."""
        return NeatConfig(
            r=self.neat_r,
            target_modules=_modules_value(self.neat_target_modules),
            exclude_modules=_modules_value(self.neat_exclude_modules),
            depth=self.neat_depth,
            act_fn=self.neat_act_fn,
            scaling=self.neat_scaling,
            dropout=self.neat_dropout,
            modules_to_save=list(self.neat_modules_to_save) if self.neat_modules_to_save else None,
            layers_to_transform=list(self.neat_layers_to_transform) if self.neat_layers_to_transform else None,
            layers_pattern=self.neat_layers_pattern,
            init_weights=self.neat_init_weights,
            task_type=TASK_TYPE_OF_TASK.get(task),
            base_model_name_or_path=base_model_name_or_path,
            revision=revision,
        )


def _modules_value(value: list[str] | str | None) -> list[str] | str | None:
    """A single entry that looks like a regex (or a YAML string) is passed on as a regex, as PEFT does for a `str`."""
    if value is None or isinstance(value, str):
        return value
    values = list(value)
    if len(values) == 1 and _REGEX_CHARS.search(values[0]):
        return values[0]
    return values
