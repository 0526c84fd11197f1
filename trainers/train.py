"""`neat-train`: fine-tune a model with NEAT from the command line.

```bash
neat-train                                          # the embedded default: tiny LLaMA, built-in task, CPU, ~2 min
neat-train --list                                   # the shipped recipes (the paper's setups)
neat-train --recipe commonsense/llama2-7b           # a recipe; any flag below overrides it
neat-train --recipe glue/roberta-base_neat-s --dataset_config_name cola --neat_scaling 0.1
neat-train --config my_run.yaml --learning_rate 1e-4
neat-train --model_name_or_path meta-llama/Llama-3.2-1B --train_file data.json --neat_r 16
torchrun --nproc_per_node 4 -m neat_hf.trainers.train --recipe commonsense/llama3-8b --deepspeed zero3
deepspeed --num_gpus 4 --module neat_hf.trainers.train --recipe commonsense/llama3-8b --deepspeed zero3
accelerate launch --num_processes 4 -m neat_hf.trainers.train --recipe math/llama2-7b --deepspeed zero2
```

Defaults come, lowest first, from the dataclasses, then a recipe (`--recipe`), then a config file (`--config`), then
the command line. Without `--recipe`, `--config` and `--model_name_or_path`, the `default` recipe applies, so
`neat-train --max_steps 20` is the embedded default job, shortened.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

from transformers import HfArgumentParser

from neat_hf.errors import NeatError
from neat_hf.trainers.arguments import DataArguments, ModelArguments, NeatArguments
from neat_hf.trainers.recipe_registry import DEFAULT_RECIPE, list_recipes, load_config_file, load_recipe, recipe_summary
from neat_hf.trainers.training_args import CHECKPOINTING_FIELD, RENAMED_FIELDS, NeatTrainingArguments

logger = logging.getLogger(__name__)

ArgumentTuple = tuple[ModelArguments, DataArguments, NeatArguments, NeatTrainingArguments]

_DATACLASSES = (ModelArguments, DataArguments, NeatArguments, NeatTrainingArguments)
#: Flags of the parser itself (not dataclass fields).
_RUN_FLAGS = ("recipe", "config", "list")
#: Defaults of `neat-train` that differ from the dataclasses' (the adapter lands in ./neat-output).
_CLI_DEFAULTS = {"output_dir": "neat-output", "report_to": "none"}
#: Errors that mean "bad input" (including a model or dataset that cannot be found or opened): the CLI prints them
#: as one line instead of a traceback, before any training starts.
USER_ERRORS = (NeatError, ValueError, TypeError, OSError)


def make_parser() -> HfArgumentParser:
    """The `neat-train` parser: model, data, NEAT and training arguments, plus `--recipe`, `--config` and `--list`."""
    parser = HfArgumentParser(
        _DATACLASSES,
        prog="neat-train",
        description=__doc__.split("\n\n", 1)[0],
        epilog="Recipes: " + ", ".join(list_recipes()) + ". Without --recipe/--config/--model_name_or_path the "
        "`default` recipe applies.",
        allow_abbrev=False,
    )
    group = parser.add_argument_group("neat-train")
    group.add_argument("--recipe", default=None, help="Shipped recipe name (see --list) or a YAML/JSON file of defaults.")
    group.add_argument("--config", default=None, help="YAML/JSON file of flag values; overrides the recipe.")
    group.add_argument("--list", action="store_true", help="List the shipped recipes and exit.")
    parser.set_defaults(**_CLI_DEFAULTS)
    return parser


def _pre_parse(argv: Sequence[str]) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--recipe")
    pre.add_argument("--config")
    pre.add_argument("--list", action="store_true")
    pre.add_argument("--model_name_or_path", "--model-name-or-path")
    return pre.parse_known_args(list(argv))[0]


def _convert(action: argparse.Action, value: Any) -> Any:
    """Apply the parser's type to a value read from YAML (where `3e-4` is a string) as the command line would."""
    convert = action.type if callable(action.type) else None
    if convert is None or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [convert(v) if isinstance(v, str) else v for v in value]
    if isinstance(value, str) and not (action.nargs in ("+", "*") and convert is str):
        return convert(value)
    return value


