"""Downloads: a file of an adapter, from a local folder or a Hub repo, through `huggingface_hub.hf_hub_download`.

Every file a loader reads passes [`resolve_adapter_file`]: a local folder is checked (regular files only, see
`neat_hf.io.check_regular_file`), a repo id is downloaded into the Hub cache (its cache, `HF_HUB_OFFLINE` and the
usual token sources apply) with Hub errors translated by `neat_hf.hub.error_translation`.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from huggingface_hub import hf_hub_download

from neat_hf.constants import ADAPTER_WEIGHTS_NAME
from neat_hf.errors import AdapterLoadError
from neat_hf.hub.error_translation import hub_errors
from neat_hf.io import check_regular_file, not_regular_reason

logger = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")


def resolve_adapter_file(
    path_or_repo_id: str | os.PathLike,
    filename: str,
    *,
    revision: str | None = None,
    subfolder: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | None = None,
    local_files_only: bool | None = None,
) -> str:
    """Return a local path to `filename` of an adapter in a local folder or a Hub repo (optionally in `subfolder`).

    A Hub repo is fetched through `huggingface_hub.hf_hub_download`, so its cache, `HF_HUB_OFFLINE` and the usual token
    sources apply.

    Raises:
        AdapterLoadError: the folder or repo, the revision or the file does not exist (the message names which).
    """
    location = os.fspath(path_or_repo_id)
    if subfolder and os.path.isdir(location):
        location = os.path.join(location, subfolder)
    if os.path.isdir(location):
        path = os.path.join(location, filename)
        if os.path.lexists(path) and not_regular_reason(path) != "missing":
            return check_regular_file(path)
        if not os.path.isfile(path):
            present = sorted(os.listdir(location))
            raise AdapterLoadError(
                f"No {filename} in adapter folder {location!r} (it holds: {present}). An adapter folder needs "
                f"adapter_config.json and {ADAPTER_WEIGHTS_NAME}, as written by save_pretrained."
            )
        return path
    if os.path.exists(location) or location.startswith((".", "/", "~")) or location.count("/") > 1:
        raise AdapterLoadError(f"Adapter path {location!r} is not a folder, and not a Hub repo id ('user/name').")
    return _hub_download(location, filename, revision, subfolder, token, cache_dir, local_files_only)


def fetch_companion_file(path_or_repo_id: str | os.PathLike, filename: str, **hub: Any) -> None:
    """Bring an optional file of a Hub adapter (`training_info.json`) into the cache folder next to its config, so that
    what is read from a folder is read from the Hub too; a repo without it is fine. Local folders need nothing."""
    if os.path.isdir(os.fspath(path_or_repo_id)):
        return
    try:
        resolve_adapter_file(path_or_repo_id, filename, **hub)
    except AdapterLoadError as err:
        logger.debug("No %s for %s: %s", filename, os.fspath(path_or_repo_id), err)


def _hub_download(
    repo_id: str,
    filename: str,
    revision: str | None,
    subfolder: str | None,
    token: str | bool | None,
    cache_dir: str | None,
    local_files_only: bool | None,
) -> str:
    with hub_errors(f"load {filename!r} from", repo_id, revision=revision, filename=filename, error=AdapterLoadError):
        return check_regular_file(hf_hub_download(
            repo_id,
            filename,
            subfolder=subfolder or None,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            local_files_only=bool(local_files_only),
        ))


def is_hub_id(value: object) -> bool:
    """Whether `value` can be a Hub repo id (`name` or `namespace/name`) and is not a local path."""
    return isinstance(value, str) and bool(_HUB_ID.match(value)) and ".." not in value and not os.path.exists(value)
