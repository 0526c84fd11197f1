"""The one path by which neat-hf writes to the Hub: staged files checked, then a single `create_commit`.

`NeatModel.push_to_hub`, `neat-hub push` ([`push_adapter_folder`]), `neat-hub merge --push-to-hub`
(`neat_hf.hub.push`) and the Trainer's Hub mixin (`neat_hf.trainers.hub_mixin`) all stage their files in a folder,
then go through this module: which files may be uploaded ([`ADAPTER_FILES`], [`TOKENIZER_FILES`],
[`checkpoint_files`]), the checks made before anything is sent ([`check_repo_id`], [`validate_adapter_folder`],
[`check_adapter_keys`], no token in any staged file or in the commit text), the branch creation ([`ensure_branch`])
and the commit itself ([`commit`]), with Hub errors translated by `neat_hf.hub.error_translation`. It knows nothing of
models: the card it uploads was written by `neat_hf.cards`.

Everything goes into one `create_commit`, so a failure never leaves a half-pushed adapter. `create_commit` is used
rather than `upload_folder` because, with `hf_xet` installed, huggingface_hub 2.x turns `upload_folder` into a pipeline
that may split large uploads into several commits and does not accept `create_pr` together with `revision`.

We do not inherit transformers' `PushToHubMixin.push_to_hub`: in transformers 5.x it writes its own card
(`library_name: transformers`, no tags, no base model) over the adapter's after saving, which is why stock
`PeftModel.push_to_hub` uploads a blank card.

Tokens come only from huggingface_hub's usual sources (the `token` argument, `HF_TOKEN`, the login cache) and are never
logged; before uploading, the staged files and the commit message are checked not to contain the token.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, CommitOperationAdd, EvalResult, HfApi, get_token

from neat_hf.cards.adapter_card import write_model_card
from neat_hf.config import read_adapter_config
from neat_hf.constants import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    FILE_KEY_PREFIX,
    LIBRARY_VERSION,
    MODEL_CARD_NAME,
    TRAINING_CURVE_NAME,
)
from neat_hf.errors import AdapterLoadError, NeatError
from neat_hf.hub.conflicts import FULL_MODEL_WEIGHTS, CommitOperation, ConflictCheck, conflict_operations
from neat_hf.hub.error_translation import hub_errors
from neat_hf.io import check_saved_together, read_tensor_shapes
from neat_hf.training_info import TRAINING_INFO_NAME

logger = logging.getLogger(__name__)

DEFAULT_COMMIT_MESSAGE = "Upload NEAT adapter"
#: [`push_adapter_folder`]'s options of the push itself (its other keyword arguments are the card's).
PUSH_OPTIONS = ("private", "token", "revision", "commit_message", "commit_description", "create_pr", "delete_conflicting")

#: Files a pushed adapter folder may contain besides the adapter itself: the card, the training setup, the loss curve
#: the card shows and the tokenizer / processor files the Trainer saves next to the adapter. Anything else (optimizer states, pickled
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
ADAPTER_FILES = frozenset(
    {ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, MODEL_CARD_NAME, TRAINING_INFO_NAME, TRAINING_CURVE_NAME}
)


_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")


# ---------------------------------------------------------------------------------------------------- adapter push
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
    delete_conflicting: bool = False,
    training_info: Mapping[str, Any] | None = None,
    eval_results: Sequence[EvalResult] | None = None,
    save: Callable[[str], Any] | None = None,
    **card_kwargs: Any,
) -> CommitInfo:
    """Push an adapter folder written by `save_pretrained` (or a NeatTrainer output / checkpoint folder) in one commit.

    Uploaded: `adapter_config.json`, `adapter_model.safetensors`, `README.md`, `training_info.json`,
    `training_curve.png`, tokenizer and processor files, and the same files of named adapters in sub-folders. Everything else (optimizer and scheduler
    states, `training_args.bin`, any full-model weights) stays local. The adapter is validated (config fields,
    safetensors readable, PEFT key prefix) before anything is sent.

    Args:
        folder (`str` or `os.PathLike`):
            The adapter folder.
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
        keep_card (`bool`, *optional*, defaults to `False`):
            Upload the folder's `README.md` as it is. By default the card is rebuilt from the folder's files (keeping
            its evaluation results), so it names `repo_id` and matches the weights.
        delete_conflicting (`bool`, *optional*, defaults to `False`):
            The repo may already hold files that contradict an adapter repo (pickles such as an old
            `adapter_model.bin`, full-model weights such as `model.safetensors`, weights in another format; see
            [`conflicting_files`]). They are listed in a warning; with `True` they are deleted in the same commit.
            An `adapter_config.json` of another adapter (another PEFT type or base model, see
            [`foreign_adapter_configs`]) is replaced by this push either way, with a warning naming what it was.
        training_info (`dict`, *optional*):
            Training setup for the card (dataset, epochs, learning rates, ...); merged over the folder's
            training_info.json and uploaded with it.
        eval_results (`list[EvalResult]`, *optional*):
            Evaluation results for the card's `model-index` (see `neat_hf.eval_harness.results`); merged with the
            folder card's.
        save (`Callable[[str], Any]`, *optional*):
            Writes the adapter and its card into the (empty) `folder`, given the full repo id: `NeatModel.push_to_hub`
            saves this way, so its card is written once and names the repo. The folder is validated after it.
        card_kwargs:
            `base_model`, `datasets`, `license`, `language`, `pipeline_tag`, `tags`, `model_name` for the card.

    Returns:
        `huggingface_hub.CommitInfo`

    Raises:
        AdapterLoadError: the folder is not a valid adapter folder (message names the file and problem).
        HubError: the repo, revision or permissions are wrong.
        NeatError: invalid card inputs, or the token would end up in an uploaded file or the commit message.
    """
    check_repo_id(repo_id)
    source = Path(folder)
    adapter_dirs = validate_adapter_folder(source) if save is None else []  # offline checks first
    if keep_card and save is None and not (source / MODEL_CARD_NAME).is_file():
        raise AdapterLoadError(f"keep_card=True but {os.fspath(source)!r} has no {MODEL_CARD_NAME}.")
    with tempfile.TemporaryDirectory(prefix="neat-push-") as staging:

        def prepare(full_id: str) -> None:
            if save is not None:
                save(full_id)
                stage_adapter_folder(source, Path(staging), validate_adapter_folder(source))
                return
            stage_adapter_folder(source, Path(staging), adapter_dirs)
            if not keep_card:
                write_model_card(staging, repo_id=full_id, training_info=training_info, eval_results=eval_results, **card_kwargs)

        return push_staged(
            staging,
            repo_id,
            commit_message=commit_message or DEFAULT_COMMIT_MESSAGE,
            prepare=prepare,
            private=private,
            token=token,
            revision=revision,
            commit_description=commit_description,
            create_pr=create_pr,
            adapter_repo=True,
            delete_conflicting=delete_conflicting,
        )


def push_staged(
    staging: str | os.PathLike,
    repo_id: str,
    *,
    commit_message: str,
    prepare: Callable[[str], Any] | None = None,
    exclude_suffixes: Sequence[str] = (),
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    commit_description: str | None = None,
    create_pr: bool = False,
    adapter_repo: bool = False,
    delete_conflicting: bool = False,
) -> CommitInfo:
    """Commit every file under `staging` to `repo_id` in one commit, creating the repo (and the `revision` branch) if
    missing.

    `prepare(full_repo_id)` is called first, with the repo id the push goes to (a bare name gets the token's namespace,
    asked of the Hub with `whoami`): it writes what the folder still lacks, such as the card whose snippets name the
    repo, once. Then every file is checked (the token, adapter keys) once, and only then is anything sent: nothing
    reaches the Hub when a check fails. Files ending in `exclude_suffixes` are skipped with a warning. With
    `adapter_repo=True` the repo's files that contradict an adapter repo are listed (and deleted with
    `delete_conflicting=True`), and another adapter whose config the push replaces is named (see
    [`conflict_operations`]). The other arguments are [`push_adapter_folder`]'s.
    """
    secret = resolved_token(token)
    if any(secret and secret in (text or "") for text in (commit_message, commit_description)):
        raise NeatError("The commit message or description contains your Hub token; refusing to push it.")
    api = hub_api()
    full_id = full_repo_id(api, repo_id, token=token)
    if prepare is not None:
        prepare(full_id)
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
        raise NeatError(f"Nothing to upload from {os.fspath(staging)!r}.")
    operations = commit_operations(root, files, token=token)  # the checks, before touching the Hub
    with hub_errors("create repo", full_id):
        api.create_repo(full_id, token=token, private=private, exist_ok=True)
    ensure_branch(api, full_id, revision, token=token)
    return commit(
        api, full_id, operations, commit_message=commit_message, token=token, revision=revision,
        commit_description=commit_description, create_pr=create_pr,
        conflicts=ConflictCheck(delete=delete_conflicting) if adapter_repo else None,
    )


def full_repo_id(api: HfApi, repo_id: str, *, token: str | bool | None) -> str:
    """`repo_id` with its namespace: a bare `name` is created under the token's user (`whoami`), as `create_repo`
    would do."""
    if "/" in repo_id:
        return repo_id
    with hub_errors("find the namespace (whoami) for", repo_id):
        return f"{api.whoami(token=token)['name']}/{repo_id}"


# ---------------------------------------------------------------------------------------------------- the commit
def hub_api() -> HfApi:
    """The `HfApi` neat-hf commits through (its user agent names neat-hf and its version)."""
    return HfApi(library_name="neat-hf", library_version=LIBRARY_VERSION)


def ensure_branch(api: HfApi, repo_id: str, revision: str | None, *, token: str | bool | None) -> None:
    """Create the `revision` branch of `repo_id` from `main` when it names a missing branch (not `main`, a commit
    sha or a `refs/...` ref), so the first push to a new branch works."""
    if revision is None or revision == "main" or _COMMIT_SHA.match(revision) or revision.startswith("refs/"):
        return
    with hub_errors("create branch in", repo_id, revision=revision):
        api.create_branch(repo_id, branch=revision, token=token, exist_ok=True)


def commit_operations(
    folder: str | os.PathLike,
    files: Iterable[Path],
    *,
    token: str | bool | None,
    prefix: str = "",
    in_memory: bool = False,
) -> list[CommitOperationAdd]:
    """`CommitOperationAdd`s for `files` (under `folder`), at `prefix/<path relative to folder>` in the repo.

    Every `adapter_model.safetensors` is checked to hold adapter tensors only and no file may contain the token.
    With `in_memory=True` the files are read now, so a later save cannot change a file while it is being uploaded
    (asynchronous checkpoint pushes).
    """
    root, files = Path(folder), list(files)
    for path in files:
        if path.name == ADAPTER_WEIGHTS_NAME:
            check_adapter_keys(path)  # adapter tensors only: no base weights under an adapter's name
    check_no_token(root, resolved_token(token), files)
    return [
        CommitOperationAdd(
            path_in_repo="/".join(p for p in (prefix, path.relative_to(root).as_posix()) if p),
            path_or_fileobj=path.read_bytes() if in_memory else os.fspath(path),
        )
        for path in files
    ]


def commit(
    api: HfApi,
    repo_id: str,
    operations: Sequence[CommitOperation],
    *,
    commit_message: str,
    token: str | bool | None,
    revision: str | None,
    commit_description: str | None = None,
    create_pr: bool = False,
    blocking: bool = True,
    conflicts: ConflictCheck | None = None,
) -> CommitInfo | Future:
    """One `create_commit` of `operations` to `repo_id` (a `Future` of it with `blocking=False`, whose failure is
    logged as a warning), Hub errors translated by [`hub_errors`].

    With `conflicts` (pushes into an adapter repo), the repo's files are checked first by [`conflict_operations`]
    (and its deletions join the commit). With `blocking=False` that check runs inside the same future: listing the
    repo never holds up training, and its failure is logged like a failed commit.
    """
    operations = list(operations)
    logger.info("Pushing %d file(s) to %s (%s)", len(operations), repo_id, commit_message)
    kwargs = dict(
        commit_message=commit_message, commit_description=commit_description, token=token, revision=revision,
        create_pr=create_pr,
    )
    if not blocking:
        # A background push (Trainer checkpoints) fails where nobody waits for it: log its reason as a warning.
        future = api.run_as_future(_commit_now, api, repo_id, operations, kwargs, conflicts)
        future.add_done_callback(lambda done: _warn_if_failed(done, repo_id, commit_message))
        return future
    return _commit_now(api, repo_id, operations, kwargs, conflicts)


def _commit_now(
    api: HfApi,
    repo_id: str,
    operations: list[CommitOperation],
    kwargs: dict[str, Any],
    conflicts: ConflictCheck | None = None,
) -> CommitInfo:
    """[`conflict_operations`] (with `conflicts`), then `create_commit`, errors translated. The client first asks the
    Hub for the sha of every file (preupload) and leaves out files whose content is already there, making no commit
    at all when nothing changed: so a push retried after a dropped answer (the commit had landed) makes no duplicate
    commit."""
    if conflicts is not None:
        operations = operations + conflict_operations(
            api, repo_id, operations, revision=kwargs["revision"], token=kwargs["token"], check=conflicts
        )
    with hub_errors("push to", repo_id, revision=kwargs["revision"]):
        info = api.create_commit(repo_id, operations, **kwargs)
    logger.info("Pushed %d file(s) to %s: %s", len(operations), repo_id, info.pr_url or info.commit_url)
    return info


def _warn_if_failed(future: Future, repo_id: str, commit_message: str) -> None:
    error = future.exception()
    if error is not None:
        logger.warning(
            "Background push %r to %s failed: %s. Training goes on; the next push uploads the newer files.",
            commit_message, repo_id, error,
        )


# ---------------------------------------------------------------------------------------------------- what may go up
def adapter_root_files(folder: str | os.PathLike) -> list[Path]:
    """The adapter, card, training-info and tokenizer files present at the top of `folder` (sorted)."""
    root = Path(folder)
    return [root / name for name in sorted(ADAPTER_FILES | TOKENIZER_FILES) if (root / name).is_file()]


def checkpoint_files(folder: str | os.PathLike) -> list[Path]:
    """Every file of a Trainer checkpoint folder needed to resume, without full-model weight files
    (`model*.safetensors`, `pytorch_model*.bin`, ...), DeepSpeed's `global_step*/` folders or hidden/private files."""
    root = Path(folder)
    return [
        p
        for p in sorted(root.rglob("*"))
        if p.is_file()
        and not FULL_MODEL_WEIGHTS.match(p.name)
        and not any(part.startswith(("global_step", ".", "_")) for part in p.relative_to(root).parts)
    ]


