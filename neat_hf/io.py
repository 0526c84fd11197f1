"""Reading and writing adapter files: safetensors and JSON only, atomic writes, Hub downloads.

Nothing here ever unpickles: weights are read with `safetensors` (configs with `json`, in `neat_hf.config`), so a downloaded adapter
cannot run code. Writes go to a temporary file in the destination folder and are moved into place with `os.replace`,
so an interrupted save never leaves a half-written file under the final name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import tempfile

from typing import Any

import torch
from huggingface_hub import hf_hub_download
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .constants import ADAPTER_WEIGHTS_NAME, TRAINING_INFO_NAME
from .errors import AdapterLoadError
from .hub_errors import hub_errors

logger = logging.getLogger(__name__)

#: safetensors metadata key of adapter_model.safetensors holding the sha256 of the adapter_config.json saved with it.
#: `save_pretrained` writes the weights first and the config last, so a kill in between leaves new weights next to
#: the old config; loading compares the two and refuses such a mix instead of computing neither adapter.
CONFIG_SHA_KEY = "neat_hf.adapter_config_sha256"
#: safetensors metadata key of adapter_model.safetensors holding the sha256 of its tensors ([`tensors_sha256`]). The
#: card's `training_info.json` records the same value (`WEIGHTS_STAMP_KEY`), so a card or training record left by an
#: earlier save (a kill between the weights and them) is told apart from one written for these weights.
WEIGHTS_SHA_KEY = "neat_hf.adapter_weights_sha256"
#: Key of `training_info.json` naming the weights it (and the card written with it) describes.
WEIGHTS_STAMP_KEY = "adapter_weights_sha256"
#: Largest `training_info.json` that is read (a training record is a few KB; a bigger file is not one).
MAX_TRAINING_INFO_BYTES = 1 << 20

#: Prefix of the temporary files of atomic writes (cleaned from a folder by the next save into it).
TMP_PREFIX = ".tmp-"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and `os.replace`."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        _publish(tmp, path)
    except BaseException:
        _silent_remove(tmp)
        raise


def atomic_save_safetensors(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> None:
    """Save `tensors` as safetensors at `path` atomically (contiguous CPU copies, shared storage broken)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".safetensors", dir=directory)
    os.close(fd)
    try:
        clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
        save_file(clean, tmp, metadata={"format": "pt", **(metadata or {})})
        _sort_metadata_in_place(tmp)
        _publish(tmp, path)
    except BaseException:
        _silent_remove(tmp)
        raise


def _sort_metadata_in_place(path: str) -> None:
    """Rewrite the safetensors header of `path` with its `__metadata__` keys sorted.

    safetensors serialises the metadata from a hash map, so with two or more keys the bytes of the file change from
    one save to the next. The Hub would then see a new file on every push of the same adapter. The sorted header is a
    permutation of the same compact JSON, so it has the same length and no tensor offset moves. When the length
    would differ (non-ASCII names), the file is left as written.
    """
    with open(path, "r+b") as handle:
        size = int.from_bytes(handle.read(8), "little")
        raw = handle.read(size)
        header = json.loads(raw)
        metadata = header.get("__metadata__")
        if not metadata or list(metadata) == sorted(metadata):
            return
        header["__metadata__"] = dict(sorted(metadata.items()))  # same position among the header's keys
        text = json.dumps(header, separators=(",", ":")).encode()
        if len(text) > size or len(text.rstrip()) != len(raw.rstrip()):
            return
        handle.seek(8)
        handle.write(text.ljust(size))


