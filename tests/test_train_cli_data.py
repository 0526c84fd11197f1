"""`neat_hf.cli.train.data`: the LLM-Adapters template, prompt masking, cutoff, loaders, column checks and metrics."""

from __future__ import annotations

import numpy as np
import pytest
from train_cli_helpers import (
    COMMONSENSE_ROWS,
    METAMATHQA_ROWS,
    SST2_ROWS,
    byte_level_bpe_tokenizer,
    write_json_list,
    write_jsonl,
)

from neat_hf.cli.train import data as data_lib
from neat_hf.cli.train import data_sources
from neat_hf.cli.train import default_job
from neat_hf.cli.train import metrics as metrics_lib
from neat_hf.cli.train.script_args import DataArguments
from neat_hf.errors import DatasetError


@pytest.fixture(scope="module")
def bpe():
    return byte_level_bpe_tokenizer()


def test_llm_adapters_template_exact_text():
    assert data_lib.format_instruction_prompt("Q?", "ctx") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nQ?\n\n### Input:\nctx\n\n### Response:\n"
    )
    assert data_lib.format_instruction_prompt("Q?", "") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nQ?\n\n### Response:\n"
    )
    assert data_lib.format_instruction_prompt("Q?", template="llm-adapters-short") == (
        "### Instruction:\nQ?\n\n### Response:\n"
    )
    with pytest.raises(ValueError, match="llm-adapters"):
        data_lib.format_instruction_prompt("Q?", template="chatml")


@pytest.mark.parametrize("row", COMMONSENSE_ROWS[:2] + COMMONSENSE_ROWS[3:])
def test_prompt_tokens_are_masked_and_response_tokens_kept(bpe, row):
    prompt = data_lib.format_instruction_prompt(row["instruction"], row["input"])
    encoded = data_lib.tokenize_prompt_response(prompt, row["output"], bpe, cutoff_len=512)
    ids, labels = encoded["input_ids"], encoded["labels"]
    assert len(ids) == len(labels) == len(encoded["attention_mask"])
    assert ids[0] == bpe.bos_token_id and ids[-1] == bpe.eos_token_id
    kept = [i for i, label in enumerate(labels) if label != data_lib.IGNORE_INDEX]
    # The labelled tokens are one contiguous tail: the response, then EOS.
    assert kept == list(range(kept[0], len(ids)))
    assert [labels[i] for i in kept] == [ids[i] for i in kept]
    assert bpe.decode(ids[kept[0] : -1]) == row["output"]
    assert bpe.decode(ids[1 : kept[0]]) == prompt


def test_train_on_inputs_labels_everything(bpe):
    row = COMMONSENSE_ROWS[0]
    prompt = data_lib.format_instruction_prompt(row["instruction"])
    encoded = data_lib.tokenize_prompt_response(prompt, row["output"], bpe, cutoff_len=512, train_on_inputs=True)
    assert encoded["labels"] == encoded["input_ids"]


def test_cutoff_truncates_and_drops_eos(bpe):
    row = COMMONSENSE_ROWS[0]
    prompt = data_lib.format_instruction_prompt(row["instruction"])
    full = data_lib.tokenize_prompt_response(prompt, row["output"], bpe, cutoff_len=512)
    n_prompt = sum(label == data_lib.IGNORE_INDEX for label in full["labels"])
    cut = data_lib.tokenize_prompt_response(prompt, row["output"], bpe, cutoff_len=n_prompt + 2)
    assert len(cut["input_ids"]) == n_prompt + 2
    assert cut["input_ids"][-1] != bpe.eos_token_id  # no room for EOS, as in LLM-Adapters
    assert sum(label != data_lib.IGNORE_INDEX for label in cut["labels"]) == 2


def test_slow_tokenizer_fallback_masks_the_same_prefix(bpe):
    class Slow:
        """A tokenizer without offsets (is_fast False): the prompt length decides the mask, as in LLM-Adapters."""

        is_fast = False
        eos_token_id = bpe.eos_token_id

        def __call__(self, text, **kwargs):
            kwargs.pop("return_offsets_mapping", None)
            return bpe(text, **kwargs)

    row = COMMONSENSE_ROWS[1]
    prompt = data_lib.format_instruction_prompt(row["instruction"])
    fast = data_lib.tokenize_prompt_response(prompt, row["output"], bpe, cutoff_len=512)
    slow = data_lib.tokenize_prompt_response(prompt, row["output"], Slow(), cutoff_len=512)
    assert fast == slow


