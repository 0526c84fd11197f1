"""Reading and writing adapter files on disk: safetensors and JSON only, bounded reads, atomic writes, folder locks.

Nothing here ever unpickles: weights are read with `safetensors` (configs with `json`, in `neat_hf.config`), so a downloaded adapter
cannot run code. Writes go to a temporary file in the destination folder and are moved into place with `os.replace`,
so an interrupted save never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from neat_hf.constants import TRAINING_INFO_NAME
from neat_hf.errors import AdapterLoadError, FolderInUseError

logger = logging.getLogger(__name__)

#: safetensors metadata key of adapter_model.safetensors holding the sha256 of the adapter_config.json saved with it
#: (what it protects against: [`check_saved_together`]).
CONFIG_SHA_KEY = "neat_hf.adapter_config_sha256"
#: safetensors metadata key of adapter_model.safetensors holding the sha256 of its tensors ([`tensors_sha256`]), which
#: `training_info.json` repeats as `WEIGHTS_STAMP_KEY` (see [`check_saved_together`]).
WEIGHTS_SHA_KEY = "neat_hf.adapter_weights_sha256"
#: Key of `training_info.json` naming the weights it (and the card written with it) describes.
WEIGHTS_STAMP_KEY = "adapter_weights_sha256"
#: Largest `training_info.json` that is read (a training record is a few KB; a bigger file is not one).
MAX_TRAINING_INFO_BYTES = 1 << 20

#: Prefix of the temporary files of atomic writes (cleaned from a folder by the next save into it).
TMP_PREFIX = ".tmp-"
#: Names of temporary files a killed write leaves: ours (`TMP_PREFIX`), and safetensors' own (its Rust writer
#: serializes into `.tmp` + 6 random characters beside the destination, then renames; no dash).
_STALE_TEMPORARY = re.compile(rf"{re.escape(TMP_PREFIX)}.*|\.tmp[A-Za-z0-9]{{6}}")



#: How long a save waits for another save into the same folder to finish before giving up.
SAVE_LOCK_TIMEOUT_S = 120.0


@dataclass
class _HeldLock:
    """This process's hold on one folder's lock: threads queue on `rlock`; the OS lock (`fd`) is held while
    `depth` > 0; `users` counts threads holding or waiting, so the entry is dropped only when none is left."""

    rlock: threading.RLock = field(default_factory=threading.RLock)
    fd: int = -1
    depth: int = 0
    users: int = 0


_HELD_LOCKS: dict[tuple[int, int], _HeldLock] = {}
_HELD_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, *, timeout: float = SAVE_LOCK_TIMEOUT_S, busy: str | None = None) -> Iterator[None]:
    """Hold an exclusive lock on the existing `folder` while the block runs: saves into one adapter folder are
    serialized (the second waits up to `timeout` seconds), a second run into one output folder is refused
    (`timeout=0`).

    The lock is `flock` on the folder itself, so nothing is written into it and the OS releases it when the holder
    dies (a killed run never leaves it stuck). It is re-entrant within a thread (a run holding its output folder saves
    the final adapter into it), and threads of one process queue for it like processes do.

    Args:
        folder (`str` or `os.PathLike`): an existing folder.
        timeout (`float`, *optional*, defaults to `SAVE_LOCK_TIMEOUT_S`): seconds to wait for another holder.
        busy (`str`, *optional*): the message of the error raised when the lock cannot be had in time.

    Raises:
        FolderInUseError: another process or thread held the folder for longer than `timeout`.
    """
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    stat = os.fstat(fd)
    key = (stat.st_dev, stat.st_ino)
    deadline = time.monotonic() + timeout
    message = busy or (
        f"{os.fspath(folder)!r} is in use: another process is saving or training into it (waited {timeout:g} s). "
        "Save into another folder, or retry when it has finished."
    )
    with _HELD_LOCKS_GUARD:
        held = _HELD_LOCKS.setdefault(key, _HeldLock())
        held.users += 1
    try:
        if not held.rlock.acquire(timeout=max(timeout, 0.0)):
            raise FolderInUseError(message)
        try:
            if held.depth == 0:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise FolderInUseError(message) from None
                        time.sleep(0.05)
                held.fd, fd = fd, -1
            held.depth += 1
            try:
                yield
            finally:
                held.depth -= 1
                if held.depth == 0:
                    os.close(held.fd)  # releases the flock
                    held.fd = -1
        finally:
            held.rlock.release()
    finally:
        if fd >= 0:
            os.close(fd)
        with _HELD_LOCKS_GUARD:
            held.users -= 1
            if held.users == 0:
                _HELD_LOCKS.pop(key, None)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` through a temporary file in the same folder and `os.replace`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and `os.replace`."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
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
    check_regular_file(weights_path)
    try:
        with safe_open(os.fspath(weights_path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as err:  # safetensors raises its own error types
        raise AdapterLoadError(f"Could not read adapter weights {os.fspath(weights_path)!r}: corrupt or not safetensors ({err}).") from err


def remove_stale_temporaries(directory: str | os.PathLike) -> list[str]:
    """Delete the temporary files that an interrupted atomic write left in `directory` (`.tmp-*`, and safetensors'
    `.tmpXXXXXX`); returns their names.

    Called at the start of a save into `directory`, under [`folder_lock`] (so never another save's files).
    """
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        path = os.path.join(directory, name)
        if _STALE_TEMPORARY.fullmatch(name) and os.path.isfile(path) and not os.path.islink(path):
            _silent_remove(path)
            removed.append(name)
    if removed:
        logger.info("Removed %d temporary files left by an interrupted save in %s: %s", len(removed), directory, removed)
    return removed


def remove_stale_staging(out: str | os.PathLike) -> list[str]:
    """Delete the sibling folders of `out` that a killed [`staging_directory`] left (its staging folder, or the
    previous `out` moved aside while the new one took its place); returns their names. Called before each write
    into `out`, which replaces whatever they held."""
    out = Path(out)
    if not out.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(out.name)}-(old-)?[A-Za-z0-9_]{{8}}")
    removed = [p.name for p in out.parent.iterdir() if pattern.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]
    for name in removed:
        shutil.rmtree(out.parent / name, ignore_errors=True)
    if removed:
        logger.info("Removed %d folders left by an interrupted write next to %s: %s", len(removed), out, removed)
    return removed


@contextlib.contextmanager
def staging_directory(out: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling of `out` to write into, that replaces `out` when the block succeeds and is removed when it
    fails. A kill leaves `out` old, new or absent (between the two renames), never a mix, never half-deleted; the
    next write cleans up ([`remove_stale_staging`]). Used by `save_as_lora` and `neat-hub merge`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        yield staging
        apply_umask(staging)  # mkdtemp makes it 0700 (and libraries' own temporary files 0600); mkdir would not
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}-old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def check_saved_together(
    config_path: str | os.PathLike, weights_path: str | os.PathLike, *, training_info: Mapping[str, Any] | None = None
) -> None:
    """Refuse an adapter folder whose files come from two different saves (a save killed halfway).

    `save_pretrained` writes the weights first, then the card (`README.md`) and `training_info.json`, and the config
    last. Weights saved by neat-hf carry the sha256 of their config (`CONFIG_SHA_KEY`) and of their own tensors
    (`WEIGHTS_SHA_KEY`), which `training_info.json` repeats (`WEIGHTS_STAMP_KEY`). A config or a `training_info.json`
    that does not match was left by an earlier save: new weights would load with old settings, or under a card and a
    training record (dropout included) of other weights. Files without these keys (stock PEFT, older neat-hf) are
    accepted as they are.

    `training_info`: the folder's training record when the caller has read it already (`{}`: there is none).

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
    if training_info is None:
        stamp = recorded_weights_stamp(os.path.join(os.path.dirname(os.fspath(config_path)), TRAINING_INFO_NAME))
    else:
        stamp = weights_stamp(training_info)
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
    return weights_stamp(data) if isinstance(data, dict) else None


def weights_stamp(training_info: Mapping[str, Any]) -> str | None:
    """The `WEIGHTS_STAMP_KEY` of a training record already read (None when it has none)."""
    stamp = training_info.get(WEIGHTS_STAMP_KEY)
    return stamp if isinstance(stamp, str) else None


#: Longest integer literal accepted in a JSON file neat-hf reads (configs, training records, remote configs): far
#: beyond any count or size they hold, far below Python's 4300-digit `int()` limit (a raw ValueError otherwise).
MAX_JSON_INT_DIGITS = 40
_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
)


