"""Ctrl-C and `kill` during training end cleanly: the adapter trained so far becomes a checkpoint that resumes.

[`stop_on_signal`] turns SIGINT/SIGTERM into a request that [`StopOnSignal`] answers at the end of the current
optimizer step: `control.should_save` (the Trainer writes `checkpoint-<step>` through its normal `_save_checkpoint`
path, adapter, optimizer, scheduler, RNG and trainer state) and `control.should_training_stop`. A second signal
interrupts at once (KeyboardInterrupt), for a user who does not want to wait for the step to finish.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from transformers import TrainerCallback

#: Exit status of a process ended by a signal, as shells report it (128 + signal number).
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class StopOnSignal(TrainerCallback):
    """Stops training at the end of the step in which a signal arrived, after saving a checkpoint.

    Attributes:
        received (`signal.Signals`, *optional*): The signal that asked to stop (None while none has).
    """

    def __init__(self) -> None:
        self.received: signal.Signals | None = None

    def request_stop(self, signum: int) -> None:
        """Ask the training loop to save and stop at the end of the current step."""
        self.received = signal.Signals(signum)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.received is not None:
            control.should_save = True
            control.should_training_stop = True
        return control

    @property
    def exit_code(self) -> int:
        """130 after SIGINT, 143 after SIGTERM."""
        return EXIT_CODES.get(self.received, 130) if self.received is not None else 0


@contextlib.contextmanager
def stop_on_signal(callback: StopOnSignal) -> Iterator[StopOnSignal]:
    """Route SIGINT/SIGTERM to `callback` while the block runs (main thread only; elsewhere a no-op).

    The first signal asks for a clean stop; a second one raises `KeyboardInterrupt` at once.
    """
    if threading.current_thread() is not threading.main_thread():
        yield callback
        return

    def handler(signum: int, frame: Any) -> None:
        if callback.received is not None:
            raise KeyboardInterrupt
        callback.request_stop(signum)

    previous = {sig: signal.signal(sig, handler) for sig in EXIT_CODES}
    try:
        yield callback
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
