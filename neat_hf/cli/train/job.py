"""The `neat-train` job: [`prepare`] checks the inputs, loads data and model, adds the NEAT adapter and builds the
[`NeatTrainer`]; [`run`] evaluates, trains, saves the adapter and evaluates again. `train.py` is the command line
around them."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    DataCollatorWithPadding,
    set_seed,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from neat_hf import get_neat_model, prepare_model_for_kbit_training
from neat_hf.errors import HubError, TrainingArgumentError
from neat_hf.hub.error_translation import loading_errors
from neat_hf.io import folder_lock
from neat_hf.quantization import bnb_config_from_kwargs
from neat_hf.cli.train import data as data_lib
from neat_hf.cli.train import data_sources
from neat_hf.cli import model_source
from neat_hf.cli.train import default_job, launch_checks, metrics, run_output
from neat_hf.trainers.interrupt import StopOnSignal, stop_on_signal
from neat_hf.cli.train.script_args import DataArguments, ModelArguments
from neat_hf.trainers.neat_arguments import NeatArguments
from neat_hf.trainers.trainer import NeatTrainer
from neat_hf.trainers.training_args import CHECKPOINTING_FIELD, NeatTrainingArguments

logger = logging.getLogger(__name__)


@dataclass
class PreparedJob:
    """Everything [`prepare`] built: the trainer, ready to train, and what the summary reports."""

    trainer: Any
    model_args: ModelArguments
    data_args: DataArguments
    training_args: NeatTrainingArguments
    recipe: str | None
    num_train: int
    num_eval: int


def _load_tokenizer(model_args: ModelArguments, task: str) -> Any:
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


def _load_model(model_args: ModelArguments, task: str, labels: data_lib.Labels | None) -> Any:
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
    config = bnb_config_from_kwargs(model_args.quantization_kwargs())
    if config is None:
        return {}
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    return {"quantization_config": config, "device_map": {"": device}}


def _load_tokenizer_and_model(
    model_args: ModelArguments, task: str, labels: data_lib.Labels | None
) -> tuple[Any, Any]:
    if not default_job.is_builtin(model_args.model_name_or_path):
        tokenizer, model = _load_tokenizer(model_args, task), _load_model(model_args, task, labels)
        use_cpu_threads_for(model)
        return tokenizer, model
    tokenizer = default_job.build_default_tokenizer()
    dtype = None if model_args.torch_dtype in (None, "auto") else getattr(torch, model_args.torch_dtype)
    model = default_job.build_default_base_model(tokenizer, dtype=dtype)
    use_cpu_threads_for(model)
    quantization = _quantization_kwargs(model_args)
    if quantization:  # bitsandbytes quantizes while loading a checkpoint: round-trip the built model through one
        with tempfile.TemporaryDirectory(prefix="neat-tiny-llama-") as folder:
            model.save_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=model.dtype, **quantization)
    return tokenizer, model


def _build_inputs(raw: Any, tokenizer: Any, dataset_format: str, data_args: DataArguments) -> tuple[Any, ...]:
    """Turn raw splits into model inputs: `(datasets, data_collator, compute_metrics, preprocess_logits_for_metrics)`."""
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
        return datasets, collator, metrics.causal_lm_metrics, metrics.argmax_logits
    if dataset_format == "text-classification":
        datasets = data_lib.preprocess_text_classification(raw, tokenizer, data_args, num_proc=workers)
        return datasets, DataCollatorWithPadding(tokenizer), metrics.classification_metrics, None
    for split, dataset in raw.items():
        dataset.set_transform(
            data_lib.image_transform(tokenizer, data_args.image_column, data_args.label_column, train=split == "train")
        )
    return raw, data_lib.collate_images, metrics.classification_metrics, None


#: On CPU, models below this many parameters train on one intra-op thread (see [`use_cpu_threads_for`]).
ONE_THREAD_MAX_PARAMETERS = 50_000_000


def use_cpu_threads_for(model: Any) -> None:
    """The one CPU threads rule of `neat-train`, for every base (built-in, local folder or Hub id): on a machine
    without a GPU, a model under [`ONE_THREAD_MAX_PARAMETERS`] trains on one intra-op thread, with denormals flushed,
    unless `OMP_NUM_THREADS` is set.

    Measured on 2 busy CPU cores with the built-in tiny LLaMA: its matmuls are too small to gain from intra-op
    threads, and spinning OpenMP threads made 300 steps take 344 s on two threads against 10 s on one; without flushing
    denormals the step rate halved after ~1000 steps (33 steps/s steady with flushing). The same model from a local
    folder trained 8-17x slower before this rule covered it."""
    if torch.cuda.is_available():
        return
    parameters = sum(p.numel() for p in model.parameters())
    if parameters >= ONE_THREAD_MAX_PARAMETERS:
        return
    torch.set_flush_denormal(True)
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
        logger.info("A %.1fM-parameter model on CPU: one intra-op thread (set OMP_NUM_THREADS to override).",
                    parameters / 1e6)


def _check_before_loading(
    model_args: ModelArguments, data_args: DataArguments, training_args: NeatTrainingArguments
) -> None:
    """The checks that need nothing loaded, so careless input fails in one line within a second: the model source
    (and user data meant for a real model), the resume target, then the output folder (never replace trained work
    silently)."""
    name = model_args.model_name_or_path
    if default_job.is_builtin(name):
        if name not in default_job.BUILTIN_MODELS:
            raise TrainingArgumentError(f"Unknown built-in model {name!r}. Built-in models: {list(default_job.BUILTIN_MODELS)}.")
        if model_args.task != "causal-lm":
            raise TrainingArgumentError(f"{name} is a causal LM; it cannot be used with --task {model_args.task}.")
        if data_args.train_file:
            user_data = f"--train_file {data_args.train_file!r}"
        elif data_args.dataset_name and not default_job.is_builtin(data_args.dataset_name):
            user_data = f"--dataset_name {data_args.dataset_name!r}"
        else:
            user_data = None
        if user_data:
            raise TrainingArgumentError(
                f"{user_data} without --model_name_or_path would train the built-in toy model {name} (its word-level "
                "tokenizer only knows the words of builtin:number-words). Pass --model_name_or_path with a Hub id or a "
                "model folder for your data."
            )
    else:
        model_source.check_model_source(name, task=model_args.task, tokenizer_name_or_path=model_args.tokenizer_name_or_path)
    launch_checks.check_launch(model_args, training_args)
    training_args.check_resume_checkpoint()
    if os.path.isdir(training_args.output_dir):  # refuse a run into a folder another run is writing, before loading
        with _output_dir_held(training_args, timeout=0):
            pass
    training_args.check_output_dir(name, new_run=not training_args.resumes())


def prepare(
    model_args: ModelArguments,
    data_args: DataArguments,
    neat_args: NeatArguments,
    training_args: NeatTrainingArguments,
    *,
    recipe: str | None = None,
) -> PreparedJob:
    """Check every input, load data and model, add the NEAT adapter and build the [`NeatTrainer`] — no training yet.

    The checks run cheapest first, so bad input fails before anything large is loaded: NEAT config values, then
    (nothing loaded yet) the model source (and user data with the built-in model), the resume target and the output
    folder (trained work is never replaced unless resuming or `--overwrite_output_dir`; the same public
    `NeatTrainingArguments.check_output_dir` that [`NeatTrainer`] runs), then the dataset's columns, then
    target-module matching on the loaded model. Nothing is written by a refused run.

    Raises:
        MissingColumnsError: the dataset lacks the columns the recipe's `dataset_format` needs (they are named).
        NoTargetModulesError: `neat_target_modules` matched no layer of the model.
        NeatError: `output_dir` holds trained work (or an adapter for a different base model).
        TrainingArgumentError, DatasetError: any other invalid argument or unusable data.
    """
    task = model_args.task
    dataset_format = data_lib.resolve_dataset_format(task, data_args.dataset_format)
    neat_config = neat_args.to_neat_config(
        task=task, base_model_name_or_path=model_args.model_name_or_path, revision=model_args.model_revision
    )
    if dataset_format == "image-classification" and training_args.remove_unused_columns:
        raise TrainingArgumentError(
            "Image classification needs remove_unused_columns=False: the image transform reads the raw "
            f"{data_args.image_column!r} column, which the Trainer would drop as unused. Pass "
            "--remove_unused_columns false (neat-train does so by default for --task image-classification)."
        )
    _check_before_loading(model_args, data_args, training_args)

    with training_args.main_process_first(desc="loading the dataset"):
        raw = data_sources.load_raw_datasets(data_args, seed=training_args.seed, cache_dir=model_args.cache_dir)
    data_lib.check_columns(raw, dataset_format, data_args, recipe=recipe)
    sources = data_sources.split_sources(data_args)
    data_lib.check_values(raw, dataset_format, data_args, sources=sources)
    labels = None
    if task != "causal-lm":  # classification or regression, and every label of every split checked for it
        with training_args.main_process_first(desc="checking the labels"):  # a float column is cast (a cache file)
            raw, labels = data_lib.resolve_labels(
                raw, data_args.label_column, num_labels=model_args.num_labels, sources=sources
            )

    with loading_errors("model", model_args.model_name_or_path, revision=model_args.model_revision, error=TrainingArgumentError):
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
        dataset_name=data_args.dataset_name,
    )
    return PreparedJob(
        trainer=trainer,
        model_args=model_args,
        data_args=data_args,
        training_args=training_args,
        recipe=recipe,
        num_train=len(datasets["train"]),
        num_eval=len(datasets["validation"]) if "validation" in datasets else 0,
    )


def _interrupted(job: PreparedJob, stopper: StopOnSignal, start: float) -> dict[str, Any]:
    """Training stopped on a signal: make sure the step it reached is a checkpoint (the Trainer's own
    `_save_checkpoint`, as for any scheduled save), and report it instead of saving a final adapter."""
    trainer, args = job.trainer, job.training_args
    checkpoint = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}")
    if not os.path.isdir(checkpoint):  # the signal came after the last step ended
        trainer._save_checkpoint(trainer.model, trial=None)
    return {
        "before": {}, "after": {}, "train": {}, "output_dir": os.path.abspath(args.output_dir),
        "is_main_process": trainer.is_world_process_zero(), "runtime_s": time.perf_counter() - start,
        "num_train": job.num_train, "num_eval": job.num_eval,
        "interrupted": {"signal": stopper.received.name, "exit_code": stopper.exit_code, "checkpoint": checkpoint,
                        "step": trainer.state.global_step, "max_steps": trainer.state.max_steps},
    }


@contextlib.contextmanager
def _output_dir_held(args: NeatTrainingArguments, *, timeout: float = 2.0) -> Iterator[None]:
    """Hold `args.output_dir` (created if missing) for one run: another `neat-train` into it is refused in one line
    instead of silently replacing this run's work. Only the main process holds it (every rank of one distributed run
    writes there); the OS drops the lock of a killed run (`neat_hf.io.folder_lock`)."""
    if args.process_index != 0:
        yield
        return
    os.makedirs(args.output_dir, exist_ok=True)
    busy = (f"output_dir {args.output_dir!r} is in use by another run (or a save into it). Wait for it to finish, "
            "or choose another --output_dir.")
    with folder_lock(args.output_dir, timeout=timeout, busy=busy):
        yield


def _resume_value(value: str | None) -> Any:
    if isinstance(value, str) and value.lower() in ("true", "last", "latest"):
        return True
    return value


def run(job: PreparedJob) -> dict[str, Any]:
    """Evaluate (before), train, save the adapter, evaluate (after).

    Returns:
        `dict` with `before` and `after` eval metrics (empty without an eval split), `train` metrics, `output_dir`,
        `is_main_process` and `runtime_s`.
    """
    with _output_dir_held(job.training_args):
        # Checked again under the lock: a run that finished while this one was loading must not be replaced.
        job.training_args.check_output_dir(job.model_args.model_name_or_path, new_run=not job.training_args.resumes())
        return _run(job)


def _run(job: PreparedJob) -> dict[str, Any]:
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
    stopper = StopOnSignal()
    trainer.add_callback(stopper)
    try:
        with stop_on_signal(stopper):
            train_output = trainer.train(resume_from_checkpoint=_resume_value(args.resume_from_checkpoint))
    finally:
        trainer.remove_callback(stopper)
    if stopper.received is not None:
        return _interrupted(job, stopper, start)
    # Everything local first (adapter, state, final evaluation, metrics, card), the Hub push last: a failed push
    # must not lose the result.
    trainer.save_model(args.output_dir, _internal_call=True)
    trainer.save_state()
    after = trainer.evaluate(metric_key_prefix="eval") if has_eval else {}
    trainer.save_metrics("train", train_output.metrics)
    if before:
        trainer.save_metrics("before", before, combined=False)
    if after:
        trainer.save_metrics("eval", after)
    if trainer.is_world_process_zero():
        run_output.save_builtin_base(job)
        run_output.write_run_card(job, before, after)
    if args.push_to_hub:
        try:
            trainer.push_to_hub(commit_message="End of training", revision=args.hub_revision)
        except HubError as err:
            raise HubError(
                f"Training finished and its results are saved in {os.path.abspath(args.output_dir)!r}, but the final "
                f"push failed: {err} Push them later with `neat-hub push {args.output_dir} {args.hub_model_id or 'REPO_ID'}`."
            ) from err
    return {
        "before": before,
        "after": after,
        "train": dict(train_output.metrics),
        "output_dir": os.path.abspath(args.output_dir),
        "is_main_process": trainer.is_world_process_zero(),
        "runtime_s": time.perf_counter() - start,
        "num_train": job.num_train,
        "num_eval": job.num_eval,
        "interrupted": None,
        "snippet": run_output.usage_snippet(job),
        "evaluate": run_output.evaluation_command(job),
    }
