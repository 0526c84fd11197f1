"""Offline fixtures for the lm-eval tests: a tiny LLaMA with a word-level tokenizer, a NEAT adapter for it, and every
bundled task pointed at a few local JSON rows in the exact schema of its Hub dataset.

Task overrides: lm-eval indexes include paths in order and a later task of the same name replaces an earlier one, so
a test folder that holds `boolq.yaml` (`include:` lm-eval's own boolq YAML, `dataset_path: json`) makes the stock
`boolq` inside our `neat_commonsense` group read local data, and likewise for our `neat_*_gen` tasks.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import lm_eval
import yaml

from neat_hf.eval_harness import TASKS_DIR

STOCK_TASKS_DIR = Path(lm_eval.__file__).resolve().parent / "tasks"

# --------------------------------------------------------------------------------------------------------------
# Rows in the schema of each Hub dataset (field names and types as `datasets` returns them).
# --------------------------------------------------------------------------------------------------------------

BOOLQ = [  # aps/super_glue, boolq
    {"question": "is the sky blue on a clear day", "passage": "The sky is blue on a clear day.", "idx": 0, "label": 1},
    {"question": "do fish live in trees", "passage": "Fish live in water.", "idx": 1, "label": 0},
]
PIQA = [  # baber/piqa
    {"goal": "To dry wet hands", "sol1": "rub them with a towel", "sol2": "put them in water", "label": 0},
    {"goal": "To cool hot soup", "sol1": "heat it on the stove", "sol2": "let it sit for a while", "label": 1},
]
SIQA = [  # lighteval/siqa (label is a string "1".."3")
    {"context": "Robin cut the sandwich in half.", "question": "What does Robin need before this?",
     "answerA": "a knife", "answerB": "a car", "answerC": "a boat", "label": "1"},
    {"context": "Kai lost the game.", "question": "How would Kai feel?",
     "answerA": "happy", "answerB": "sad", "answerC": "hungry", "label": "2"},
]
HELLASWAG = [  # Rowan/hellaswag (label is a string)
    {"ind": 4, "activity_label": "Washing dishes", "ctx_a": "A man fills the sink with water.", "ctx_b": "he",
     "ctx": "A man fills the sink with water. he", "endings": ["adds soap to the water.", "drives a car.",
                                                              "climbs a tree.", "eats the sink."],
     "source_id": "activitynet~v_1", "split": "val", "split_type": "indomain", "label": "0"},
    {"ind": 9, "activity_label": "Running", "ctx_a": "A woman laces her shoes.", "ctx_b": "she",
     "ctx": "A woman laces her shoes. she", "endings": ["sleeps on the road.", "starts to run down the road.",
                                                        "paints the shoes.", "sings a song."],
     "source_id": "activitynet~v_2", "split": "val", "split_type": "indomain", "label": "1"},
]
WINOGRANDE = [  # allenai/winogrande, winogrande_xl (answer is a string "1"/"2")
    {"sentence": "The cup fell off the table because the _ was too close to the edge.",
     "option1": "cup", "option2": "table", "answer": "1"},
    {"sentence": "The jeans fit worse than the shirt because I had tried the _ on at the store.",
     "option1": "jeans", "option2": "shirt", "answer": "2"},
]
ARC_EASY = [  # allenai/ai2_arc, ARC-Easy
    {"id": "e1", "question": "Which part of a plant takes in water?",
     "choices": {"text": ["roots", "flowers", "seeds", "fruit"], "label": ["A", "B", "C", "D"]}, "answerKey": "A"},
    {"id": "e2", "question": "What do animals need to live?",
     "choices": {"text": ["sand", "water", "glass"], "label": ["1", "2", "3"]}, "answerKey": "2"},
]
ARC_CHALLENGE = [  # allenai/ai2_arc, ARC-Challenge
    {"id": "c1", "question": "Which two things interact most in the water cycle?",
     "choices": {"text": ["oceans and the moon", "oceans and the sun", "lakes and the moon", "lakes and the sun"],
                 "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
    {"id": "c2", "question": "What is the main source of energy for the water cycle?",
     "choices": {"text": ["the sun", "the wind", "the moon", "the soil", "the sea"],
                 "label": ["A", "B", "C", "D", "E"]}, "answerKey": "A"},
]
OPENBOOKQA = [  # allenai/openbookqa, main
    {"id": "o1", "question_stem": "A hemisphere has summer when",
     "choices": {"text": ["it is tilted to the moon", "it spins", "it is tilted to the sun", "it rains"],
                 "label": ["A", "B", "C", "D"]}, "answerKey": "C"},
    {"id": "o2", "question_stem": "Plants need light to",
     "choices": {"text": ["make food", "sleep", "walk", "sing"], "label": ["A", "B", "C", "D"]}, "answerKey": "A"},
]
GSM8K = [  # openai/gsm8k, main
    {"question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
     "answer": "Tom has 3 + 4 = <<3+4=7>>7 apples.\n#### 7"},
    {"question": "A box holds 1,200 pens. How many pens are in 2 boxes?",
     "answer": "2 boxes hold 2 * 1200 = <<2*1200=2400>>2400 pens.\n#### 2,400"},
]
HENDRYCKS_MATH = [  # EleutherAI/hendrycks_math, any subject
    {"problem": "What is $1+1$?", "level": "Level 1", "type": "Algebra",
     "solution": "We have $1+1=\\boxed{2}$."},
    {"problem": "Simplify $\\frac{2}{4}$.", "level": "Level 1", "type": "Algebra",
     "solution": "Dividing by 2 gives $\\boxed{\\frac{1}{2}}$."},
]

# task name -> (rows, split the task reads, YAML to include, YAML keys to blank out)
_STOCK = {
    "boolq": (BOOLQ, "validation", STOCK_TASKS_DIR / "super_glue/boolq/default.yaml", ["training_split"]),
    "piqa": (PIQA, "validation", STOCK_TASKS_DIR / "piqa/piqa.yaml", ["training_split"]),
    "social_iqa": (SIQA, "validation", STOCK_TASKS_DIR / "siqa/siqa.yaml", ["training_split"]),
    "hellaswag": (HELLASWAG, "validation", STOCK_TASKS_DIR / "hellaswag/hellaswag.yaml", ["training_split"]),
    "winogrande": (WINOGRANDE, "validation", STOCK_TASKS_DIR / "winogrande/default.yaml", ["training_split"]),
    "arc_easy": (ARC_EASY, "test", STOCK_TASKS_DIR / "arc/arc_easy.yaml", ["training_split", "validation_split"]),
    "arc_challenge": (ARC_CHALLENGE, "test", STOCK_TASKS_DIR / "arc/arc_challenge.yaml",
                      ["training_split", "validation_split"]),
    "openbookqa": (OPENBOOKQA, "test", STOCK_TASKS_DIR / "openbookqa/openbookqa.yaml",
                   ["training_split", "validation_split"]),
}
_COMMONSENSE = TASKS_DIR / "commonsense"
_MATH = TASKS_DIR / "math"
_GEN = {
    "neat_boolq_gen": (BOOLQ, "validation"),
    "neat_piqa_gen": (PIQA, "validation"),
    "neat_social_iqa_gen": (SIQA, "validation"),
    "neat_hellaswag_gen": (HELLASWAG, "validation"),
    "neat_winogrande_gen": (WINOGRANDE, "validation"),
    "neat_arc_easy_gen": (ARC_EASY, "test"),
    "neat_arc_challenge_gen": (ARC_CHALLENGE, "test"),
    "neat_openbookqa_gen": (OPENBOOKQA, "test"),
    "neat_gsm8k_gen": (GSM8K, "test"),
    **{f"neat_hendrycks_math_gen_{s}": (HENDRYCKS_MATH, "test") for s in
       ("algebra", "counting_and_prob", "geometry", "intermediate_algebra", "num_theory", "prealgebra", "precalc")},
}


def write_local_tasks(folder: Path) -> Path:
    """Write a task folder that points every bundled task (and the stock ones our groups use) at local JSON rows."""
    folder.mkdir(parents=True, exist_ok=True)
    cache_dir = str(folder / "hf_datasets_cache")
    overrides: dict[str, tuple[list, str, Path, list[str]]] = dict(_STOCK)
    for name, (rows, split) in _GEN.items():
        source = (_MATH if "math" in name or "gsm8k" in name else _COMMONSENSE) / f"{name}.yaml"
        overrides[name] = (rows, split, source, [])
    for name, (rows, split, source, blank) in overrides.items():
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in rows))
        config = {
            "include": str(source),
            "task": name,
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": {split: str(data)}, "cache_dir": cache_dir},
            **{key: None for key in blank},
        }
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder


# --------------------------------------------------------------------------------------------------------------
# Tiny model, tokenizer and adapter
# --------------------------------------------------------------------------------------------------------------

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]


def _all_text() -> str:
    from neat_hf.eval_harness.protocol import ALPACA_PROMPT

    parts = [ALPACA_PROMPT, "the correct answer is true false Answer format",
             " ".join(f"answer{i} Answer{i} ending{i} Ending{i} solution{i} Solution{i} option{i} Option{i}"
                      for i in range(1, 6)),
             "Please choose answer question solution ending fill in the blank to complete given sentence following "
             "with Question Answer Problem Solution boxed frac The is".strip(),
             " ".join(str(i) for i in range(10))]
    for rows in (BOOLQ, PIQA, SIQA, HELLASWAG, WINOGRANDE, ARC_EASY, ARC_CHALLENGE, OPENBOOKQA, GSM8K, HENDRYCKS_MATH):
        parts.append(json.dumps(rows))
    return "\n".join(parts)


def build_tokenizer():
    """A word-level tokenizer (whitespace + punctuation split) whose vocabulary covers every fixture text."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(re.findall(r"\w+|[^\w\s]", _all_text())))
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def build_base_model(folder: Path, seed: int = 0) -> Path:
    """Save a tiny LLaMA and its tokenizer in `folder`, loadable as `pretrained=<folder>`."""
    from conftest import tiny_llama

    tokenizer = build_tokenizer()
    model = tiny_llama(
        seed,
        vocab_size=len(tokenizer),
        max_position_embeddings=1024,  # room for a prompt plus MATH's 512 new tokens
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.2,  # logits of order 1, so a NEAT adapter visibly changes scores and generations
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_adapter(base_dir: Path, folder: Path, seed: int = 1, **config) -> Path:
    """Save a NEAT adapter with non-zero B (so it changes outputs) for the model in `base_dir`."""
    import torch
    from transformers import AutoModelForCausalLM

    from neat_hf import NeatConfig, get_neat_model

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    options = dict(r=4, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"], init_weights=False,
                   base_model_name_or_path=str(base_dir))
    options.update(config)
    torch.manual_seed(seed)
    neat = get_neat_model(model, NeatConfig(**options))
    neat.save_pretrained(folder)
    return folder