def not_regular_reason(path: str | os.PathLike) -> str | None:
    """None if `path` (symlinks resolved: the Hub cache's links to its blobs are fine) is a regular file; else what it
    is ("a named pipe (FIFO)", "a character device", "a directory", ...), or "missing". Reading a FIFO blocks
    forever and a device such as /dev/zero never ends, so every file neat-hf reads is checked first."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "missing"
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _FILE_KINDS if test(mode)), "not a regular file")


def check_regular_file(path: str | os.PathLike) -> str:
    """Return `path` if it is a regular file (after resolving symlinks), else raise one line saying what it is.

    Raises:
        AdapterLoadError: `path` is a FIFO, a device, a socket, a directory or missing.
    """
    reason = not_regular_reason(path)
    if reason is not None:
        raise AdapterLoadError(
            f"{os.fspath(path)!r} is {reason}, not a regular file; an adapter folder holds regular files only."
        )
    return os.fspath(path)


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_JSON_INT_DIGITS:
        raise AdapterLoadError(
            f"holds an integer of {len(text.lstrip('-')):,d} digits (at most {MAX_JSON_INT_DIGITS} are accepted)"
        )
    return int(text)


def loads_bounded_json(text: str | bytes) -> Any:
    """`json.loads` with every integer literal bounded ([`MAX_JSON_INT_DIGITS`]).

    Raises:
        AdapterLoadError: an integer literal is too long (the message starts with "holds an integer").
        ValueError, RecursionError: what `json.loads` raises for text that is not JSON or nested too deep.
    """
    return json.loads(text, parse_int=_bounded_int)


def read_json_file(path: str | os.PathLike, *, max_bytes: int, what: str) -> Any:
    """Parse a small JSON file of an adapter folder (`adapter_config.json`, `training_info.json`): only a regular file
    is read (opened without blocking, so a FIFO is refused, not waited on), its size is checked before it is read, it
    must be UTF-8, integers are bounded ([`loads_bounded_json`]), and nesting too deep for the parser is an error like
    any other.

    Raises:
        AdapterLoadError: the file is not a regular file, larger than `max_bytes` ("this is not `what`"), not UTF-8,
            not JSON, or holds an over-long integer.
        OSError: the file cannot be opened.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            check_regular_file(path)  # raises, naming what it is
        if info.st_size > max_bytes:
            raise AdapterLoadError(
                f"{os.fspath(path)!r} is {info.st_size:,d} bytes; at most {max_bytes:,d} are read. This is not {what}."
            )
        raw = handle.read(max_bytes + 1)
    try:
        return loads_bounded_json(raw.decode("utf-8"))
    except AdapterLoadError as err:
        raise AdapterLoadError(f"{os.fspath(path)!r} {err}; this is not {what}.") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise AdapterLoadError(f"{os.fspath(path)!r} is not valid UTF-8 JSON: {err}") from err


