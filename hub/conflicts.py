"""What a push finds in the repo it goes to: files that contradict an adapter repo, and another adapter it replaces.

An adapter repo may hold pickles (an old `adapter_model.bin`), full-model weights (`model.safetensors`) or weights in
another format next to what a push uploads; [`conflicting_files`] lists them (deleted in the same commit with
`delete_conflicting`). An `adapter_config.json` of another adapter (another PEFT type or base model) is replaced by the
push and named in a warning ([`foreign_adapter_configs`]). [`conflict_operations`] runs both inside
`neat_hf.hub.commit.commit`, and [`ConflictCheck`] keeps one trainer's pushes from warning twice about a file.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import RevisionNotFoundError
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils.sha import git_hash

from neat_hf.config import MAX_CONFIG_BYTES, short_repr
from neat_hf.constants import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, PEFT_TYPE
from neat_hf.hub.error_translation import hub_errors
from neat_hf.io import loads_bounded_json

logger = logging.getLogger(__name__)

#: Never uploaded from a merged-model folder either: pickle-based formats.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")

CommitOperation = CommitOperationAdd | CommitOperationDelete
FULL_MODEL_WEIGHTS = re.compile(
    r"^(model|pytorch_model|tf_model|flax_model)([-.].*)?\.(safetensors|bin|h5|msgpack)(\.index\.json)?$"
)


@dataclass
class ConflictCheck:
    """How one pusher treats repo files that contradict an adapter repo (see [`conflict_operations`]).

    Args:
        delete (`bool`, defaults to `False`): delete the [`conflicting_files`] in the same commit (else only list
            them in a warning).
        warned (`set[str]`): what was already warned about. A trainer keeps one `ConflictCheck` for all its pushes,
            so a file left in place is named once, not at every checkpoint push.
    """

    delete: bool = False
    warned: set[str] = field(default_factory=set)


def conflicting_files(remote: Iterable[str], staged: Iterable[str]) -> list[str]:
    """Files of an adapter repo that contradict it and that the push would not replace.

    - pickles (`*.bin`, `*.pt`, ...): e.g. an old `adapter_model.bin` (another adapter's weights, which loaders may
      prefer or trip on), `pytorch_adapter.bin`, `training_args.bin`;
    - full-model weights (`model.safetensors`, `pytorch_model-00001-of-00002.bin`, `tf_model.h5`, ...);
    - weights in another format: `*.gguf` files (llama.cpp exports of a model or of a LoRA), and any `*.safetensors`
      at the repo root other than `adapter_model.safetensors` (diffusers' `pytorch_lora_weights.safetensors`,
      kohya-style LoRA files, weights under another name). A PEFT adapter repo holds nothing else at the root.

    Another adapter's `adapter_config.json` / `adapter_model.safetensors` at a path this push writes are replaced, not
    listed here (see [`foreign_adapter_configs`]). Trainer checkpoint folders (`last-checkpoint/`, `checkpoint-*/`)
    and the safetensors files of other sub-folders (named adapters) are left alone.
    """
    staged = set(staged)
    found = []
    for path in remote:
        if path in staged or _in_checkpoint_folder(path):
            continue
        name = path.rsplit("/", 1)[-1]
        root_weights = "/" not in path and name.endswith(".safetensors") and name != ADAPTER_WEIGHTS_NAME
        other_format = name.endswith(".gguf") or root_weights
        if name.endswith(PICKLE_SUFFIXES) or FULL_MODEL_WEIGHTS.match(name) or other_format:
            found.append(path)
    return sorted(found)


def foreign_adapter_configs(
    api: HfApi,
    repo_id: str,
    remote: Mapping[str, RepoFile],
    operations: Iterable[CommitOperation],
    *,
    revision: str | None,
    token: str | bool | None,
) -> dict[str, str]:
    """The remote `adapter_config.json` files this push replaces that belong to another adapter: `{path: what}`.

    For each staged `adapter_config.json` (outside checkpoint folders) whose path the repo already holds, the remote
    file is downloaded and compared with ours; not downloaded when its git sha is the staged file's (our own config,
    the usual case for checkpoint pushes), nor above `MAX_CONFIG_BYTES` (then it counts as unreadable). Another
    adapter means: another `peft_type` (a LoRA, an AdapterHub config without `peft_type`, ...), another
    `base_model_name_or_path` (when both name one), or a file that is not a JSON object. An earlier NEAT adapter for
    the same base is an older version of this one: not listed.
    """
    found = {}
    for op in operations:
        path = op.path_in_repo
        if not isinstance(op, CommitOperationAdd) or path.rsplit("/", 1)[-1] != ADAPTER_CONFIG_NAME:
            continue
        theirs_file = remote.get(path)
        if theirs_file is None or _in_checkpoint_folder(path):
            continue
        with op.as_file() as handle:
            ours_bytes = handle.read()
        if theirs_file.blob_id == git_hash(ours_bytes):
            continue  # byte-identical to the config we push
        if theirs_file.size > MAX_CONFIG_BYTES:
            found[path] = f"not an adapter config that can be read ({theirs_file.size:,d} bytes)"
            continue
        with tempfile.TemporaryDirectory(prefix="neat-remote-config-") as local:
            downloaded = api.hf_hub_download(repo_id, path, revision=revision, token=token, local_dir=local)
            theirs = _json_object(Path(downloaded).read_bytes())
        what = _other_adapter(theirs, _json_object(ours_bytes) or {})
        if what is not None:
            found[path] = what
    return found


def conflict_operations(
    api: HfApi,
    repo_id: str,
    operations: Sequence[CommitOperation],
    *,
    revision: str | None,
    token: str | bool | None,
    check: ConflictCheck,
) -> list[CommitOperationDelete]:
    """Check the repo before a push of `operations` into it: warn about the [`conflicting_files`] it holds (and with
    `check.delete`, return their deletions for the same commit), and name another adapter whose config the push
    replaces ([`foreign_adapter_configs`]). What `check.warned` holds already is not warned about again."""
    with hub_errors("list the files of", repo_id, revision=revision):
        try:
            tree = api.list_repo_tree(repo_id, revision=revision, recursive=True, token=token)
            remote = {item.path: item for item in tree if isinstance(item, RepoFile)}
        except RevisionNotFoundError:
            return []  # a branch about to be created holds nothing
        replaced = foreign_adapter_configs(api, repo_id, remote, operations, revision=revision, token=token)
    described = {f"{path} is {what}" for path, what in replaced.items()}
    if described - check.warned:
        check.warned |= described
        logger.warning("%s holds another adapter, which this push replaces: %s.", repo_id, "; ".join(sorted(described)))
    found = conflicting_files(remote, [op.path_in_repo for op in operations])
    if not found:
        return []
    if check.delete:
        logger.warning("Deleting %d file(s) that contradict a NEAT adapter repo from %s: %s", len(found), repo_id, found)
        return [CommitOperationDelete(path_in_repo=path) for path in found]
    if set(found) - check.warned:
        check.warned.update(found)
        logger.warning(
            "%s already holds %d file(s) that contradict a NEAT adapter repo and are left in place: %s. Delete them in "
            "the same commit with delete_conflicting=True (neat-hub push --delete-conflicting; Trainer: "
            "hub_delete_conflicting=True, neat-train --hub_delete_conflicting).",
            repo_id, len(found), found,
        )
    return []


def _in_checkpoint_folder(path: str) -> bool:
    """`path` lies in a Trainer checkpoint folder (`last-checkpoint/`, `checkpoint-*/`) pushed with its resume state."""
    first, _, rest = path.partition("/")
    return bool(rest) and (first == "last-checkpoint" or first.startswith("checkpoint-"))


def _json_object(data: bytes) -> dict[str, Any] | None:
    """`data` parsed as a JSON object, or None when it is not one (bytes that are not UTF-8 or JSON, a list, nesting
    too deep for the parser, ...)."""
    try:
        value = loads_bounded_json(data)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    return value if isinstance(value, dict) else None


def _other_adapter(theirs: dict[str, Any] | None, ours: Mapping[str, Any]) -> str | None:
    """What the remote adapter config `theirs` is, when it is not an earlier version of `ours`; else None."""
    if theirs is None:
        return "not a readable JSON object"
    peft_type, base = theirs.get("peft_type"), theirs.get("base_model_name_or_path")
    ours_base = ours.get("base_model_name_or_path")
    facts = f"peft_type {short_repr(peft_type)}, base model {short_repr(base)}"
    if peft_type != ours.get("peft_type", PEFT_TYPE):
        return f"another adapter ({facts})"
    if base and ours_base and base != ours_base:
        return f"an adapter for another base model ({facts})"
    return None