def test_preprocess_drops_rows_without_response_tokens(bpe, caplog):
    from datasets import Dataset, DatasetDict

    datasets = DatasetDict({"train": Dataset.from_list(COMMONSENSE_ROWS)})
    processed = data_lib.preprocess_causal_lm(datasets, bpe, dataset_format="instruction", cutoff_len=512)
    assert len(processed["train"]) == len(COMMONSENSE_ROWS)
    assert processed["train"].column_names == ["input_ids", "attention_mask", "labels"]
    with pytest.raises(ValueError, match="raise --cutoff_len"):
        data_lib.preprocess_causal_lm(datasets, bpe, dataset_format="instruction", cutoff_len=8)


def test_metamathqa_rows_use_query_as_instruction(bpe):
    from datasets import Dataset, DatasetDict

    datasets = DatasetDict({"train": Dataset.from_list(METAMATHQA_ROWS)})
    processed = data_lib.preprocess_causal_lm(datasets, bpe, dataset_format="metamathqa", cutoff_len=512)
    row, source = processed["train"][0], METAMATHQA_ROWS[0]
    kept = [t for t, label in zip(row["input_ids"], row["labels"]) if label != data_lib.IGNORE_INDEX]
    assert bpe.decode(kept[:-1]) == source["response"]
    prompt_ids = [t for t, label in zip(row["input_ids"], row["labels"]) if label == data_lib.IGNORE_INDEX]
    assert bpe.decode(prompt_ids[1:]) == data_lib.format_instruction_prompt(source["query"])


# ------------------------------------------------------------------------------------------------ loading


def test_load_json_list_and_jsonl_files(tmp_path):
    train = write_json_list(tmp_path / "commonsense_170k.json", COMMONSENSE_ROWS)
    valid = write_json_list(tmp_path / "valid.json", COMMONSENSE_ROWS[:2])
    loaded = data_sources.load_raw_datasets(DataArguments(train_file=train, validation_file=valid))
    assert sorted(loaded["train"].column_names) == ["answer", "input", "instruction", "output"]
    assert (len(loaded["train"]), len(loaded["validation"])) == (4, 2)
    jsonl = write_jsonl(tmp_path / "mmqa.jsonl", METAMATHQA_ROWS)
    loaded = data_sources.load_raw_datasets(DataArguments(dataset_name=jsonl, eval_split_size=1))  # a file path works too
    assert (len(loaded["train"]), len(loaded["validation"])) == (2, 1)


def test_load_headerless_tsv_with_column_names(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("".join(f"{r['label']}\t{r['sentence']}\n" for r in SST2_ROWS), encoding="utf-8")
    loaded = data_sources.load_raw_datasets(
        DataArguments(train_file=str(path), column_names="label,sentence", max_train_samples=3)
    )
    assert loaded["train"].column_names == ["label", "sentence"]
    assert loaded["train"][0] == {"label": 1, "sentence": SST2_ROWS[0]["sentence"]}
    assert len(loaded["train"]) == 3


def test_load_csv_with_header(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("sentence,label\n" + "".join(f"\"{r['sentence']}\",{r['label']}\n" for r in SST2_ROWS))
    loaded = data_sources.load_raw_datasets(DataArguments(train_file=str(path)))
    assert loaded["train"][1]["label"] == 0 and "validation" not in loaded


def test_loader_errors_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="--dataset_name .* or --train_file"):
        data_sources.load_raw_datasets(DataArguments())
    with pytest.raises(DatasetError, match="does not exist"):
        data_sources.load_raw_datasets(DataArguments(train_file=str(tmp_path / "nope.json")))
    odd = tmp_path / "data.xml"
    odd.write_text("<a/>")
    with pytest.raises(ValueError, match="Cannot tell the format"):
        data_sources.load_raw_datasets(DataArguments(train_file=str(odd)))
    with pytest.raises(ValueError, match="Built-in datasets"):
        data_sources.load_raw_datasets(DataArguments(dataset_name="builtin:nope"))
    good = write_jsonl(tmp_path / "x.jsonl", COMMONSENSE_ROWS)
    with pytest.raises(ValueError, match="no 'test' split"):
        data_sources.load_raw_datasets(DataArguments(train_file=good, eval_split="test"))


@pytest.mark.parametrize(
    ("fmt", "rows", "extra", "missing"),
    [
        ("instruction", [{"question": "q", "answer": "a"}], {}, ["instruction", "output"]),
        ("instruction", [{"instruction": "q", "input": "", "answer": "a"}], {}, ["output"]),
        ("metamathqa", [{"query": "q", "output": "a"}], {}, ["response"]),
        ("text-classification", [{"text": "good", "label": 1}], {}, ["sentence"]),
        ("text-classification", [{"sentence": "good"}], {}, ["label"]),
        ("text-classification", [{"sentence1": "a", "label": 1}], {"dataset_config_name": "mrpc"}, ["sentence2"]),
        ("image-classification", [{"img": "x", "label": 1}], {}, ["image"]),
    ],
)
def test_missing_columns_are_named(tmp_path, fmt, rows, extra, missing):
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    args = DataArguments(train_file=path, **extra)
    loaded = data_sources.load_raw_datasets(args)
    with pytest.raises(data_lib.MissingColumnsError) as info:
        data_lib.check_columns(loaded, fmt, args, recipe="some/recipe")
    message = str(info.value)
    assert f"missing column(s) {missing}" in message and "some/recipe" in message
    assert str(sorted(rows[0])) in message  # what the data has


def test_column_flags_rename_what_is_checked(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "good", "y": 1}])
    args = DataArguments(train_file=path, text_column="text", label_column="y")
    data_lib.check_columns(data_sources.load_raw_datasets(args), "text-classification", args)


