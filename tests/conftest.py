"""Shared fixtures: tiny models built from configs (no downloads), seeded, in fp32.

Every factory returns a fresh model with identical weights for the same seed, so a test can build a reference copy
for stock PEFT next to the one it adapts with neat-hf. The multi-process tests (tests/test_deepspeed.py,
tests/test_fsdp.py) share a tiny LLaMA saved to disk (`base_model`) and its single-process training run
(`single_process`).
"""

from __future__ import annotations

import contextlib
import logging
import os

import ds_driver
import pytest
import torch
from safetensors.torch import load_file

from neat_hf.constants import ADAPTER_WEIGHTS_NAME

try:  # bitsandbytes asks the Hub for a CPU kernel when first imported (peft and transformers import it): import it
    import bitsandbytes  # noqa: F401  before a test points HF_ENDPOINT at the loopback Hub, which has no such endpoint
except ImportError:
    pass

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


#: What torch.distributed / DeepSpeed put in the environment when a process group is started in the test process.
_PROCESS_GROUP_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_SIZE", "CROSS_RANK",
                      "CROSS_SIZE")


@pytest.fixture(autouse=True)
def _no_process_group_outlives_its_test():
    """A test that builds DeepSpeed arguments in-process starts a one-rank gloo group (deepspeed.init_distributed)
    and sets MASTER_PORT: later Trainers would then wrap models in DDP, and subprocesses would inherit a port in use.
    End the group and restore the environment after each test."""
    import torch.distributed as dist

    before = {name: os.environ.get(name) for name in _PROCESS_GROUP_ENV}
    had_group = dist.is_available() and dist.is_initialized()
    yield
    if not had_group and dist.is_available() and dist.is_initialized():
        from accelerate.state import AcceleratorState

        dist.destroy_process_group()
        AcceleratorState._reset_state(reset_partial_state=True)  # accelerate's singletons remember the group
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(autouse=True)
def _restore_neat_hf_log_level():
    """`neat-train`'s `cli()` sets the `neat_hf` logger to INFO for its progress lines; in-process CLI tests must not
    change what later tests' caplog sees."""
    package_logger = logging.getLogger("neat_hf")
    level = package_logger.level
    yield
    package_logger.setLevel(level)


@pytest.fixture(autouse=True, scope="session")
def _trackio_logs_in_a_temporary_folder(tmp_path_factory):
    """Runs with `report_to="trackio"` log locally, to `TRACKIO_DIR`, which trackio reads once, when first imported
    (inside a test): point it into the session's temporary folder instead of the user's HF cache."""
    if "TRACKIO_DIR" not in os.environ:
        os.environ["TRACKIO_DIR"] = str(tmp_path_factory.mktemp("trackio"))
    yield


@contextlib.contextmanager
def stock_peft():
    """Unpatched PEFT inside the block (PEANuT's own dense layer), for the tests that check what stock PEFT does with
    neat-hf's files; the patch is back afterwards whatever happened."""
    from neat_hf.peft_patch import apply_neat_to_peft, is_neat_applied, revert_neat_to_peft

    applied = is_neat_applied()
    revert_neat_to_peft()
    try:
        yield
    finally:
        if applied:
            apply_neat_to_peft()


def tiny_llama(seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    kwargs = dict(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    kwargs.update(overrides)
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**kwargs)).eval()


def tiny_bert_classifier(seed: int = 0, num_labels: int = 2):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
        num_labels=num_labels,
        initializer_range=0.2,  # larger than the default 0.02 so the head gives logits of order 1
    )
    return BertForSequenceClassification(config).eval()


def tiny_vit_classifier(seed: int = 0, num_labels: int = 3):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=16,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        num_labels=num_labels,
        initializer_range=0.2,  # larger than the default 0.02 so the head gives logits of order 1
    )
    return ViTForImageClassification(config).eval()


def tiny_gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64)).eval()


MODEL_FACTORIES = {
    "llama": tiny_llama,
    "bert": tiny_bert_classifier,
    "vit": tiny_vit_classifier,
    "gpt2": tiny_gpt2,
}


def lm_dataset(n: int = 16, length: int = 10, seed: int = 0, extra_column: bool = False):
    """`n` random token sequences of `length` (labels = inputs) for the tiny models' 128-token vocabulary; with
    `extra_column`, a text column the model does not take."""
    from datasets import Dataset

    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 128, (n, length), generator=generator).tolist()
    data = {"input_ids": ids, "labels": ids}
    if extra_column:
        data["text"] = [f"row {i}" for i in range(n)]
    return Dataset.from_dict(data)


def model_inputs(kind: str, seed: int = 1) -> dict[str, torch.Tensor]:
    """A small deterministic batch for a model kind."""
    generator = torch.Generator().manual_seed(seed)
    if kind == "vit":
        return {"pixel_values": torch.randn(2, 3, 16, 16, generator=generator)}
    return {"input_ids": torch.randint(0, 128, (2, 9), generator=generator)}


def model_output(model, inputs) -> torch.Tensor:
    """The logits of a forward pass, in eval mode, without gradients."""
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture
def llama():
    return tiny_llama()


@pytest.fixture(scope="session")
def base_model(tmp_path_factory) -> str:
    """A tiny LLaMA saved to disk, for the launched drivers to load."""
    folder = tmp_path_factory.mktemp("base")
    tiny_llama().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def single_process(base_model, tmp_path_factory) -> str:
    """The reference of the multi-process runs: tests/ds_driver.py's training without DeepSpeed or FSDP, global batch
    8 on one process (in this process)."""
    out = str(tmp_path_factory.mktemp("single"))
    ds_driver.run(ds_driver.parse_args(
        ["--base_model", base_model, "--output_dir", out, "--per_device_train_batch_size", "8", "--merge_check"]
    ))
    trained = load_file(os.path.join(out, ADAPTER_WEIGHTS_NAME))
    # B starts at zero: training moved it far beyond the comparison tolerance.
    assert max(t.abs().max().item() for k, t in trained.items() if "peanut_B" in k) > 1e-2
    return out
