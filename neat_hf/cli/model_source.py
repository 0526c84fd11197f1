"""Checks of `--model_name_or_path` that run before anything is loaded, so a typo, an empty folder or a machine
without network gets one clear line instead of a library's traceback (or a half-minute of retries).

- a path-like name (`./x`, `/x`, `~/x`, `a/b/c`) that does not exist: "no such folder";
- a local folder without `config.json`, model weights or tokenizer files: the missing files are named;
- a Hub id when the Hub endpoint cannot be reached (and `HF_HUB_OFFLINE` is not set): a hint to use
  `HF_HUB_OFFLINE=1` (cached models) or a local folder, within seconds.
"""

from __future__ import annotations

import glob
import os
import socket
from urllib.parse import urlparse

from huggingface_hub import constants as hub_constants

from neat_hf.errors import TrainingArgumentError

#: Seconds to wait for the Hub endpoint before declaring it unreachable.
REACH_TIMEOUT_S = 3.0
#: Weight files transformers loads (single file, sharded index, or the legacy PyTorch pickle).
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "*.bin.index.json")
#: Files any tokenizer (or image processor) folder has at least one of.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "vocab.txt",
                   "spiece.model", "sentencepiece.bpe.model")
PROCESSOR_FILES = ("preprocessor_config.json", "image_processor_config.json")


def looks_like_path(name: str) -> bool:
    """Whether `name` can only be a local path (a Hub id is `name` or `namespace/name`)."""
    return (
        name.startswith((".", "/", "~")) or os.path.isabs(name) or "\\" in name or name.count("/") > 1
        or name.endswith("/")
    )


def check_model_source(name: str, *, task: str = "causal-lm", tokenizer_name_or_path: str | None = None) -> None:
    """Check that `name` (`--model_name_or_path`) can be loaded, without loading it.

    Raises:
        TrainingArgumentError: one line saying what is wrong (missing folder, missing files by name, no network) and
            what would be right.
    """
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        _check_model_folder(expanded, task=task, needs_tokenizer=tokenizer_name_or_path is None)
        return
    if os.path.exists(expanded):
        raise TrainingArgumentError(
            f"--model_name_or_path {name!r} is a file; pass the model's folder (with config.json) or a Hub id."
        )
    if looks_like_path(name):
        raise TrainingArgumentError(
            f"--model_name_or_path {name!r}: no such folder (looked in {os.path.abspath(expanded)!r}). Pass an "
            "existing model folder (with config.json and weights) or a Hub id such as meta-llama/Llama-2-7b-hf."
        )
    if not hub_constants.HF_HUB_OFFLINE:
        check_hub_reachable(name)


def check_hub_reachable(repo_id: str) -> None:
    """Fail within seconds, with the offline hint, when the Hub endpoint cannot be reached.

    huggingface_hub retries a failed request five times with back-off (about 30 s here) before transformers says
    "We couldn't connect"; one TCP connection with a short timeout tells the same thing at once.
    """
    endpoint = urlparse(hub_constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=REACH_TIMEOUT_S):
            return
    except OSError as err:
        reason = err.strerror or type(err).__name__
    raise TrainingArgumentError(
        f"Cannot reach the Hub ({hub_constants.ENDPOINT}: {reason}) to load {repo_id!r}. Without network, set "
        "HF_HUB_OFFLINE=1 to use models already in the cache, or pass a local model folder to --model_name_or_path."
    )


def _check_model_folder(folder: str, *, task: str, needs_tokenizer: bool) -> None:
    def has(patterns: tuple[str, ...]) -> bool:
        return any(glob.glob(os.path.join(folder, pattern)) for pattern in patterns)

    missing = []
    if not os.path.isfile(os.path.join(folder, "config.json")):
        missing.append("config.json")
    if not has(WEIGHT_PATTERNS):
        missing.append("model weights (model.safetensors, *.safetensors shards with their index, or pytorch_model.bin)")
    if needs_tokenizer:
        if task == "image-classification" and not has(PROCESSOR_FILES):
            missing.append("preprocessor_config.json")
        elif task != "image-classification" and not has(TOKENIZER_FILES):
            missing.append("tokenizer files (tokenizer.json, tokenizer.model or tokenizer_config.json with a vocab)")
    if missing:
        kind = "empty" if not os.listdir(folder) else "incomplete"
        raise TrainingArgumentError(
            f"--model_name_or_path {folder!r} is an {kind} model folder: it lacks {'; '.join(missing)}. Save the "
            "model there with model.save_pretrained() and tokenizer.save_pretrained(), or pass a Hub id."
        )