def _file_defaults(parser: HfArgumentParser, options: argparse.Namespace) -> tuple[dict, Optional[str]]:
    """Merge the recipe and config file into one `{dest: value}` dict, checking every key names a flag."""
    config = load_config_file(options.config) if options.config else {}
    recipe = options.recipe or config.pop("recipe", None)
    config.pop("recipe", None)
    if recipe is None and not options.config and options.model_name_or_path is None:
        recipe = DEFAULT_RECIPE
    merged: dict[str, Any] = {}
    sources = [(f"recipe {recipe!r}", load_recipe(recipe))] if recipe else []
    sources.append((f"config {options.config!r}", config))
    actions = {action.dest: action for action in parser._actions}
    for source, values in sources:
        # Recipes use transformers 5.23's field names; older versions know those fields by their old names.
        values = {(RENAMED_FIELDS[key] if key not in actions and RENAMED_FIELDS.get(key) in actions else key): value
                  for key, value in values.items()}
        unknown = [key for key in values if key not in actions or key in _RUN_FLAGS]
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, list(actions), n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(
                f"Unknown key(s) in {source}: {', '.join(hints)}. Keys are neat-train flags without the dashes "
                "(`neat-train --help` lists them)."
            )
        for key, value in values.items():
            try:
                merged[key] = _convert(actions[key], value)
            except (TypeError, ValueError) as error:
                raise ValueError(f"Bad value {value!r} for {key!r} in {source}: {error}") from error
    return merged, recipe


