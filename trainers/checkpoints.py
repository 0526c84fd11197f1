"""Trainer checkpoints that are whole or ignored: an "incomplete" marker written first, removed last.

The Trainer writes `checkpoint-N/` file by file (adapter, optimizer, scheduler, RNG, DeepSpeed shards on every rank,
`trainer_state.json`). A process killed halfway leaves a folder that `get_last_checkpoint` still picks, and resuming
from it crashes. `NeatTrainer._save_checkpoint` therefore writes `MARKER` into the folder before anything else and
removes it once every rank has finished; `latest_complete_checkpoint` skips folders that still hold the marker or
lack a readable `trainer_state.json` (which the Trainer writes last), so checkpoints written by stock transformers
or older neat-hf versions keep working.

Deleting a checkpoint (rotation under `save_total_limit`, an interrupted save cleared before saving again, the
non-best ones at the end of a `load_best_model_at_end` run) first renames it to `DELETING_PREFIX` + its name, which no
reader takes for a checkpoint, then removes it: a kill halfway never leaves a half-deleted `checkpoint-N` that still
looks complete. The Trainer's own rotation would delete the old checkpoint before the new one is marked complete
(a kill in between left no complete checkpoint), so [`rotation_deferred`] holds it back and
[`finish_checkpoint`] rotates once the new checkpoint is complete.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from neat_hf.errors import TrainerSetupError
from neat_hf.io import atomic_write_text

logger = logging.getLogger(__name__)

#: File whose presence marks a checkpoint folder as being written (or abandoned halfway by a kill).
MARKER = ".neat-checkpoint-incomplete"
TRAINER_STATE_NAME = "trainer_state.json"
#: Name prefix of a checkpoint folder being deleted (see the module docstring); leftovers are removed at the next save.
DELETING_PREFIX = ".deleting-"

_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def remove_checkpoint(folder: str) -> None:
    """Delete the checkpoint `folder`: renamed to a `DELETING_PREFIX` name first, so that it stops being a checkpoint
    in one atomic step, then removed."""
    parent, name = os.path.split(os.path.abspath(folder))
    doomed = os.path.join(parent, f"{DELETING_PREFIX}{name}-{uuid.uuid4().hex[:8]}")
    os.rename(folder, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def remove_deleted_leftovers(output_dir: str) -> None:
    """Finish the deletions a kill interrupted: remove `DELETING_PREFIX` folders of `output_dir`."""
    if not os.path.isdir(output_dir):
        return
    for name in os.listdir(output_dir):
        if name.startswith(DELETING_PREFIX):
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)


def begin_checkpoint(folder: str) -> None:
    """Prepare `folder` for a new checkpoint: clear what an interrupted save (or deletion) left there, then write the
    marker."""
    remove_deleted_leftovers(os.path.dirname(os.path.abspath(folder)))
    if os.path.isdir(folder) and not is_complete(folder):
        logger.warning("Removing the incomplete checkpoint %s (left by an interrupted save) before saving again.", folder)
        remove_checkpoint(folder)
    os.makedirs(folder, exist_ok=True)
    atomic_write_text(os.path.join(folder, MARKER), "A NeatTrainer checkpoint is being written here.\n")


def finish_checkpoint(folder: str, *, save_total_limit: int | None = None, best_model_checkpoint: str | None = None) -> None:
    """Mark `folder` complete (all files are written), then delete the older checkpoints beyond `save_total_limit`
    (see [`rotate_checkpoints`]; why only now: the module docstring)."""
    try:
        os.remove(os.path.join(folder, MARKER))
    except FileNotFoundError:
        pass
    rotate_checkpoints(os.path.dirname(os.path.abspath(folder)), save_total_limit, best_model_checkpoint)


@contextlib.contextmanager
def rotation_deferred(args: Any) -> Iterator[int | None]:
    """Hide `args.save_total_limit` from `Trainer._save_checkpoint`, which would rotate before the new checkpoint is
    marked complete; yields the limit, for [`finish_checkpoint`]. Restored on exit, exceptions included.

    transformers calls its module-level `rotate_checkpoints` from inside `_save_checkpoint`, with no seam to defer it;
    this is the one field it reads for that (the end-of-training deletion is handled by [`keep_only`]).
    """
    limit = args.save_total_limit
    args.save_total_limit = None
    try:
        yield limit
    finally:
        args.save_total_limit = limit


def rotate_checkpoints(
    output_dir: str, save_total_limit: int | None, best_model_checkpoint: str | None = None
) -> list[str]:
    """Delete the oldest checkpoints of `output_dir` until at most `save_total_limit` remain, as the Trainer does,
    keeping the newest complete one and `best_model_checkpoint`; incomplete ones (left by kills: one run writes into a
    folder at a time) go first, since they cannot be resumed from. No limit (None or <= 0): nothing is deleted.
    Returns the names of the deleted checkpoints."""
    if not save_total_limit or save_total_limit <= 0:
        return []
    folders = checkpoint_folders(output_dir)
    complete = [f for f in folders if is_complete(f)]
    protected = {os.path.abspath(complete[-1])} if complete else set()
    if best_model_checkpoint and os.path.isdir(best_model_checkpoint):
        protected.add(os.path.abspath(best_model_checkpoint))
    # Oldest first, the incomplete ones before any complete one.
    candidates = [f for f in folders if f not in complete] + complete
    remaining = len(folders)
    deleted = []
    for folder in candidates:
        if remaining <= max(save_total_limit, len(protected)):
            break
        if os.path.abspath(folder) not in protected:
            logger.info("Deleting older checkpoint %s (save_total_limit=%d).", folder, save_total_limit)
            remove_checkpoint(folder)
            deleted.append(os.path.basename(folder))
            remaining -= 1
    return deleted


def tidy_finished_run(output_dir: str, save_total_limit: int | None, finished: str) -> list[str]:
    """Leave the `output_dir` of a run that has nothing left to train as its own saves would have: a resume of it
    saves no checkpoint, so nothing else would. Finishes the deletions a kill interrupted ([`remove_deleted_leftovers`])
    and deletes the checkpoints beyond `save_total_limit` ([`rotate_checkpoints`], keeping the newest complete one and
    the run's best), which remain when a kill came between a checkpoint's completion and the rotation after it, or
    when the limit is given only on the resume. Only when `finished` (the checkpoint that reached `max_steps`) is the
    newest complete checkpoint: a resume from an older one leaves the folder as it is. Returns the names of the deleted
    checkpoints."""
    complete = [folder for folder in checkpoint_folders(output_dir) if is_complete(folder)]
    if not complete or not os.path.samefile(finished, complete[-1]):
        return []
    remove_deleted_leftovers(output_dir)
    best = _best_model_checkpoint(complete[-1])
    return rotate_checkpoints(output_dir, save_total_limit, best)


def _best_model_checkpoint(folder: str) -> str | None:
    """The `best_model_checkpoint` recorded in `folder`'s trainer state, as a checkpoint of `folder`'s parent (the
    Trainer records it as a path relative to the run's working directory); None when there is none."""
    try:
        with open(os.path.join(folder, TRAINER_STATE_NAME), encoding="utf-8") as handle:
            best = json.load(handle).get("best_model_checkpoint")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(best, str) or not best:
        return None
    return os.path.join(os.path.dirname(os.path.abspath(folder)), os.path.basename(os.path.normpath(best)))


def keep_only(output_dir: str, keep: str) -> None:
    """Delete every checkpoint of `output_dir` but `keep` (what the Trainer does after `load_best_model_at_end` with
    `save_total_limit=1`, here through [`remove_checkpoint`])."""
    for folder in checkpoint_folders(output_dir):
        if not os.path.samefile(folder, keep):
            remove_checkpoint(folder)


def is_complete(folder: str) -> bool:
    """Whether `folder` is a checkpoint that can be resumed from: no marker, and a `trainer_state.json` that parses."""
    if os.path.exists(os.path.join(folder, MARKER)):
        return False
    try:
        with open(os.path.join(folder, TRAINER_STATE_NAME), encoding="utf-8") as handle:
            return isinstance(json.load(handle), dict)
    except (OSError, ValueError):
        return False


def already_finished(global_step: int, max_steps: int, checkpoint: str, *, announce: bool = True) -> bool:
    """Whether a run resumed from `checkpoint` at `global_step` has nothing left to train (`max_steps` reached); says so
    in one line. The Trainer would otherwise run one more optimizer step (and write `checkpoint-<max_steps + 1>`) when
    the step count is not a whole number of epochs: it checks for the end only after a step."""
    if max_steps <= 0 or global_step < max_steps:
        return False
    if announce:
        logger.warning(
            "%s is at step %d of max_steps %d: this run had already finished, so nothing is trained (the adapter is "
            "the checkpoint's). Raise --max_steps (or --num_train_epochs) to train further.",
            checkpoint, global_step, max_steps,
        )
    return True


def checkpoint_folders(output_dir: str) -> list[str]:
    """`checkpoint-N` folders of `output_dir`, oldest (smallest N) first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = _CHECKPOINT.match(name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            found.append((int(match.group(1)), os.path.join(output_dir, name)))
    return [path for _, path in sorted(found)]


def latest_complete_checkpoint(output_dir: str, *, announce: bool = True) -> str:
    """The newest complete checkpoint of `output_dir`; says in one line which newer ones were skipped as incomplete.

    Raises:
        TrainerSetupError: `output_dir` holds no complete checkpoint.
    """
    folders = checkpoint_folders(output_dir)
    skipped = []
    for folder in reversed(folders):
        if is_complete(folder):
            if skipped and announce:
                logger.warning(
                    "Skipping incomplete checkpoint(s) %s (a save was interrupted); resuming from %s.",
                    ", ".join(os.path.basename(s) for s in skipped),
                    os.path.basename(folder),
                )
            return folder
        skipped.append(folder)
    detail = f" (incomplete, from interrupted saves: {[os.path.basename(s) for s in skipped]})" if skipped else ""
    raise TrainerSetupError(
        f"resume_from_checkpoint=True, but {output_dir!r} holds no complete checkpoint{detail}; train from the start "
        "(drop --resume_from_checkpoint) or pass a checkpoint folder."
    )


def resolve_resume(
    resume_from_checkpoint: str | bool | None, output_dir: str, *, announce: bool = True
) -> str | None:
    """What `Trainer.train(resume_from_checkpoint=...)` should get: True becomes the newest complete checkpoint; an
    explicit folder must be complete. `announce=False` (other ranks than the first) skips the log line; with
    `announce=True` (the main process) resuming also finishes the deletions a kill interrupted in `output_dir`
    ([`remove_deleted_leftovers`]: a resumed run that has nothing left to train saves no checkpoint that would).

    Raises:
        TrainerSetupError: no complete checkpoint, or the folder given is incomplete (the message names the newest
            complete one).
    """
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        return None
    if announce:
        remove_deleted_leftovers(output_dir)
    if resume_from_checkpoint is True:
        return latest_complete_checkpoint(output_dir, announce=announce)
    folder = os.fspath(resume_from_checkpoint)
    if os.path.isdir(folder) and not is_complete(folder):
        parent = os.path.dirname(os.path.abspath(folder))
        complete = [f for f in checkpoint_folders(parent) if is_complete(f)]
        hint = f"; the newest complete one is {complete[-1]!r}" if complete else ""
        raise TrainerSetupError(
            f"Checkpoint {folder!r} is incomplete (its save was interrupted){hint}. Pass resume_from_checkpoint=True "
            "to pick the newest complete checkpoint."
        )
    return folder