def check_repo_id(repo_id: Any) -> None:
    """Raise `NeatError` unless `repo_id` looks like `namespace/name` or `name`."""
    if not isinstance(repo_id, str) or not re.fullmatch(r"([\w.\-]+/)?[\w.\-]+", repo_id) or ".." in repo_id:
        raise NeatError(f"repo_id must look like 'namespace/name' (or 'name'), got {repo_id!r}.")


def validate_adapter_folder(folder: Path) -> list[Path]:
    """Check every adapter in `folder` (the default one at the top, named ones in sub-folders) before any upload;
    return their folders."""
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
        check_saved_together(directory / ADAPTER_CONFIG_NAME, weights)  # never publish what a killed save left
        check_adapter_keys(weights)
    return dirs


def check_adapter_keys(weights: Path) -> None:
    """Raise `AdapterLoadError` unless `weights` is a readable safetensors file of PEFT adapter keys only."""
    keys = list(read_tensor_shapes(weights))
    if not keys:
        raise AdapterLoadError(f"{os.fspath(weights)!r} holds no tensors.")
    bad = [k for k in keys if not k.startswith(FILE_KEY_PREFIX)]
    if bad:
        raise AdapterLoadError(
            f"{os.fspath(weights)!r} is not a PEFT adapter file: keys must start with {FILE_KEY_PREFIX!r}, "
            f"got e.g. {bad[:3]}. Full-model weights are never pushed as an adapter."
        )


def resolved_token(token: str | bool | None) -> str | None:
    """The token huggingface_hub will send (the argument, else `HF_TOKEN` / the login cache), to search staged files."""
    if isinstance(token, str):
        return token
    if token is False:
        return None
    return get_token()


def check_no_token(root: Path, token: str | None, files: Iterable[Path]) -> None:
    """Refuse to upload when the token appears in a staged file (text, or safetensors header)."""
    if not token:
        return
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
                f"{os.fspath(path.relative_to(root))!r} contains your Hub token; refusing to upload it. "
                "Remove the token from that file."
            )


def stage_adapter_folder(source: Path, staging: Path, adapter_dirs: list[Path]) -> None:
    """Copy the adapter, card, training-info (and, at the top, tokenizer) files of `adapter_dirs` into `staging`."""
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
