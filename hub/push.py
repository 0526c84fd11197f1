"""`neat-hub push` and `neat-hub merge --push-to-hub`: push an adapter folder, or a merged-model folder, in one commit.

Both stage their files and commit through the core's single Hub path (`neat_hf.hub_commit`: upload whitelist, token
and adapter-key checks, branch creation, one `create_commit`, Hub errors translated), which `NeatModel.push_to_hub` and
the Trainer's Hub mixin use too. What this module adds is the folder handling: [`push_adapter_folder`] validates a
folder written by `save_pretrained` (or a NeatTrainer output / checkpoint folder), copies only adapter, card,
training-info and tokenizer files and rebuilds the card for the target repo; [`push_folder`] uploads a merged model
without pickle-based files.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, EvalResult

from neat_hf.card import write_model_card
from neat_hf.constants import MODEL_CARD_NAME
from neat_hf.errors import AdapterLoadError, NeatError
from neat_hf.hub_commit import (
    ADAPTER_FILES,
    DEFAULT_COMMIT_MESSAGE,
    PICKLE_SUFFIXES,
    TOKENIZER_FILES,
    check_repo_id,
    push_staged,
    validate_adapter_folder,
)

logger = logging.getLogger(__name__)


def push_adapter_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    create_pr: bool = False,
    keep_card: bool = False,
    training_info: Mapping[str, Any] | None = None,
    eval_results: Sequence[EvalResult] | None = None,
    **card_kwargs: Any,
) -> CommitInfo:
    """Push an adapter folder written by `save_pretrained` (or a NeatTrainer output / checkpoint folder) in one commit.

    Uploaded: `adapter_config.json`, `adapter_model.safetensors`, `README.md`, `training_info.json`, tokenizer and
    processor files, and the same files of named adapters in sub-folders. Everything else (optimizer and scheduler
    states, `training_args.bin`, any full-model weights) stays local. The adapter is validated (config fields,
    safetensors readable, PEFT key prefix) before anything is sent.

    Args:
        folder (`str` or `os.PathLike`):
            The adapter folder.
        repo_id, private, token, revision, commit_message, commit_description, create_pr:
            As in [`neat_hf.hub_commit.push_to_hub`].
        keep_card (`bool`, *optional*, defaults to `False`):
            Upload the folder's `README.md` as it is. By default the card is rebuilt from the folder's files (keeping
            its evaluation results), so it names `repo_id` and matches the weights.
        training_info, eval_results, card_kwargs:
            As in [`neat_hf.hub_commit.push_to_hub`]; merged with what the folder already records.

    Returns:
        `huggingface_hub.CommitInfo`

    Raises:
        AdapterLoadError: the folder is not a valid adapter folder (message names the file and problem).
        HubError: the repo, revision or permissions are wrong.
    """
    check_repo_id(repo_id)
    source = Path(folder)
    adapter_dirs = validate_adapter_folder(source)
    with tempfile.TemporaryDirectory(prefix="neat-push-") as staging:
        _stage_adapter_folder(source, Path(staging), adapter_dirs)
        if keep_card:
            if not (Path(staging) / MODEL_CARD_NAME).is_file():
                raise AdapterLoadError(f"keep_card=True but {os.fspath(source)!r} has no {MODEL_CARD_NAME}.")
            rewrite = None
        else:
            card_args = dict(card_kwargs, training_info=training_info, eval_results=eval_results)
            write_model_card(staging, repo_id=repo_id, **card_args)

            def rewrite(full_id: str) -> None:
                write_model_card(staging, repo_id=full_id, **card_kwargs)

        return push_staged(
            staging,
            repo_id,
            private=private,
            token=token,
            revision=revision,
            commit_message=commit_message or DEFAULT_COMMIT_MESSAGE,
            commit_description=commit_description,
            create_pr=create_pr,
            rewrite_card=rewrite,
        )


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload model",
    commit_description: str | None = None,
    create_pr: bool = False,
) -> CommitInfo:
    """Push every file of `folder` (e.g. a merged model from `neat-hub merge`) in one commit, except pickle-based
    files (`*.bin`, `*.pt`, `*.pth`, `*.pkl`, `*.ckpt`), which are skipped with a log line."""
    check_repo_id(repo_id)
    source = Path(folder)
    if not source.is_dir():
        raise NeatError(f"{os.fspath(source)!r} is not a folder.")
    return push_staged(
        os.fspath(source),
        repo_id,
        private=private,
        token=token,
        revision=revision,
        commit_message=commit_message,
        commit_description=commit_description,
        create_pr=create_pr,
        rewrite_card=None,
        exclude_suffixes=PICKLE_SUFFIXES,
    )


def _stage_adapter_folder(source: Path, staging: Path, adapter_dirs: list[Path]) -> None:
    skipped = []
    for directory in adapter_dirs:
        rel = directory.relative_to(source)
        target = staging / rel
        target.mkdir(parents=True, exist_ok=True)
        for item in sorted(directory.iterdir()):
            if not item.is_file():
                continue
            allowed = ADAPTER_FILES | (TOKENIZER_FILES if directory == source else frozenset())
            if item.name in allowed:
                shutil.copy2(item, target / item.name)
            else:
                skipped.append(os.fspath(rel / item.name))
    if skipped:
        logger.info("Not uploading %d file(s) that are not part of an adapter: %s", len(skipped), skipped)
