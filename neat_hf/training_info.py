"""`training_info.json`: the training setup recorded next to an adapter, scrubbed of credentials.

NeatTrainer (or [`save_training_info`]) writes a flat JSON object with the setup of the run; the model card shows it
(see `neat_hf.cards.adapter_card`). Known keys (all optional): `dataset`, `num_train_epochs`, `max_steps`, `global_step`,
`learning_rate`, `learning_rates` (`{group: lr}`), `effective_batch_size`, `per_device_train_batch_size`,
`gradient_accumulation_steps`, `world_size`, `lr_scheduler_type`, `warmup_ratio`, `warmup_steps`, `weight_decay`,
`optim`, `max_seq_length`, `precision`, `seed`, `deepspeed_stage`, `hardware`, `train_runtime`, `final_train_loss`
(last logged), `final_eval_loss`, `train_loss` (mean over the run), `base_model_quantization` (`{setting: value}` of
a bitsandbytes 4-/8-bit base, written from the live model); other scalar keys are shown as they are. These keys feed
the card without a row: `base_model_parameters` (for the trainable share), `framework_versions` (`{package: version}`
of the training run), `license`, `training_curve` (the loss-curve image in the folder, `training_curve.png`) and
`trackio_url` / `wandb_url` / `comet_url` (the tracker run, shown as a badge).

[`save_training_info`] also records which weights the file describes (`adapter_weights_sha256`, the digest that
`adapter_model.safetensors` carries in its metadata), so that a record of other weights is recognised: loading refuses
it (`neat_hf.io.check_saved_together` explains the save order) and the next save drops it ([`current_training_info`]).

Keys that look like credentials (`*_token`, `*secret*`, `*password*`, `*api_key*`) and values that look like Hub tokens
are dropped, never written.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from neat_hf.constants import ADAPTER_WEIGHTS_NAME, TRAINING_INFO_NAME
from neat_hf.errors import AdapterLoadError, NeatError
from neat_hf.io import (
    MAX_TRAINING_INFO_BYTES,
    WEIGHTS_SHA_KEY,
    WEIGHTS_STAMP_KEY,
    atomic_write_text,
    not_regular_reason,
    read_json_file,
    read_weights_metadata,
    recorded_weights_stamp,
)

logger = logging.getLogger(__name__)

#: A key is credential-like when its last word is token/auth/api key/secret/password, or it has the word secret,
#: password or api key anywhere (`hub_token`, `HF_TOKEN`, `api_key_file`); `eval_token_accuracy` or `max_new_tokens`
#: are metrics and settings, not credentials.
_SECRET_KEY = re.compile(
    r"(^|[\W_])(token|auth|api_?key|secret|password|passwd)$|(^|[\W_])(secret|password|passwd|api_?key)([\W_]|$)",
    re.IGNORECASE,
)
_TOKEN_VALUE = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")


def sanitize_training_info(info: Mapping[str, Any]) -> dict[str, Any]:
    """Check that `info` is a flat JSON object and drop anything that looks like a credential.

    Values may be JSON scalars, lists of scalars, or objects of scalars (e.g. `learning_rates`).

    Raises:
        NeatError: `info` is not a mapping, a key is not a string, or a value is of another type (named).
    """
    if not isinstance(info, Mapping):
        raise NeatError(f"training_info must be a mapping of setting -> value, got {type(info).__name__}.")
    clean: dict[str, Any] = {}
    for key, value in info.items():
        if not isinstance(key, str):
            raise NeatError(f"training_info keys must be strings, got {key!r}.")
        if _SECRET_KEY.search(key):
            logger.warning("Dropped training_info key %r: it looks like a credential and is never written.", key)
            continue
        value = _check_info_value(key, value)
        if _contains_token(value):
            logger.warning("Dropped training_info key %r: its value looks like a Hub token.", key)
            continue
        clean[key] = value
    return clean


def _check_info_value(key: str, value: Any) -> Any:
    def scalar(v: Any) -> bool:
        return v is None or isinstance(v, (bool, int, float, str))

    if scalar(value):
        return value
    if isinstance(value, (list, tuple)) and all(scalar(v) for v in value):
        return list(value)
    if isinstance(value, Mapping) and all(isinstance(k, str) and scalar(v) for k, v in value.items()):
        return dict(value)
    raise NeatError(
        f"training_info[{key!r}] must be a JSON scalar, a list of scalars or an object of scalars, "
        f"got {type(value).__name__} {value!r:.80}."
    )


def _contains_token(value: Any) -> bool:
    if isinstance(value, str):
        return bool(_TOKEN_VALUE.search(value))
    if isinstance(value, list):
        return any(_contains_token(v) for v in value)
    if isinstance(value, dict):
        return any(_contains_token(v) for v in value.values())
    return False


def load_training_info(directory: str | os.PathLike) -> dict[str, Any] | None:
    """Read `training_info.json` from an adapter folder; None if there is none.

    Raises:
        AdapterLoadError: the file exists but is larger than `MAX_TRAINING_INFO_BYTES` (1 MiB) or not a valid UTF-8
            JSON object.
    """
    path = Path(directory) / TRAINING_INFO_NAME
    if not path.is_file():
        if os.path.lexists(path):  # a FIFO would block the reader forever, a device never end
            logger.warning("Ignoring %s: it is %s, not a regular file.", os.fspath(path), not_regular_reason(path))
        return None
    data = read_json_file(path, max_bytes=MAX_TRAINING_INFO_BYTES, what="a training record")
    try:
        return sanitize_training_info(data)
    except NeatError as err:
        raise AdapterLoadError(f"Invalid {os.fspath(path)!r}: {err}") from err


def current_training_info(directory: str | os.PathLike) -> dict[str, Any]:
    """`training_info.json` of `directory` if it describes the weights saved there now, else `{}`.

    A record stamped for other weights (an earlier adapter saved into the same folder) says nothing true about the
    new one: how it was trained, its evaluation, its dropout. Unstamped records (older neat-hf) are kept.

    Raises:
        AdapterLoadError: the file exists but is not a valid JSON object.
    """
    if describes_other_weights(directory):
        logger.info("Dropping %s of %s: it describes other weights than the ones saved there now.", TRAINING_INFO_NAME, directory)
        return {}
    return load_training_info(directory) or {}


def describes_other_weights(directory: str | os.PathLike) -> bool:
    """Whether `directory/training_info.json` (and the card written with it) is stamped for other weights than the
    `adapter_model.safetensors` saved in `directory` now."""
    stamp = recorded_weights_stamp(Path(directory) / TRAINING_INFO_NAME)
    current = _weights_digest(directory)
    return stamp is not None and current is not None and stamp != current


def _weights_digest(directory: str | os.PathLike) -> str | None:
    weights = Path(directory) / ADAPTER_WEIGHTS_NAME
    return read_weights_metadata(weights).get(WEIGHTS_SHA_KEY) if weights.is_file() else None


def save_training_info(directory: str | os.PathLike, info: Mapping[str, Any]) -> Path:
    """Write `info` (scrubbed by [`sanitize_training_info`]) to `directory/training_info.json` atomically, stamped
    with the digest of the adapter weights saved in `directory` (`adapter_weights_sha256`; none without weights)."""
    clean = sanitize_training_info(info)
    clean.pop(WEIGHTS_STAMP_KEY, None)
    digest = _weights_digest(directory)
    if digest is not None:
        clean[WEIGHTS_STAMP_KEY] = digest
    os.makedirs(directory, exist_ok=True)
    path = Path(directory) / TRAINING_INFO_NAME
    atomic_write_text(path, json.dumps(clean, indent=2, sort_keys=True) + "\n")
    return path