def parse_args(argv: Optional[Sequence[str]] = None) -> tuple[ArgumentTuple, Optional[str]]:
    """Parse `neat-train` arguments into the four dataclasses (after applying the recipe / config defaults).

    `NeatTrainingArguments` resolves `--deepspeed` (a path or a bundled name such as `zero3`) and, on a machine
    without a GPU, sets up the gloo process group DeepSpeed needs before the world size is read.

    Returns:
        `((model_args, data_args, neat_args, training_args), recipe_name)`.

    Raises:
        UnknownRecipeError: `--recipe` names no shipped recipe or file.
        ValueError: an unknown flag, or an unknown key or bad value in a recipe/config file.
        DeepSpeedConfigError: the DeepSpeed config is missing or invalid.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser()
    options = _pre_parse(argv)
    defaults, recipe = _file_defaults(parser, options)
    parser.set_defaults(**defaults)
    namespace, unknown = parser.parse_known_args(argv)
    if unknown:
        flags = [a.split("=", 1)[0] for a in unknown if a.startswith("-")]
        known = [s for action in parser._actions for s in action.option_strings]
        hints = [
            f"{flag}" + (f" (did you mean {close[0]}?)" if (close := difflib.get_close_matches(flag, known, n=1)) else "")
            for flag in flags
        ]
        raise ValueError(f"Unrecognized arguments: {' '.join(unknown)}. {'; '.join(hints)}".rstrip(". ") + ".")
    values = vars(namespace)
    explicit = set(defaults) | {a.lstrip("-").split("=", 1)[0].replace("-", "_") for a in argv if a.startswith("--")}
    if values["task"] == "image-classification" and "remove_unused_columns" not in explicit:
        values["remove_unused_columns"] = False  # the image transform reads the raw image column
    if not values.get("use_cpu") and int(os.environ.get("WORLD_SIZE", "1")) > 1 and not _has_accelerator():
        # Under torchrun on a machine without a GPU, TrainingArguments only join the process group (gloo) with
        # use_cpu=True; otherwise every rank trains alone on the whole dataset (measured with transformers 5.24).
        logger.info("Distributed launch without a GPU: setting use_cpu=True (gloo backend).")
        values["use_cpu"] = True
    outputs = []
    for dtype in _DATACLASSES:
        names = {f.name for f in dataclasses.fields(dtype) if f.init}
        outputs.append(dtype(**{k: v for k, v in values.items() if k in names}))
    return tuple(outputs), recipe  # type: ignore[return-value]


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


# -------------------------------------------------------------------------------------------------------------------


@dataclass
class PreparedJob:
    """Everything [`prepare`] built: the trainer, ready to train, and what the summary reports."""

    trainer: Any
    model_args: ModelArguments
    data_args: DataArguments
    training_args: NeatTrainingArguments
    recipe: Optional[str]
    num_train: int
    num_eval: int


def _load_tokenizer(model_args: ModelArguments, task: str):
    from transformers import AutoImageProcessor, AutoTokenizer

    name = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    common = {"revision": model_args.model_revision, "trust_remote_code": model_args.trust_remote_code,
              "cache_dir": model_args.cache_dir}
    if task == "image-classification":
        return AutoImageProcessor.from_pretrained(name, **common)
    tokenizer = AutoTokenizer.from_pretrained(name, **common)
    if tokenizer.pad_token is None:
        # LLaMA-2 pads with <unk> in LLM-Adapters; LLaMA-3 has no <unk>, so <eos> (padded labels are -100 anyway).
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def _load_model(model_args: ModelArguments, task: str, labels: Optional[tuple[int, Optional[list[str]], bool]]):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageClassification, AutoModelForSequenceClassification

    kwargs: dict[str, Any] = {
        "revision": model_args.model_revision,
        "trust_remote_code": model_args.trust_remote_code,
        "cache_dir": model_args.cache_dir,
    }
    if model_args.torch_dtype is not None:
        kwargs["dtype"] = model_args.torch_dtype if model_args.torch_dtype == "auto" else getattr(torch, model_args.torch_dtype)
    if model_args.attn_implementation is not None:
        kwargs["attn_implementation"] = model_args.attn_implementation
    kwargs.update(_quantization_kwargs(model_args))
    if task == "causal-lm":
        return AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path, **kwargs)
    num_labels, names, regression = labels if labels is not None else (model_args.num_labels or 2, None, False)
    num_labels = model_args.num_labels or num_labels
    kwargs["num_labels"] = num_labels
    if names:
        kwargs["id2label"] = dict(enumerate(names))
        kwargs["label2id"] = {name: i for i, name in enumerate(names)}
    if task == "sequence-classification":
        if regression:
            kwargs["problem_type"] = "regression"
        return AutoModelForSequenceClassification.from_pretrained(model_args.model_name_or_path, **kwargs)
    # A checkpoint fine-tuned on other classes (or none, like the -in21k ViTs) gets a fresh head.
    return AutoModelForImageClassification.from_pretrained(
        model_args.model_name_or_path, ignore_mismatched_sizes=True, **kwargs
    )


def _quantization_kwargs(model_args: ModelArguments) -> dict[str, Any]:
    """`quantization_config` and `device_map` for `from_pretrained` with --load_in_4bit / --load_in_8bit, else {}.

    bitsandbytes places the quantized weights while loading, so each process loads onto its own device (TRL's
    `get_kbit_device_map`): GPU `LOCAL_RANK`, or the CPU.
    """
    import torch

    from neat_hf.quantization import bnb_config_from_kwargs

    config = bnb_config_from_kwargs(model_args.quantization_kwargs())
    if config is None:
        return {}
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    return {"quantization_config": config, "device_map": {"": device}}


def _load_tokenizer_and_model(model_args: ModelArguments, task: str, labels):
    from neat_hf.trainers import default_job

    if not default_job.is_builtin(model_args.model_name_or_path):
        return _load_tokenizer(model_args, task), _load_model(model_args, task, labels)
    if model_args.model_name_or_path not in default_job.BUILTIN_MODELS:
        raise ValueError(
            f"Unknown built-in model {model_args.model_name_or_path!r}. Built-in models: {list(default_job.BUILTIN_MODELS)}."
        )
    if task != "causal-lm":
        raise ValueError(f"{model_args.model_name_or_path} is a causal LM; it cannot be used with --task {task}.")
    import torch

    if not torch.cuda.is_available():
        _use_one_cpu_thread_for_the_tiny_model()
    tokenizer = default_job.build_default_tokenizer()
    dtype = None if model_args.torch_dtype in (None, "auto") else getattr(torch, model_args.torch_dtype)
    model = default_job.build_default_base_model(tokenizer, dtype=dtype)
    quantization = _quantization_kwargs(model_args)
    if quantization:  # bitsandbytes quantizes while loading a checkpoint: round-trip the built model through one
        from transformers import AutoModelForCausalLM

        with tempfile.TemporaryDirectory(prefix="neat-tiny-llama-") as folder:
            model.save_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=model.dtype, **quantization)
    return tokenizer, model


def _build_inputs(raw: Any, tokenizer: Any, dataset_format: str, data_args: DataArguments) -> tuple[Any, ...]:
    """Turn raw splits into model inputs: `(datasets, data_collator, compute_metrics, preprocess_logits_for_metrics)`."""
    import torch
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding

    from neat_hf.trainers import data as data_lib

    workers = data_args.preprocessing_num_workers
    if dataset_format in ("instruction", "metamathqa"):
        datasets = data_lib.preprocess_causal_lm(
            raw, tokenizer, dataset_format=dataset_format, cutoff_len=data_args.cutoff_len,
            train_on_inputs=data_args.train_on_inputs, prompt_template=data_args.prompt_template, num_proc=workers,
        )
        collator = DataCollatorForSeq2Seq(
            tokenizer, padding=True, label_pad_token_id=data_lib.IGNORE_INDEX,
            pad_to_multiple_of=8 if torch.cuda.is_available() else None,
        )
        return datasets, collator, data_lib.causal_lm_metrics, data_lib.argmax_logits
    if dataset_format == "text-classification":
        datasets = data_lib.preprocess_text_classification(raw, tokenizer, data_args, num_proc=workers)
        return datasets, DataCollatorWithPadding(tokenizer), data_lib.classification_metrics, None
    for split, dataset in raw.items():
        dataset.set_transform(
            data_lib.image_transform(tokenizer, data_args.image_column, data_args.label_column, train=split == "train")
        )
    return raw, data_lib.collate_images, data_lib.classification_metrics, None


def _use_one_cpu_thread_for_the_tiny_model() -> None:
    """Measured on 2 busy CPU cores: the tiny model's matmuls are too small to gain from intra-op threads, and
    spinning OpenMP threads made 300 steps take 344 s on two threads against 10 s on one; without flushing
    denormals the step rate halved after ~1000 steps (33 steps/s steady with flushing)."""
    import torch

    torch.set_flush_denormal(True)
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
        logger.info("builtin:tiny-llama on CPU: one intra-op thread (set OMP_NUM_THREADS to override).")


def prepare(
    model_args: ModelArguments,
    data_args: DataArguments,
    neat_args: NeatArguments,
    training_args: NeatTrainingArguments,
    *,
    recipe: Optional[str] = None,
) -> PreparedJob:
    """Check every input, load data and model, add the NEAT adapter and build the [`NeatTrainer`] — no training yet.

    The checks run cheapest first, so bad input fails before anything large is loaded: NEAT config values, the
    output folder (an adapter for another base model is refused unless `--overwrite_output_dir`), the dataset's
    columns, then target-module matching on the loaded model.

    Raises:
        MissingColumnsError: the dataset lacks the columns the recipe's `dataset_format` needs (they are named).
        NoTargetModulesError: `neat_target_modules` matched no layer of the model.
        NeatError: `output_dir` holds an adapter for a different base model.
        ValueError: any other invalid argument.
    """
    from transformers import set_seed

    from neat_hf import get_neat_model, prepare_model_for_kbit_training
    from neat_hf.trainers import data as data_lib
    from neat_hf.trainers.trainer import NeatTrainer, _check_output_dir

    task = model_args.task
    dataset_format = data_lib.resolve_dataset_format(task, data_args.dataset_format)
    neat_config = neat_args.to_neat_config(
        task=task, base_model_name_or_path=model_args.model_name_or_path, revision=model_args.model_revision
    )
    _check_output_dir(training_args, model_args.model_name_or_path)
    if dataset_format == "image-classification" and training_args.remove_unused_columns:
        raise ValueError(
            "Image classification needs remove_unused_columns=False: the image transform reads the raw "
            f"{data_args.image_column!r} column, which the Trainer would drop as unused. Pass "
            "--remove_unused_columns false (neat-train does so by default for --task image-classification)."
        )

    with training_args.main_process_first(desc="loading the dataset"):
        raw = data_lib.load_raw_datasets(data_args, seed=training_args.seed, cache_dir=model_args.cache_dir)
    data_lib.check_columns(raw, dataset_format, data_args, recipe=recipe)
    labels = data_lib.label_info(raw["train"], data_args.label_column) if task != "causal-lm" else None

    tokenizer, model = _load_tokenizer_and_model(model_args, task, labels)
    if task == "causal-lm" and getattr(model.config, "use_cache", None):
        model.config.use_cache = False  # no KV cache while training (and none with gradient checkpointing)
    if getattr(model.config, "pad_token_id", None) is None and getattr(tokenizer, "pad_token_id", None) is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if model_args.load_in_4bit or model_args.load_in_8bit:
        # What PEFT's QLoRA recipe does: frozen base, fp32 outside the quantized layers, input grads for checkpointing.
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=bool(getattr(training_args, CHECKPOINTING_FIELD))
        )
    # Seed right before the adapter is drawn, so that every rank (and every rerun) starts from the same A.
    set_seed(training_args.seed)
    model = get_neat_model(model, neat_config)

    with training_args.main_process_first(desc="preprocessing the dataset"):
        datasets, collator, metrics, preprocess_logits = _build_inputs(raw, tokenizer, dataset_format, data_args)

    trainer = NeatTrainer(
        model=model,
        args=training_args,
        train_dataset=datasets["train"],
        eval_dataset=datasets.get("validation"),
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=metrics,
        preprocess_logits_for_metrics=preprocess_logits,
    )
    # Named in the model card that saves and Hub pushes write (Hub datasets only: local paths stay private).
    trainer.neat_dataset_name = data_args.dataset_name
    return PreparedJob(
        trainer=trainer,
        model_args=model_args,
        data_args=data_args,
        training_args=training_args,
        recipe=recipe,
        num_train=len(datasets["train"]),
        num_eval=len(datasets["validation"]) if "validation" in datasets else 0,
    )


def _resume_value(value: Optional[str]) -> Any:
    if isinstance(value, str) and value.lower() in ("true", "last", "latest"):
        return True
    return value


def run(job: PreparedJob) -> dict[str, Any]:
    """Evaluate (before), train, save the adapter, evaluate (after).

    Returns:
        `dict` with `before` and `after` eval metrics (empty without an eval split), `train` metrics, `output_dir`,
        `is_main_process` and `runtime_s`.
    """
    trainer, args = job.trainer, job.training_args
    start = time.perf_counter()
    has_eval = trainer.eval_dataset is not None
    before: dict[str, float] = {}
    if has_eval and job.data_args.eval_before_training:
        if args.deepspeed:
            # DeepSpeed can only run evaluation before training under ZeRO-3, and doing so wraps the model early.
            logger.warning("Skipping the evaluation before training under DeepSpeed; the eval after training still runs.")
        else:
            before = trainer.evaluate(metric_key_prefix="eval")
    train_output = trainer.train(resume_from_checkpoint=_resume_value(args.resume_from_checkpoint))
    trainer.save_model(args.output_dir)
    trainer.save_state()
    after = trainer.evaluate(metric_key_prefix="eval") if has_eval else {}
    trainer.save_metrics("train", train_output.metrics)
    if before:
        trainer.save_metrics("before", before, combined=False)
    if after:
        trainer.save_metrics("eval", after)
    return {
        "before": before,
        "after": after,
        "train": dict(train_output.metrics),
        "output_dir": os.path.abspath(args.output_dir),
        "is_main_process": trainer.is_world_process_zero(),
        "runtime_s": time.perf_counter() - start,
        "num_train": job.num_train,
        "num_eval": job.num_eval,
    }


def main(
    model_args: ModelArguments,
    data_args: DataArguments,
    neat_args: NeatArguments,
    training_args: NeatTrainingArguments,
    *,
    recipe: Optional[str] = None,
) -> dict[str, Any]:
    """Train a NEAT adapter as `neat-train` does: [`prepare`] (all checks, loading, the adapter) then [`run`].

    Features:
        - base model by Hub id or local folder (`AutoModelForCausalLM`, `…ForSequenceClassification`,
          `…ForImageClassification` by `task`), or the built-in tiny LLaMA;
        - instruction data with the LLM-Adapters template and the loss on the response only, GLUE-style text
          classification, image classification;
        - separate NEAT / head learning rates, DeepSpeed ZeRO-2/3 (also on CPU), resume from a checkpoint;
        - before/after evaluation, the adapter (PEFT PEANUT files) saved to `output_dir`.

    Raises:
        MissingColumnsError, NoTargetModulesError, NeatError, ValueError: see [`prepare`]; all before training.

    Example:
        >>> from neat_hf.trainers.train import main, parse_args
        >>> (model_args, data_args, neat_args, training_args), recipe = parse_args(["--max_steps", "5"])
        >>> results = main(model_args, data_args, neat_args, training_args, recipe=recipe)
        >>> results["after"]["eval_exact_match"] >= results["before"]["eval_exact_match"]
        True
    """
    return run(prepare(model_args, data_args, neat_args, training_args, recipe=recipe))


# -------------------------------------------------------------------------------------------------------------------


def _print_recipes() -> None:
    names = list_recipes()
    width = max(len(name) for name in names)
    print("Recipes (neat-train --recipe NAME):")
    for name in names:
        print(f"  {name:<{width}}  {recipe_summary(name)}")


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return str(value)


def _print_summary(results: dict[str, Any], job: PreparedJob) -> None:
    before, after = results["before"], results["after"]
    keys = [k for k in after if k.startswith("eval_") and not k.endswith(("_runtime", "_per_second", "_time"))]
    print()
    title = f"neat-train: {job.recipe or 'custom'} run, {job.num_train} train / {job.num_eval} eval examples, "
    print(title + f"{results['runtime_s']:.0f} s")
    if keys:
        width = max(len(k) for k in keys)
        print(f"  {'metric':<{width}}  {'before':>10}  {'after':>10}")
        for key in keys:
            print(f"  {key:<{width}}  {_format_value(before.get(key, '-')):>10}  {_format_value(after[key]):>10}")
    if after and not before:
        reason = "DeepSpeed" if job.training_args.deepspeed else "--eval_before_training false"
        print(f"  (no evaluation before training: {reason})")
    if "train_loss" in results["train"]:
        print(f"  train_loss (mean over the run): {results['train']['train_loss']:.4f}")
    print(f"Adapter saved to {results['output_dir']}")


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `neat-train` console script (and `python -m neat_hf.trainers.train`)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if _pre_parse(argv).list:
            _print_recipes()
            return 0
        (model_args, data_args, neat_args, training_args), recipe = parse_args(argv)
        if training_args.should_log:
            logging.getLogger("neat_hf").setLevel(logging.INFO)
        job = prepare(model_args, data_args, neat_args, training_args, recipe=recipe)
    except USER_ERRORS as error:
        print(f"neat-train: error: {error}", file=sys.stderr)
        return 2
    results = run(job)
    if results["is_main_process"]:
        _print_summary(results, job)
    _leave_process_group()
    return 0


def _leave_process_group() -> None:
    """End a distributed run in step on every rank (gloo/DeepSpeed threads left at interpreter exit can abort it)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(cli())
