"""Reading and writing adapter files: safetensors and JSON only, atomic writes, Hub downloads.

Nothing here ever unpickles: weights are read with `safetensors` and configs with `json`, so a downloaded adapter
cannot run code. Writes go to a temporary file in the destination folder and are moved into place with `os.replace`,
so an interrupted save never leaves a half-written file under the final name.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import TYPE_CHECKING, Optional, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .constants import ADAPTER_WEIGHTS_NAME
from .errors import AdapterLoadError

if TYPE_CHECKING:
    from .config import NeatConfig


def atomic_write_text(path: Union[str, os.PathLike], text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and `os.replace`."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        _publish(tmp, path)
    except BaseException:
        _silent_remove(tmp)
        raise


def atomic_save_safetensors(
    tensors: dict[str, torch.Tensor], path: Union[str, os.PathLike], metadata: Optional[dict[str, str]] = None
) -> None:
    """Save `tensors` as safetensors at `path` atomically (contiguous CPU copies, shared storage broken)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=directory)
    os.close(fd)
    try:
        clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
        save_file(clean, tmp, metadata={"format": "pt", **(metadata or {})})
        _publish(tmp, path)
    except BaseException:
        _silent_remove(tmp)
        raise


def _publish(tmp: str, path: Union[str, os.PathLike]) -> None:
    """Give the temporary file the permissions a plain `open()` would (mkstemp makes it 0600), then move it into place."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def _silent_remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def resolve_adapter_file(
    path_or_repo_id: Union[str, os.PathLike],
    filename: str,
    *,
    revision: Optional[str] = None,
    subfolder: Optional[str] = None,
    token: Optional[Union[str, bool]] = None,
    cache_dir: Optional[str] = None,
    local_files_only: Optional[bool] = None,
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


def _hub_download(repo_id, filename, revision, subfolder, token, cache_dir, local_files_only) -> str:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at = f"{repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    try:
        return hf_hub_download(
            repo_id,
            filename,
            subfolder=subfolder or None,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            local_files_only=bool(local_files_only),
        )
    except RepositoryNotFoundError as err:
        raise AdapterLoadError(
            f"Adapter {repo_id!r} is neither a local folder nor a Hub repo you can access "
            "(check the name, or log in / pass token= for a private repo)."
        ) from err
    except RevisionNotFoundError as err:
        raise AdapterLoadError(f"Revision {revision!r} does not exist in Hub repo {repo_id!r}.") from err
    # LocalEntryNotFoundError subclasses EntryNotFoundError: it must come first.
    except LocalEntryNotFoundError as err:
        raise AdapterLoadError(
            f"{filename!r} of {at} is not in the local cache and the Hub cannot be reached (offline mode: "
            "HF_HUB_OFFLINE / local_files_only). Download it once online, or pass a local folder."
        ) from err
    except EntryNotFoundError as err:
        raise AdapterLoadError(f"Hub repo {at} has no file {filename!r}; is it a NEAT/PEANuT adapter?") from err
    except HFValidationError as err:
        raise AdapterLoadError(f"{repo_id!r} is neither a local adapter folder nor a valid Hub repo id: {err}") from err


def read_adapter_config(path: Union[str, os.PathLike]) -> "NeatConfig":
    """Parse and validate an adapter_config.json file (JSON only)."""
    from .config import NeatConfig

    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AdapterLoadError(f"{os.fspath(path)!r} is not valid UTF-8 JSON: {err}") from err
    return NeatConfig.from_dict(data, source=os.fspath(path))


def read_adapter_weights(path: Union[str, os.PathLike]) -> dict[str, torch.Tensor]:
    """Load adapter tensors from a safetensors file (never pickle), with a clear error if it is corrupt."""
    try:
        return load_file(os.fspath(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise AdapterLoadError(f"Could not read adapter weights {os.fspath(path)!r}: corrupt or not safetensors ({err}).") from err