def _silent_remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


#: safetensors dtypes an adapter tensor may have: the float types neat-hf computes in, and the integer/bool types the
#: loader itself refuses by tensor name (or accepts for integer buffers of `modules_to_save`).
LOADABLE_DTYPES = ("F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL")


def check_tensor_dtypes(path: str | os.PathLike) -> None:
    """Refuse, from the safetensors header, a tensor of a dtype neat-hf does not compute with (float8, float4,
    complex, unsigned wider than 8 bits), by name and before any of it is read: torch has no NaN/inf check or
    arithmetic for some of them.

    Raises:
        AdapterLoadError: naming the tensor and its dtype, or the file is not readable safetensors.
    """
    check_regular_file(path)
    try:
        with safe_open(os.fspath(path), framework="pt") as handle:
            dtypes = {key: handle.get_slice(key).get_dtype() for key in handle.keys()}
    except Exception as err:  # safetensors raises its own error types
        raise AdapterLoadError(f"Could not read adapter weights {os.fspath(path)!r}: corrupt or not safetensors ({err}).") from err
    for key, dtype in dtypes.items():
        if dtype not in LOADABLE_DTYPES:
            raise AdapterLoadError(
                f"Adapter tensor {key!r} in {os.fspath(path)!r} has dtype {dtype}, which neat-hf does not load; adapter "
                "weights must be float32/float16/bfloat16 (it is refused rather than converted)."
            )


def read_adapter_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load adapter tensors from a safetensors file (never pickle), with a clear error if it is corrupt or holds a
    dtype neat-hf does not compute with ([`check_tensor_dtypes`])."""
    check_tensor_dtypes(path)
    try:
        return load_file(os.fspath(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise AdapterLoadError(f"Could not read adapter weights {os.fspath(path)!r}: corrupt or not safetensors ({err}).") from err


def read_tensor_shapes(path: str | os.PathLike) -> dict[str, list[int]]:
    """{key: shape} of a safetensors file, read from its header (no tensor is loaded).

    Raises:
        AdapterLoadError: the file is not readable safetensors.
    """
    check_regular_file(path)
    try:
        with safe_open(os.fspath(path), framework="pt") as handle:
            return {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as err:  # safetensors raises its own error types
        raise AdapterLoadError(f"Could not read adapter weights {os.fspath(path)!r}: corrupt or not safetensors ({err}).") from err


def count_adapter_parameters(weights_path: str | os.PathLike) -> int:
    """Number of parameters in an adapter_model.safetensors, read from its header (no tensor is loaded)."""
    return sum(math.prod(shape) for shape in read_tensor_shapes(weights_path).values())