def current_umask() -> int:
    """The process umask (reading it means setting it; it is set back at once)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _publish(tmp: str, path: str | os.PathLike) -> None:
    """Give the temporary file the permissions a plain `open()` would (mkstemp makes it 0600), then move it into place."""
    os.chmod(tmp, 0o666 & ~current_umask())
    os.replace(tmp, path)


def apply_umask(folder: str | os.PathLike) -> None:
    """Give a folder made with `tempfile.mkdtemp` (0700), and everything written into it, the permissions `mkdir` and
    `open()` would have given under the umask, before the folder is moved into place (files a library wrote through
    its own temporary files can be 0600 too)."""
    umask = current_umask()
    for root, dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~umask)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~umask)


def text_sha256(text: str) -> str:
    """sha256 hex digest of `text` encoded as UTF-8 (what `atomic_write_text` writes)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of `tensors` (in name order): the identity of one save's
    weights, stored in their file's metadata (`WEIGHTS_SHA_KEY`). Equal tensors give equal digests on every save."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key].detach().to("cpu").contiguous()
        digest.update(f"{key}\0{tensor.dtype}\0{list(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_weights_metadata(weights_path: str | os.PathLike) -> dict[str, str]:
    """The `__metadata__` of a safetensors file (read from its header only).

    Raises:
        AdapterLoadError: the file is not readable safetensors.
    """
    try:
        with safe_open(os.fspath(weights_path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as err:  # safetensors raises its own error types
        raise AdapterLoadError(f"Could not read adapter weights {os.fspath(weights_path)!r}: corrupt or not safetensors ({err}).") from err


def remove_stale_temporaries(directory: str | os.PathLike) -> list[str]:
    """Delete the `.tmp-*` files that an interrupted atomic write left in `directory`; returns their names.

    Called at the start of a save into `directory` (one writer per folder, as with any save target).
    """
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        path = os.path.join(directory, name)
        if name.startswith(TMP_PREFIX) and os.path.isfile(path) and not os.path.islink(path):
            _silent_remove(path)
            removed.append(name)
    if removed:
        logger.info("Removed %d temporary files left by an interrupted save in %s: %s", len(removed), directory, removed)
    return removed


def check_saved_together(config_path: str | os.PathLike, weights_path: str | os.PathLike) -> None:
    """Refuse an adapter folder whose files come from two different saves (a save killed halfway).

    `save_pretrained` writes the weights first, then the card (`README.md`) and `training_info.json`, and the config
    last. Weights saved by neat-hf carry the sha256 of their config (`CONFIG_SHA_KEY`) and of their own tensors
    (`WEIGHTS_SHA_KEY`), which `training_info.json` repeats (`WEIGHTS_STAMP_KEY`). A config or a `training_info.json`
    that does not match was left by an earlier save: new weights would load with old settings, or under a card and a
    training record (dropout included) of other weights. Files without these keys (stock PEFT, older neat-hf) are
    accepted as they are.

    Raises:
        AdapterLoadError: the config or the training_info.json next to the weights is not the one saved with them.
    """
    metadata = read_weights_metadata(weights_path)
    expected = metadata.get(CONFIG_SHA_KEY)
    if expected is not None:
        with open(config_path, "rb") as handle:
            actual = hashlib.sha256(handle.read()).hexdigest()
        if actual != expected:
            raise AdapterLoadError(
                f"{os.fspath(weights_path)!r} was saved with another adapter_config.json than the one next to it: the "
                "save that wrote this folder was interrupted between the two files. Save the adapter again (or restore "
                "the folder); it is refused rather than loaded with a config that does not describe its weights."
            )
    stamp = recorded_weights_stamp(os.path.join(os.path.dirname(os.fspath(config_path)), TRAINING_INFO_NAME))
    if metadata.get(WEIGHTS_SHA_KEY) is not None and stamp is not None and stamp != metadata[WEIGHTS_SHA_KEY]:
        raise AdapterLoadError(
            f"The {TRAINING_INFO_NAME} and model card next to {os.fspath(weights_path)!r} describe other weights: the "
            "save that wrote this folder was interrupted after the weights. Save the adapter again (or restore the "
            "folder); it is refused rather than loaded with the settings and card of another save."
        )


def recorded_weights_stamp(training_info_path: str | os.PathLike) -> str | None:
    """The `WEIGHTS_STAMP_KEY` recorded in a `training_info.json` (None when the file, or the key, is missing or the
    file is unreadable: `neat_hf.training_info` reports unreadable files where it reads them)."""
    try:
        data = read_json_file(training_info_path, max_bytes=MAX_TRAINING_INFO_BYTES, what="a training record")
    except (OSError, AdapterLoadError):
        return None
    stamp = data.get(WEIGHTS_STAMP_KEY) if isinstance(data, dict) else None
    return stamp if isinstance(stamp, str) else None


def read_json_file(path: str | os.PathLike, *, max_bytes: int, what: str) -> Any:
    """Parse a small JSON file of an adapter folder (`adapter_config.json`, `training_info.json`): its size is checked
    before it is read, it must be UTF-8, and nesting too deep for the parser is an error like any other.

    Raises:
        AdapterLoadError: the file is larger than `max_bytes` ("this is not `what`"), not UTF-8, or not JSON.
        OSError: the file cannot be opened.
    """
    size = os.path.getsize(path)
    if size > max_bytes:
        raise AdapterLoadError(f"{os.fspath(path)!r} is {size:,d} bytes; at most {max_bytes:,d} are read. This is not {what}.")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise AdapterLoadError(f"{os.fspath(path)!r} is not valid UTF-8 JSON: {err}") from err


def _silent_remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


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
        return hf_hub_download(
            repo_id,
            filename,
            subfolder=subfolder or None,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            local_files_only=bool(local_files_only),
        )


def is_hub_id(value: object) -> bool:
    """Whether `value` can be a Hub repo id (`name` or `namespace/name`) and is not a local path."""
    return isinstance(value, str) and bool(_HUB_ID.match(value)) and ".." not in value and not os.path.exists(value)


def read_adapter_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load adapter tensors from a safetensors file (never pickle), with a clear error if it is corrupt."""
    try:
        return load_file(os.fspath(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise AdapterLoadError(f"Could not read adapter weights {os.fspath(path)!r}: corrupt or not safetensors ({err}).") from err


def read_tensor_shapes(path: str | os.PathLike) -> dict[str, list[int]]:
    """{key: shape} of a safetensors file, read from its header (no tensor is loaded).

    Raises:
        AdapterLoadError: the file is not readable safetensors.
    """
    try:
        with safe_open(os.fspath(path), framework="pt") as handle:
            return {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as err:  # safetensors raises its own error types
        raise AdapterLoadError(f"Could not read adapter weights {os.fspath(path)!r}: corrupt or not safetensors ({err}).") from err


def count_adapter_parameters(weights_path: str | os.PathLike) -> int:
    """Number of parameters in an adapter_model.safetensors, read from its header (no tensor is loaded)."""
    return sum(math.prod(shape) for shape in read_tensor_shapes(weights_path).values())
