"""Local fixtures for the `neat-train` tests: tiny models saved to folders with their own tokenizers, and data files in
the exact Commonsense170K / MetaMathQA / SST-2 schemas. Nothing touches the network."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

COMMONSENSE_ROWS = [
    {
        "instruction": "Please choose the correct answer to the question: Where would you put a cup after drinking? "
        "Answer1: cupboard Answer2: sky Answer format: answer1/answer2",
        "input": "",
        "output": "the correct answer is answer1",
        "answer": "answer1",
    },
    {
        "instruction": "Please answer the following question with true or false, question: is the sky green? "
        "Answer format: true/false",
        "input": "",
        "output": "the correct answer is false",
        "answer": "false",
    },
    {
        "instruction": "Please choose the correct solution to the question: how do you open a jar? "
        "Solution1: twist the lid Solution2: shout at it Answer format: solution1/solution2",
        "input": "",
        "output": "the correct answer is solution1",
        "answer": "solution1",
    },
    {
        "instruction": "Please choose the correct ending to complete the given sentence: The man lifts the weights "
        "Ending1: and puts them down. Ending2: and eats them. Answer format: ending1/ending2",
        "input": "gym",
        "output": "the correct answer is ending1",
        "answer": "ending1",
    },
]

METAMATHQA_ROWS = [
    {
        "query": "What is 2 plus 3?",
        "response": "2 + 3 = 5. The answer is: 5",
        "type": "GSM_Rephrased",
        "original_question": "What is 2 plus 3?",
    },
    {
        "query": "Tom has 4 apples and eats 1. How many are left?",
        "response": "4 - 1 = 3. The answer is: 3",
        "type": "GSM_AnsAug",
        "original_question": "Tom has 4 apples and eats 1. How many are left?",
    },
    {
        "query": "What is 6 times 7?",
        "response": "6 * 7 = 42. The answer is: 42",
        "type": "MATH_AnsAug",
        "original_question": "What is 6 times 7?",
    },
]

SST2_ROWS = [
    {"sentence": "a stirring , funny and finally transporting film", "label": 1},
    {"sentence": "apparently reassembled from the cutting room floor", "label": 0},
    {"sentence": "a gorgeous , witty , seductive movie", "label": 1},
    {"sentence": "the story is dull and the acting is flat", "label": 0},
    {"sentence": "one of the best films of the year", "label": 1},
    {"sentence": "a tedious and pointless mess", "label": 0},
]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def write_json_list(path: Path, rows: list[dict]) -> str:
    """LLM-Adapters ships its data as one JSON list (commonsense_170k.json), not JSON lines."""
    path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return str(path)


def _corpus() -> list[str]:
    from neat_hf.cli.train.data import PROMPT_TEMPLATES

    texts = [template for pair in PROMPT_TEMPLATES.values() for template in pair]
    for row in COMMONSENSE_ROWS:
        texts += [row["instruction"], row["input"], row["output"]]
    for row in METAMATHQA_ROWS:
        texts += [row["query"], row["response"]]
    texts += [row["sentence"] for row in SST2_ROWS]
    return texts


def byte_level_bpe_tokenizer(vocab_size: int = 400):
    """A GPT-2-style byte-level BPE trained on the test texts, with LLaMA-like `<s>` / `</s>` specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(_corpus() * 3, trainer=trainer)
    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def wordpiece_tokenizer():
    """A BERT-style word-level tokenizer ([CLS] … [SEP]) over the SST-2 rows."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for row in SST2_ROWS for w in row["sentence"].split()})
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {token: i for i, token in enumerate(specials + words)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
    )


def save_tiny_llama(folder: Path, seed: int = 0) -> str:
    """A 2-layer LLaMA with a byte-level BPE tokenizer (no pad token, like LLaMA-3), saved as a local checkpoint."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = byte_level_bpe_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def save_tiny_bert(folder: Path, seed: int = 0) -> str:
    """A 2-layer BERT encoder (no classification head weights saved: the head is new, as with roberta-base)."""
    from transformers import BertConfig, BertModel

    tokenizer = wordpiece_tokenizer()
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def save_tiny_vit(folder: Path, seed: int = 0) -> str:
    """A 2-layer ViT for 16×16 images with its image processor."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(seed)
    config = ViTConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=48)
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(folder)
    return str(folder)


def write_image_folder(folder: Path, per_class: int = 4) -> str:
    """`train/` and `validation/` splits of an imagefolder dataset with two classes (red-ish, blue-ish squares)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "validation"):
        for label, channel in (("blue", 2), ("red", 0)):
            target = folder / split / label
            target.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 80, size=(20, 20, 3), dtype=np.uint8)
                pixels[..., channel] = 200
                Image.fromarray(pixels).save(target / f"{i}.png")
    return str(folder)


def adapter_files(folder: str) -> set[str]:
    return set(os.listdir(folder))
