"""The embedded default job: a tiny LLaMA, a word-level tokenizer and a task, all built locally.

`neat-train` with no arguments runs the `default` recipe, which names the two built-in sources defined here:

- `model_name_or_path: builtin:tiny-llama` — a small [`~transformers.LlamaForCausalLM`] built from
  `recipes/tiny_llama_config.json` (random weights drawn under a fixed seed, so every run, and
  [`build_default_base_model`] later, gives the same frozen base), with a word-level tokenizer made with the
  `tokenizers` library from the task's own vocabulary.
- `dataset_name: builtin:number-words` — a small instruction task in the exact Commonsense170K schema
  (`instruction` / `input` / `output` / `answer`): "What number comes after 17?" → "the correct answer is 18", "Which
  number is larger?" with input "12 or 31" → "the correct answer is 31", and their mirror images. It goes through the
  same LLM-Adapters template, prompt masking and cutoff as the commonsense recipes.

Nothing is downloaded. A frozen random base cannot do the task, so the before/after evaluation shows what the NEAT
adapter alone learned.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from tokenizers.pre_tokenizers import Whitespace
from transformers import LlamaConfig, PreTrainedTokenizerFast

from neat_hf.errors import TrainingArgumentError
from neat_hf.trainers.prompts import PROMPT_TEMPLATES, format_instruction_prompt

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM

BUILTIN_PREFIX = "builtin:"
TINY_LLAMA = "builtin:tiny-llama"
NUMBER_WORDS = "builtin:number-words"
BUILTIN_MODELS = (TINY_LLAMA,)
BUILTIN_DATASETS = (NUMBER_WORDS,)
#: The packaged LLaMA config of `builtin:tiny-llama`.
TINY_LLAMA_CONFIG_PATH = Path(__file__).with_name("recipes") / "tiny_llama_config.json"

#: Seed of the frozen tiny base. Fixed (not `--seed`) so an adapter trained with any seed fits the same base.
BASE_MODEL_SEED = 1234
#: Largest number in the task; numbers are single word-level tokens "0" … str(MAX_NUMBER).
MAX_NUMBER = 39

_SPECIAL_TOKENS = {"pad": "<pad>", "unk": "<unk>", "bos": "<s>", "eos": "</s>"}

_SKILLS = (
    ("What number comes after {a} ?", "", "after"),
    ("What number comes before {a} ?", "", "before"),
    ("Which number is larger ?", "{a} or {b}", "larger"),
    ("Which number is smaller ?", "{a} or {b}", "smaller"),
)


def is_builtin(name: str | None) -> bool:
    """Whether `name` names a source this module builds (`builtin:…`) rather than a Hub id or a path."""
    return isinstance(name, str) and name.startswith(BUILTIN_PREFIX)


def _answer(skill: str, a: int, b: int) -> int:
    if skill == "after":
        return a + 1
    if skill == "before":
        return a - 1
    if skill == "larger":
        return max(a, b)
    return min(a, b)


def _all_examples() -> list[dict[str, str]]:
    examples = []
    for instruction, input_template, skill in _SKILLS:
        if skill == "after":
            pairs = [(a, a) for a in range(0, MAX_NUMBER)]
        elif skill == "before":
            pairs = [(a, a) for a in range(1, MAX_NUMBER + 1)]
        else:
            pairs = [(a, b) for a in range(MAX_NUMBER + 1) for b in range(MAX_NUMBER + 1) if a != b]
        for a, b in pairs:
            answer = str(_answer(skill, a, b))
            examples.append(
                {
                    "instruction": instruction.format(a=a),
                    "input": input_template.format(a=a, b=b),
                    "output": f"the correct answer is {answer}",
                    "answer": answer,
                }
            )
    return examples


def generate_number_words(
    num_train: int = 2048, num_eval: int = 256, *, seed: int = 0
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Generates the `builtin:number-words` task: disjoint train and eval examples in the Commonsense170K schema.

    Args:
        num_train (`int`, *optional*, defaults to 2048):
            Number of training examples (drawn without replacement; capped by the number of distinct examples).
        num_eval (`int`, *optional*, defaults to 256):
            Number of held-out examples, none of which appears in the training set.
        seed (`int`, *optional*, defaults to 0):
            Seed of the draw.

    Returns:
        `tuple[list[dict], list[dict]]`: train and eval rows with keys `instruction`, `input`, `output`, `answer`.
    """
    rows = _all_examples()
    random.Random(seed).shuffle(rows)
    if num_train + num_eval > len(rows):
        raise TrainingArgumentError(
            f"builtin:number-words has {len(rows)} distinct examples; asked for {num_train} train + {num_eval} eval."
        )
    return rows[num_eval : num_eval + num_train], rows[:num_eval]