def test_builtin_number_words_is_in_the_commonsense_schema():
    train, evaluation = default_job.generate_number_words(100, 20, seed=3)
    assert set(train[0]) == {"instruction", "input", "output", "answer"}
    assert not {tuple(r.items()) for r in train} & {tuple(r.items()) for r in evaluation}
    for row in train + evaluation:
        assert row["output"] == f"the correct answer is {row['answer']}"
    assert default_job.generate_number_words(100, 20, seed=3) == (train, evaluation)
    with pytest.raises(ValueError, match="distinct examples"):
        default_job.generate_number_words(10**6, 1)


def test_default_tokenizer_covers_the_task():
    tokenizer = default_job.build_default_tokenizer()
    train, _ = default_job.generate_number_words(200, 10)
    for row in train:
        for template in data_lib.PROMPT_TEMPLATES:
            prompt = data_lib.format_instruction_prompt(row["instruction"], row["input"], template=template)
            ids = tokenizer(prompt + row["output"])["input_ids"]
            assert tokenizer.unk_token_id not in ids
    assert tokenizer(" 17")["input_ids"][0] == tokenizer.bos_token_id


# ------------------------------------------------------------------------------------------------ metrics


def test_causal_lm_metrics():
    class Pred:
        pass

    labels = np.array([[-100, -100, 5, 6], [-100, 7, 8, -100]])
    # predictions are for the next position: prediction[t] scores labels[t + 1]
    predictions = np.array([[0, 5, 6, 0], [7, 9, 0, 0]])
    pred = Pred()
    pred.predictions, pred.label_ids = predictions, labels
    metrics = metrics_lib.causal_lm_metrics(pred)
    assert metrics == {"token_accuracy": pytest.approx(3 / 4), "exact_match": pytest.approx(1 / 2)}


def test_classification_metrics_match_sklearn():
    matthews_corrcoef = pytest.importorskip("sklearn.metrics").matthews_corrcoef

    class Pred:
        pass

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 50)
    logits = rng.normal(size=(50, 3))
    logits[np.arange(50), labels] += 0.8
    pred = Pred()
    pred.predictions, pred.label_ids = logits, labels
    metrics = metrics_lib.classification_metrics(pred)
    assert metrics["accuracy"] == pytest.approx((logits.argmax(-1) == labels).mean())
    assert metrics["matthews_correlation"] == pytest.approx(matthews_corrcoef(labels, logits.argmax(-1)))
    pred.predictions, pred.label_ids = labels[:, None] + rng.normal(scale=0.1, size=(50, 1)), labels.astype(float)
    assert metrics_lib.classification_metrics(pred)["pearson"] > 0.95
