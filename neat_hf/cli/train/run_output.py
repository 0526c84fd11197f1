"""What a finished `neat-train` run leaves for its user, so the adapter leads somewhere:

- with the built-in base (`builtin:tiny-llama`), the base model itself in `output_dir/base_model` (a plain
  transformers folder), so that `NeatModel.from_pretrained`, `neat-hub merge` and `neat-lm-eval` can load it;
- the model card with the real training setup and the before/after metrics (no placeholders);
- [`usage_snippet`]: the short load-and-generate (or load-and-predict) code that `neat-train` prints at the end.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from huggingface_hub import EvalResult

from neat_hf.cli.train import default_job

#: Sub-folder of `output_dir` that holds a copy of a built-in base model.
BASE_MODEL_DIR = "base_model"

_TASK_TYPES = {"causal-lm": "text-generation", "sequence-classification": "text-classification",
               "image-classification": "image-classification"}
_AUTO_CLASSES = {"causal-lm": "AutoModelForCausalLM", "sequence-classification": "AutoModelForSequenceClassification",
                 "image-classification": "AutoModelForImageClassification"}


def base_model_reference(model_name_or_path: str, output_dir: str) -> str:
    """What to pass to `from_pretrained` for the run's base model: the saved copy for a built-in base."""
    if default_job.is_builtin(model_name_or_path):
        return os.path.join(output_dir, BASE_MODEL_DIR)
    return model_name_or_path


def save_builtin_base(job: Any) -> str | None:
    """Save the built-in base model (rebuilt: it is drawn under a fixed seed) and its tokenizer into
    `output_dir/base_model`; None for any other base."""
    name = job.model_args.model_name_or_path
    if not default_job.is_builtin(name):
        return None
    folder = base_model_reference(name, job.training_args.output_dir)
    tokenizer = job.trainer.processing_class
    default_job.build_default_base_model(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_run_card(job: Any, before: dict[str, float], after: dict[str, float]) -> None:
    """Add the run's dataset, paths and before/after evaluation to the trainer's card facts and rewrite the card of
    `output_dir` from them (a later push uploads that card as it is)."""
    trainer, args = job.trainer, job.training_args
    data_args, model_args = job.data_args, job.model_args
    info: dict[str, Any] = {
        "dataset": data_args.dataset_name or os.path.basename(data_args.train_file or "") or None,
        "max_seq_length": data_args.cutoff_len or None,
        "adapter_path": args.output_dir,
        "base_model_path": base_model_reference(model_args.model_name_or_path, args.output_dir),
    }
    for key, value in before.items():
        if _is_score(key):
            info[f"{key} before training"] = round(float(value), 4)
    dataset = info["dataset"] or "eval split"
    results = [
        EvalResult(
            task_type=_TASK_TYPES.get(model_args.task, "text-generation"),
            dataset_type=str(dataset),
            dataset_name=f"{dataset} (held-out split, {job.num_eval} examples)",
            metric_type=key.removeprefix("eval_"),
            metric_value=round(float(value), 4),
        )
        for key, value in after.items()
        if _is_score(key)
    ]
    trainer.neat_card.add(training_info={k: v for k, v in info.items() if v is not None}, eval_results=results)
    trainer.create_model_card()  # after the final evaluation: the loss curve gets its point


def _is_score(key: str) -> bool:
    return key.startswith("eval_") and not key.endswith(("_runtime", "_per_second", "_time", "epoch"))


def evaluation_command(job: Any) -> str | None:
    """The `neat-lm-eval` command that evaluates the saved adapter offline on the bundled task of the built-in data
    (`neat_number_words`: the job's own held-out rows, generated locally), or None for other data."""
    if not default_job.is_builtin(job.data_args.dataset_name) or job.model_args.task != "causal-lm":
        return None
    output_dir = job.training_args.output_dir
    base = base_model_reference(job.model_args.model_name_or_path, output_dir)
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    model_args = f"pretrained={base},adapter={output_dir}"
    quantization = {k: v for k, v in job.model_args.quantization_kwargs().items() if v not in (None, False)}
    model_args += "".join(f",{key}={value}" for key, value in quantization.items())
    return (f"neat-lm-eval --model neat --model_args {model_args} --tasks neat_number_words --device {device} "
            "--batch_size 16")


def _base_loading(model_args: Any, auto: str, base: str) -> tuple[list[str], str]:
    """(imports, expression) that load the run's base model the way the adapter was trained on it: quantized with
    the run's bitsandbytes settings after `--load_in_4bit` / `--load_in_8bit` (H = σ(W0ᵀAᵀ) was learned on that W0)."""
    quantization = {k: v for k, v in model_args.quantization_kwargs().items() if v not in (None, False)}
    if not quantization:
        return [], f"{auto}.from_pretrained({base!r})"
    settings = ", ".join(f"{key}={value!r}" for key, value in quantization.items())
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    return (["from transformers import BitsAndBytesConfig"],
            f"{auto}.from_pretrained(\n    {base!r}, quantization_config=BitsAndBytesConfig({settings}), "
            f"device_map={{'': {device!r}}}\n)")


def usage_snippet(job: Any) -> str:
    """Python that loads the adapter just saved and uses it once (printed at the end of `neat-train`); a quantized
    run's snippet loads the base quantized as it was trained."""
    model_args, data_args, output_dir = job.model_args, job.data_args, job.training_args.output_dir
    base = base_model_reference(model_args.model_name_or_path, output_dir)
    auto = _AUTO_CLASSES.get(model_args.task, "AutoModelForCausalLM")
    imports, load_base = _base_loading(model_args, auto, base)
    if imports:
        load = ["# The adapter was trained on the quantized base: load the base the same way.",
                f"base = {load_base}", f"model = NeatModel.from_pretrained(base, {output_dir!r})"]
    else:
        load = [f"model = NeatModel.from_pretrained({load_base}, {output_dir!r})"]
    lines = [f"from transformers import {auto}, AutoTokenizer", *imports, "from neat_hf import NeatModel"]
    if model_args.task == "causal-lm":
        lines.append("from neat_hf.trainers import format_instruction_prompt")
        if default_job.is_builtin(data_args.dataset_name):
            instruction = "What number comes after 17 ?"
        else:
            instruction = "Your instruction here"
        lines += [
            "",
            f"tokenizer = AutoTokenizer.from_pretrained({output_dir!r})",
            *load,
            "# The adapter learned its task in this prompt format: render every prompt with it.",
            f"prompt = format_instruction_prompt({instruction!r}, template={data_args.prompt_template!r})",
            "inputs = tokenizer(prompt, return_tensors='pt', return_token_type_ids=False)",
            "output = model.generate(**inputs, max_new_tokens=16, do_sample=False)",
            "print(tokenizer.decode(output[0, inputs['input_ids'].shape[1]:], skip_special_tokens=True))",
        ]
    elif model_args.task == "sequence-classification":
        lines += [
            "",
            f"tokenizer = AutoTokenizer.from_pretrained({output_dir!r})",
            *load,
            "inputs = tokenizer('Your text here', return_tensors='pt')",
            "print(model(**inputs).logits.argmax(-1).item())",
        ]
    else:
        lines = [f"from transformers import {auto}", *imports, "from neat_hf import NeatModel", "", *load]
    return "\n".join(lines)
