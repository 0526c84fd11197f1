"""Trainer checkpoints that are whole or ignored: an "incomplete" marker written first, removed last.

The Trainer writes `checkpoint-N/` file by file (adapter, optimizer, scheduler, RNG, DeepSpeed shards on every rank,
`trainer_state.json`). A process killed halfway leaves a folder that `get_last_checkpoint` still picks, and resuming
from it crashes. `NeatTrainer._save_checkpoint` therefore writes `MARKER` into the folder before anything else and
removes it once every rank has finished; `latest_complete_checkpoint` skips folders that still hold the marker or
lack a readable `trainer_state.json` (which the Trainer writes last), so checkpoints written by stock transformers
or older neat-hf versions keep working.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from neat_hf.errors import TrainerSetupError
from neat_hf.io import atomic_write_text

logger = logging.getLogger(__name__)

#: File whose presence marks a checkpoint folder as being written (or abandoned halfway by a kill).
MARKER = ".neat-checkpoint-incomplete"
TRAINER_STATE_NAME = "trainer_state.json"

_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def begin_checkpoint(folder: str) -> None:
    """Prepare `folder` for a new checkpoint: clear what an interrupted save left there, then write the marker."""
    if os.path.isdir(folder) and not is_complete(folder):
        logger.warning("Removing the incomplete checkpoint %s (left by an interrupted save) before saving again.", folder)
        shutil.rmtree(folder)
    os.makedirs(folder, exist_ok=True)
    atomic_write_text(os.path.join(folder, MARKER), "A NeatTrainer checkpoint is being written here.\n")


def finish_checkpoint(folder: str) -> None:
    """Mark `folder` complete (all files are written)."""
    try:
        os.remove(os.path.join(folder, MARKER))
    except FileNotFoundError:
        pass


def is_complete(folder: str) -> bool:
    """Whether `folder` is a checkpoint that can be resumed from: no marker, and a `trainer_state.json` that parses."""
    if os.path.exists(os.path.join(folder, MARKER)):
        return False
    try:
        with open(os.path.join(folder, TRAINER_STATE_NAME), encoding="utf-8") as handle:
            return isinstance(json.load(handle), dict)
    except (OSError, ValueError):
        return False


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
    explicit folder must be complete. `announce=False` (other ranks than the first) skips the log line.

    Raises:
        TrainerSetupError: no complete checkpoint, or the folder given is incomplete (the message names the newest
            complete one).
    """
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        return None
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
