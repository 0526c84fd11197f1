"""`neat-hub merge --push-to-hub`: push a merged-model folder in one commit, without pickle-based files.

Adapter folders (`neat-hub push`, `NeatModel.push_to_hub`) are pushed by the core's single Hub path,
`neat_hf.hub.commit.push_adapter_folder`; a merged model goes through the same staging checks and commit
(`neat_hf.hub.commit.push_staged`), with pickle-based files left out.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo

from neat_hf.errors import NeatError
from neat_hf.hub.commit import check_repo_id, push_staged
from neat_hf.hub.conflicts import PICKLE_SUFFIXES


def push_folder(
    folder: str | os.PathLike, repo_id: str, *, commit_message: str = "Upload model", **options: Any
) -> CommitInfo:
    """Push every file of `folder` (e.g. a merged model from `neat-hub merge`) in one commit, except pickle-based
    files (`*.bin`, `*.pt`, `*.pth`, `*.pkl`, `*.ckpt`), which are skipped with a log line.

    Args:
        folder (`str` or `os.PathLike`): the folder to upload.
        repo_id (`str`): target repo, created if missing.
        commit_message (`str`, *optional*, defaults to `"Upload model"`)
        options: `private`, `token`, `revision`, `commit_description`, `create_pr`, as in
            `neat_hf.hub.commit.push_adapter_folder`.
    """
    check_repo_id(repo_id)
    source = Path(folder)
    if not source.is_dir():
        raise NeatError(f"{os.fspath(source)!r} is not a folder.")
    return push_staged(source, repo_id, commit_message=commit_message, exclude_suffixes=PICKLE_SUFFIXES, **options)
