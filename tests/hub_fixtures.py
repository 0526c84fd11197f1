"""pytest fixtures around the loopback Hub (`hub_server.py`), for any test that pushes to or pulls from "the Hub".

Use it from a test module with

    from hub_fixtures import hub_server  # noqa: F401  (pytest finds fixtures imported into a test module)

    def test_push(hub_server):
        ...  # huggingface_hub / transformers / peft in this process now talk to hub_server.endpoint
        assert "adapter_model.safetensors" in hub_server.files("neat-tester/my-adapter")

The fixture gives each test its own server, an empty `HF_HOME`/`HF_HUB_CACHE` under `tmp_path`, a dummy `HF_TOKEN`
(`hub_server.token`; never a real one: the login token file is redirected too), telemetry off, and checks at teardown
that the client made no request the server does not implement. For subprocesses (e.g. running a console script),
pass `env=hub_server.env` (built by `hub_server.hub_env`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_server import DUMMY_TOKEN, HubServer, hub_env, patch_hub_endpoint, run_hub_server


@pytest.fixture
def hub_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    from huggingface_hub import constants

    home = tmp_path / "hf_home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    for name, value in {
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache),
        "HF_TOKEN": DUMMY_TOKEN,
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    # huggingface_hub read these when it was imported: patch the module copies too.
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    with run_hub_server() as server, patch_hub_endpoint(server.endpoint):
        server.token = DUMMY_TOKEN  # type: ignore[attr-defined]
        server.cache_dir = str(cache)  # type: ignore[attr-defined]
        server.env = hub_env(server.endpoint, home)  # type: ignore[attr-defined]
        yield server
        assert not server.unhandled, (
            f"the client called endpoints the loopback hub does not implement: {server.unhandled}"
        )


def assert_no_token(text: str | bytes, token: str = DUMMY_TOKEN) -> None:
    """Fail if `token` appears in `text` (a card, a config, a commit message, captured logs)."""
    needle = token.encode() if isinstance(text, bytes) else token
    assert needle not in text, "the Hub token leaked into output that is written, logged or uploaded"


# ---------------------------------------------------------------------------------------------------- adapter helpers
LM_EVAL_RESULTS = {
    # Shape of the results_<date>.json that `lm_eval --output_path` writes (lm-eval 0.4.x), trimmed to what matters.
    "results": {
        "commonsense": {"alias": "commonsense", "acc,none": 0.5, "acc_stderr,none": 0.05},
        "arc_easy": {
            "alias": " - arc_easy",
            "acc,none": 0.25,
            "acc_stderr,none": 0.0433,
            "acc_norm,none": 0.3,
            "acc_norm_stderr,none": 0.046,
        },
        "boolq": {"alias": " - boolq", "acc,none": 0.75, "acc_stderr,none": "N/A"},
        "gsm8k": {
            "alias": "gsm8k",
            "exact_match,strict-match": 0.125,
            "exact_match_stderr,strict-match": 0.03,
            "exact_match,flexible-extract": 0.2,
            "exact_match_stderr,flexible-extract": 0.04,
        },
    },
    "groups": {"commonsense": {"alias": "commonsense", "acc,none": 0.5, "acc_stderr,none": 0.05}},
    "group_subtasks": {"commonsense": ["arc_easy", "boolq"], "gsm8k": []},
    "configs": {
        "arc_easy": {
            "task": "arc_easy",
            "dataset_path": "allenai/ai2_arc",
            "dataset_name": "ARC-Easy",
            "training_split": "train",
            "validation_split": "validation",
            "test_split": "test",
            "output_type": "multiple_choice",
            "num_fewshot": 0,
        },
        "boolq": {
            "task": "boolq",
            "dataset_path": "super_glue",
            "dataset_name": "boolq",
            "training_split": "train",
            "validation_split": "validation",
            "output_type": "multiple_choice",
        },
        "gsm8k": {
            "task": "gsm8k",
            "dataset_path": "openai/gsm8k",
            "dataset_name": "main",
            "test_split": "test",
            "output_type": "generate_until",
        },
    },
    "versions": {"arc_easy": 1.0, "boolq": 2.0, "gsm8k": 3.0, "commonsense": None},
    "n-shot": {"arc_easy": 0, "boolq": 0, "gsm8k": 5, "commonsense": 0},
    "higher_is_better": {"arc_easy": {"acc": True, "acc_norm": True}},
    "n-samples": {"arc_easy": {"original": 2376, "effective": 8}, "boolq": {"original": 3270, "effective": 8}},
    "config": {"model": "neat", "model_args": "pretrained=base,adapter=repo", "limit": 8, "batch_size": "1"},
    "git_hash": "abc1234",
    "date": 1795000000.0,
}


def make_adapter(seed: int = 0, **config_overrides):
    """A tiny LLaMA with a non-identity NEAT adapter (B random: `init_weights=False`); different seeds, different B."""
    import torch
    from conftest import tiny_llama

    from neat_hf import NeatConfig, get_neat_model

    kwargs = dict(r=4, target_modules=["q_proj", "v_proj"], init_weights=False, task_type="CAUSAL_LM")
    kwargs.update(config_overrides)
    base = tiny_llama()
    torch.manual_seed(1000 + seed)
    return get_neat_model(base, NeatConfig(**kwargs))


__all__ = ["LM_EVAL_RESULTS", "assert_no_token", "hub_server", "make_adapter"]