def _task_vocabulary() -> list[str]:
    words: set[str] = set()
    for row in _all_examples():
        for template in PROMPT_TEMPLATES:
            prompt = format_instruction_prompt(row["instruction"], row["input"], template=template)
            words.update(_pre_tokenize(prompt + " " + row["output"]))
    return sorted(words)


def _pre_tokenize(text: str) -> list[str]:
    return [piece for piece, _ in Whitespace().pre_tokenize_str(text)]


def build_default_tokenizer() -> PreTrainedTokenizerFast:
    """Builds the word-level tokenizer of the embedded default with the `tokenizers` library (no download).

    The vocabulary is every word of the LLM-Adapters template and of `builtin:number-words`; `<s>` is prepended as
    LLaMA's tokenizer does, `</s>` ends a response and `<pad>` pads.

    Returns:
        [`~transformers.PreTrainedTokenizerFast`]
    """
    specials = [_SPECIAL_TOKENS[k] for k in ("pad", "unk", "bos", "eos")]
    vocab = {token: i for i, token in enumerate(specials + _task_vocabulary())}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=_SPECIAL_TOKENS["unk"]))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    bos = _SPECIAL_TOKENS["bos"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, vocab[bos])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=_SPECIAL_TOKENS["pad"],
        unk_token=_SPECIAL_TOKENS["unk"],
        bos_token=bos,
        eos_token=_SPECIAL_TOKENS["eos"],
        padding_side="right",
        model_max_length=512,
    )


def load_tiny_llama_config(vocab_size: int | None = None) -> LlamaConfig:
    """Reads the packaged `recipes/tiny_llama_config.json` into a [`~transformers.LlamaConfig`].

    Args:
        vocab_size (`int`, *optional*):
            Overrides the vocabulary size (the default tokenizer's length).
    """
    values: dict[str, Any] = json.loads(TINY_LLAMA_CONFIG_PATH.read_text("utf-8"))
    if vocab_size is not None:
        values["vocab_size"] = vocab_size
    return LlamaConfig(**values)


def build_default_base_model(
    tokenizer: PreTrainedTokenizerFast | None = None, *, dtype: torch.dtype | None = None
) -> LlamaForCausalLM:
    """Builds the frozen base of the embedded default: the tiny LLaMA with weights drawn under `BASE_MODEL_SEED`.

    The global RNG is left untouched, so `--seed` keeps governing the adapter's initialisation and the data order.

    Args:
        tokenizer ([`~transformers.PreTrainedTokenizerFast`], *optional*):
            The tokenizer whose ids the model uses; [`build_default_tokenizer`] when omitted.
        dtype (`torch.dtype`, *optional*):
            Parameter dtype; float32 when omitted.

    Example:
        >>> from neat_hf import NeatModel
        >>> base = build_default_base_model()
        >>> model = NeatModel.from_pretrained(base, "neat-output")  # the adapter `neat-train` saved
    """
    tokenizer = tokenizer if tokenizer is not None else build_default_tokenizer()
    config = load_tiny_llama_config(vocab_size=len(tokenizer))
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    # lazy: the modeling code costs seconds of import, and neat-train's argument parsing imports this module
    from transformers import LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(BASE_MODEL_SEED)
        model = LlamaForCausalLM(config)
    if dtype is not None:
        model = model.to(dtype)
    model.config.name_or_path = TINY_LLAMA
    return model
