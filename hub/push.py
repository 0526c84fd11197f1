"""Push NEAT adapters to the Hugging Face Hub: one commit with the adapter files and their model card.

Everything is staged in a temporary folder first (adapter saved, card written, files checked), then the repo is created
(`create_repo(exist_ok=True)`), a missing branch is created when `revision` names one, and a single `create_commit`
uploads all files, so a failure never leaves a half-pushed adapter. `create_commit` is used rather than `upload_folder`
because, with `hf_xet` installed, huggingface_hub 2.x turns `upload_folder` into a pipeline that may split large uploads
into several commits and does not accept `create_pr` together with `revision`.

We do not inherit transformers' `PushToHubMixin.push_to_hub`: in transformers 5.x it writes its own card
(`library_name: transformers`, no tags, no base model) over the adapter's after saving, which is why stock
`PeftModel.push_to_hub` uploads a blank card.

Tokens come only from huggingface_hub's usual sources (the `token` argument, `HF_TOKEN`, the login cache) and are
never logged; before uploading, the staged files and the commit message are checked not to contain the token.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import CommitInfo, CommitOperationAdd, EvalResult, HfApi
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from neat_hf.constants import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, MODEL_CARD_NAME
from neat_hf.errors import AdapterLoadError, NeatError

from .card import TRAINING_INFO_NAME, write_model_card

if TYPE_CHECKING:
    from neat_hf import NeatModel

logger = logging.getLogger(__name__)

DEFAULT_COMMIT_MESSAGE = "Upload NEAT adapter"

#: Files a pushed adapter folder may contain besides the adapter itself: the card, the training setup and the
#: tokenizer / processor files the Trainer saves next to the adapter. Anything else (optimizer states, pickled
#: `training_args.bin`, full `model.safetensors` weights) is left out.
TOKENIZER_FILES = frozenset(
    {
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "tokenizer.model",
        "spiece.model",
        "sentencepiece.bpe.model",
        "vocab.json",
        "vocab.txt",
        "merges.txt",
        "chat_template.jinja",
        "chat_template.json",
        "preprocessor_config.json",
        "processor_config.json",
    }
)
ADAPTER_FILES = frozenset({ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, MODEL_CARD_NAME, TRAINING_INFO_NAME})
#: Never uploaded from a merged-model folder either: pickle-based formats.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")

_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")


class HubError(NeatError):
    """A Hub operation failed; the message names the repo, revision and file involved and what to do."""


# ---------------------------------------------------------------------------------------------------- errors
@contextlib.contextmanager
def hub_errors(
    action: str, repo_id: str, *, revision: str | None = None, filename: str | None = None
) -> Iterator[None]:
    """Re-raise huggingface_hub's not-found / auth errors as [`HubError`] naming what is missing.

    The original exception is chained (`raise ... from err`). Messages never contain the token.
    """
    where = f"{repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    try:
        yield
    except RevisionNotFoundError as err:
        raise HubError(
            f"Cannot {action} {where}: revision {revision or 'main'!r} does not exist in the repo "
            "(pass an existing branch, tag or commit, or a new branch name to push to)."
        ) from err
    except RepositoryNotFoundError as err:
        raise HubError(
            f"Cannot {action} {where}: the repo does not exist or your token cannot access it "
            "(check the repo id; for private repos set HF_TOKEN or run `hf auth login`)."
        ) from err
    except EntryNotFoundError as err:
        raise HubError(f"Cannot {action} {where}: file {filename or '?'!r} does not exist there.") from err
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status in (401, 403):
            raise HubError(
                f"Cannot {action} {where}: the Hub refused the request ({status}). Set HF_TOKEN to a token with write "
                "access to this namespace, pass token=..., or run `hf auth login`."
            ) from err
        raise


# ---------------------------------------------------------------------------------------------------- public API
def push_to_hub(
    model: NeatModel,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    create_pr: bool = False,
    training_info: Mapping[str, Any] | None = None,
    eval_results: Sequence[EvalResult] | None = None,
    **card_kwargs: Any,
) -> CommitInfo:
    """Push a [`NeatModel`]'s adapter and its model card to the Hub in one commit.

    The commit holds `adapter_config.json`, `adapter_model.safetensors` (PEFT PEANUT format: stock `peft` loads it),
    `README.md` (see [`neat_hf.hub.card.build_model_card`]) and, when given, `training_info.json`. Base model weights
    are never uploaded.

    Args:
        model ([`NeatModel`]):
            The model whose adapter(s) to push (all adapters, non-default ones in sub-folders, as `save_pretrained`).
        repo_id (`str`):
            `"namespace/name"`, or `"name"` for your own namespace. Created if missing.
        private (`bool`, *optional*):
            Visibility of a newly created repo (ignored if it exists).
        token (`str` or `bool`, *optional*):
            Hub token; defaults to `HF_TOKEN` or the login cache. Never logged or written anywhere.
        revision (`str`, *optional*):
            Branch to push to; created from `main` if it does not exist. Defaults to `main`.
        commit_message (`str`, *optional*, defaults to `"Upload NEAT adapter"`), commit_description (`str`, *optional*)
        create_pr (`bool`, *optional*, defaults to `False`):
            Open a pull request (against `revision`) instead of committing to it.
        training_info (`dict`, *optional*):
            Training setup for the card (dataset, epochs, learning rates, ...); also uploaded as training_info.json.
        eval_results (`list[EvalResult]`, *optional*):
            Evaluation results for the card's `model-index` (see `eval_results_from_lm_eval`).
        card_kwargs:
            `base_model`, `datasets`, `license`, `language`, `pipeline_tag`, `tags`, `model_name` for the card.

    Returns:
        `huggingface_hub.CommitInfo` of the commit (with `pr_url` when `create_pr=True`).

    Raises:
        HubError: the repo, revision or permissions are wrong (message names which).
        NeatError: invalid card inputs, or the token would end up in an uploaded file or the commit message.

    Example:

    ```python
    >>> model.push_to_hub("my-user/llama-neat-r8", training_info={"dataset": "yahma/alpaca-cleaned"})
    ```
    """
    _check_repo_id(repo_id)
    with tempfile.TemporaryDirectory(prefix="neat-push-") as staging:
        model.save_pretrained(staging)
        card_args = dict(card_kwargs, training_info=training_info, eval_results=eval_results)
        write_model_card(staging, model=model, repo_id=repo_id, keep_eval_results=False, **card_args)
        return _push_staged(
            staging,
            repo_id,
            private=private,
            token=token,
            revision=revision,
            commit_message=commit_message or DEFAULT_COMMIT_MESSAGE,
            commit_description=commit_description,
            create_pr=create_pr,
            rewrite_card=lambda full_id: write_model_card(
                staging, model=model, repo_id=full_id, keep_eval_results=False, **card_args
            ),
        )


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
            As in [`push_to_hub`].
        keep_card (`bool`, *optional*, defaults to `False`):
            Upload the folder's `README.md` as it is. By default the card is rebuilt from the folder's files (keeping
            its evaluation results), so it names `repo_id` and matches the weights.
        training_info, eval_results, card_kwargs:
            As in [`push_to_hub`]; merged with what the folder already records.

    Returns:
        `huggingface_hub.CommitInfo`

    Raises:
        AdapterLoadError: the folder is not a valid adapter folder (message names the file and problem).
        HubError: the repo, revision or permissions are wrong.
    """
    _check_repo_id(repo_id)
    source = Path(folder)
    adapter_dirs = _validate_adapter_folder(source)
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

        return _push_staged(
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
    _check_repo_id(repo_id)
    source = Path(folder)
    if not source.is_dir():
        raise NeatError(f"{os.fspath(source)!r} is not a folder.")
    return _push_staged(
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


# ---------------------------------------------------------------------------------------------------- internals
def _check_repo_id(repo_id: Any) -> None:
    if not isinstance(repo_id, str) or not re.fullmatch(r"([\w.\-]+/)?[\w.\-]+", repo_id) or ".." in repo_id:
        raise NeatError(f"repo_id must look like 'namespace/name' (or 'name'), got {repo_id!r}.")


def _validate_adapter_folder(folder: Path) -> list[Path]:
    """Check every adapter in `folder` (the default one at the top, named ones in sub-folders) before any upload."""
    from neat_hf.io import read_adapter_config

    if not folder.is_dir():
        raise AdapterLoadError(f"Adapter folder {os.fspath(folder)!r} does not exist.")
    dirs = [folder] if (folder / ADAPTER_CONFIG_NAME).is_file() else []
    dirs += sorted(
        p.parent for p in folder.glob(f"*/{ADAPTER_CONFIG_NAME}") if not p.parent.name.startswith("checkpoint-")
    )
    if not dirs:
        raise AdapterLoadError(
            f"No {ADAPTER_CONFIG_NAME} in {os.fspath(folder)!r} "
            f"(it holds: {sorted(p.name for p in folder.iterdir())}); "
            "pass the folder NeatModel.save_pretrained wrote."
        )
    for directory in dirs:
        read_adapter_config(directory / ADAPTER_CONFIG_NAME)
        weights = directory / ADAPTER_WEIGHTS_NAME
        if not weights.is_file():
            raise AdapterLoadError(f"{os.fspath(directory)!r} has {ADAPTER_CONFIG_NAME} but no {ADAPTER_WEIGHTS_NAME}.")
        _check_adapter_keys(weights)
    return dirs


def _check_adapter_keys(weights: Path) -> None:
    from safetensors import safe_open

    from neat_hf.constants import FILE_KEY_PREFIX

    try:
        with safe_open(os.fspath(weights), framework="pt") as handle:
            keys = list(handle.keys())
    except Exception as err:  # safetensors raises its own error types
        raise AdapterLoadError(f"{os.fspath(weights)!r} is not a readable safetensors file: {err}") from err
    if not keys:
        raise AdapterLoadError(f"{os.fspath(weights)!r} holds no tensors.")
    bad = [k for k in keys if not k.startswith(FILE_KEY_PREFIX)]
    if bad:
        raise AdapterLoadError(
            f"{os.fspath(weights)!r} is not a PEFT adapter file: keys must start with {FILE_KEY_PREFIX!r}, "
            f"got e.g. {bad[:3]}. Full-model weights are never pushed as an adapter."
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


def _resolved_token(token: str | bool | None) -> str | None:
    if isinstance(token, str):
        return token
    if token is False:
        return None
    from huggingface_hub import get_token

    return get_token()


def _check_no_token(staging: str, token: str | None, texts: Sequence[str | None], files: list[Path]) -> None:
    """Refuse to upload when the token appears in the commit text or in a staged file (text, or safetensors header)."""
    if not token:
        return
    if any(token in (t or "") for t in texts):
        raise NeatError("The commit message or description contains your Hub token; refusing to push it.")
    needle = token.encode()
    for path in files:
        if path.suffix == ".safetensors":
            with open(path, "rb") as handle:
                header_len = int.from_bytes(handle.read(8), "little")
                blob = handle.read(min(header_len, 100_000_000))
        elif path.stat().st_size <= 50_000_000:
            blob = path.read_bytes()
        else:
            continue
        if needle in blob:
            raise NeatError(
                f"{os.fspath(path.relative_to(staging))!r} contains your Hub token; refusing to upload it. "
                "Remove the token from that file."
            )


def _push_staged(
    staging: str,
    repo_id: str,
    *,
    private: bool | None,
    token: str | bool | None,
    revision: str | None,
    commit_message: str,
    commit_description: str | None,
    create_pr: bool,
    rewrite_card: Any,
    exclude_suffixes: Sequence[str] = (),
) -> CommitInfo:
    root = Path(staging)
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    skipped = [p for p in files if p.name.endswith(tuple(exclude_suffixes))]
    files = [p for p in files if p not in skipped]
    if skipped:
        logger.warning("Not uploading pickle-based files: %s", [os.fspath(p.relative_to(root)) for p in skipped])
    if not files:
        raise NeatError(f"Nothing to upload from {staging!r}.")
    secret = _resolved_token(token)
    _check_no_token(staging, secret, [commit_message, commit_description], files)  # before touching the Hub

    api = HfApi()
    with hub_errors("create repo", repo_id):
        full_id = api.create_repo(repo_id, token=token, private=private, exist_ok=True).repo_id
    if rewrite_card is not None and full_id != repo_id:
        rewrite_card(full_id)  # the card's snippets name the repo with its namespace
        _check_no_token(staging, secret, [], [root / MODEL_CARD_NAME])
    if (
        revision is not None
        and revision != "main"
        and not _COMMIT_SHA.match(revision)
        and not revision.startswith("refs/")
    ):
        with hub_errors("create branch in", full_id, revision=revision):
            api.create_branch(full_id, branch=revision, token=token, exist_ok=True)

    operations = [
        CommitOperationAdd(path_in_repo=p.relative_to(root).as_posix(), path_or_fileobj=os.fspath(p)) for p in files
    ]
    with hub_errors("push to", full_id, revision=revision):
        info = api.create_commit(
            full_id,
            operations,
            commit_message=commit_message,
            commit_description=commit_description,
            token=token,
            revision=revision,
            create_pr=create_pr,
        )
    logger.info("Pushed %d file(s) to %s: %s", len(operations), full_id, info.pr_url or info.commit_url)
    return info
