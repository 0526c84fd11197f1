"""The script arguments of `neat-train`: model, data and NEAT dataclasses (the training arguments are
[`NeatTrainingArguments`], in `training_args.py`), as TRL's scripts keep `ScriptArguments` apart from the trainer config.

Each field carries `metadata["help"]`, which `HfArgumentParser` turns into `--help`. NEAT fields are prefixed `neat_`
(as TRL's `ModelConfig` prefixes `lora_`) so that they never collide with a `TrainingArguments` flag.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from neat_hf.errors import TrainingArgumentError
from neat_hf.trainers.neat_arguments import TASK_TYPE_OF_TASK
from neat_hf.cli.train.default_job import TINY_LLAMA
from neat_hf.trainers.prompts import PROMPT_TEMPLATES

#: `--torch_dtype` values and the dtype each names (`auto` lets transformers read it from the checkpoint).
TORCH_DTYPES = ("auto", "float32", "bfloat16", "float16")

#: `--bnb_4bit_quant_type` values (bitsandbytes' 4-bit data types).
BNB_4BIT_QUANT_TYPES = ("nf4", "fp4")

TASKS = tuple(TASK_TYPE_OF_TASK)
#: `--dataset_format` values: how rows become examples (see `data.py`).
DATASET_FORMATS = ("instruction", "metamathqa", "text-classification", "image-classification")


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
        load_in_4bit (`bool`, defaults to `False`):
            Load the frozen base in 4 bit with bitsandbytes (QLoRA-style; needs `pip install "neat-hf[bnb]"`).
        load_in_8bit (`bool`, defaults to `False`):
            Load the frozen base in 8 bit (LLM.int8) with bitsandbytes.
        bnb_4bit_quant_type (`str`, defaults to `"nf4"`):
            4-bit data type: `nf4` (QLoRA's NormalFloat) or `fp4`.
        bnb_4bit_compute_dtype (`str`, *optional*):
            dtype the 4-bit layers compute in (`float32`, `bfloat16`, `float16`); bitsandbytes' default (float32)
            when omitted.
        bnb_4bit_use_double_quant (`bool`, defaults to `False`):
            Quantize the quantization constants too (QLoRA's double quantization, ~0.4 bit per weight less).
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
    load_in_4bit: bool = field(
        default=False, metadata={"help": "Load the frozen base in 4 bit with bitsandbytes (QLoRA-style; neat-hf[bnb])."}
    )
    load_in_8bit: bool = field(default=False, metadata={"help": "Load the frozen base in 8 bit (LLM.int8, bitsandbytes)."})
    bnb_4bit_quant_type: str = field(
        default="nf4", metadata={"help": "4-bit data type (with --load_in_4bit).", "choices": list(BNB_4BIT_QUANT_TYPES)}
    )
    bnb_4bit_compute_dtype: str | None = field(
        default=None,
        metadata={"help": "dtype the 4-bit layers compute in (default: bitsandbytes', float32).",
                  "choices": [d for d in TORCH_DTYPES if d != "auto"]},
    )
    bnb_4bit_use_double_quant: bool = field(
        default=False, metadata={"help": "Also quantize the quantization constants (QLoRA's double quantization)."}
    )

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise TrainingArgumentError(f"task={self.task!r} is not supported; use one of {list(TASKS)}.")
        if self.torch_dtype is not None and self.torch_dtype not in TORCH_DTYPES:
            raise TrainingArgumentError(f"torch_dtype={self.torch_dtype!r} is not supported; use one of {list(TORCH_DTYPES)}.")
        if self.num_labels is not None and self.num_labels < 1:
            raise TrainingArgumentError(f"num_labels must be ≥ 1, got {self.num_labels}.")
        if self.load_in_4bit and self.load_in_8bit:
            raise TrainingArgumentError("Pass --load_in_4bit or --load_in_8bit, not both.")
        if self.bnb_4bit_quant_type not in BNB_4BIT_QUANT_TYPES:
            raise TrainingArgumentError(
                f"bnb_4bit_quant_type={self.bnb_4bit_quant_type!r} is not supported; use one of {list(BNB_4BIT_QUANT_TYPES)}."
            )
        if not self.load_in_4bit and (self.bnb_4bit_compute_dtype is not None or self.bnb_4bit_use_double_quant):
            raise TrainingArgumentError(
                "--bnb_4bit_compute_dtype / --bnb_4bit_use_double_quant only apply with --load_in_4bit."
            )

    def quantization_kwargs(self) -> dict[str, object]:
        """The bitsandbytes flags given (for `neat_hf.quantization.bnb_config_from_kwargs`); empty when unquantized."""
        if self.load_in_8bit:
            return {"load_in_8bit": True}
        if not self.load_in_4bit:
            return {}
        return {
            "load_in_4bit": True,
            "bnb_4bit_quant_type": self.bnb_4bit_quant_type,
            "bnb_4bit_compute_dtype": self.bnb_4bit_compute_dtype,
            "bnb_4bit_use_double_quant": self.bnb_4bit_use_double_quant,
        }


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
