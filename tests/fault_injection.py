"""Kill-at-step fault injection for the reliability tests (tests/test_faults.py, tests/test_deepspeed.py).

- `file_operation_hook(root, kill_at, counter)`: a `sys.addaudithook` hook that counts file operations under `root`
  (open for writing, rename/replace, remove, mkdir, rmdir) and SIGKILLs the process at the `kill_at`-th. Python's audit
  events see these calls from any library (torch.save, json, tempfile, os.replace), so nothing is patched; only
  safetensors' Rust writer is invisible, and neat-hf renames its files into place, which is seen.
- `kill_at_step(operation, root, kill_at)`: runs `operation()` in a forked child with the hook. Forking keeps a trial
  cheap (no new interpreter), and is safe as long as the forking process has not run parallel torch ops yet.
- `install_from_env()`: installs the hook from `FAULT_ROOT` / `FAULT_KILL_AT` / `FAULT_RANK` (used by tests/ds_driver.py
  under torchrun, where each rank is its own process).
- Run as a script (`python tests/fault_injection.py checkpoint-trials ...`), it runs the single-process checkpoint
  trials: an uninterrupted reference, a counting run, then for each kill point a run SIGKILLed during the save of
  `checkpoint-4` and a resume with `resume_from_checkpoint=True`, each in a child forked from one pristine process.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_FILE_EVENTS = ("os.rename", "os.remove", "os.mkdir", "os.rmdir", "shutil.rmtree", "os.truncate")


def file_operation_hook(root: str | os.PathLike, kill_at: int, counter: list[int]) -> Callable[[str, tuple], None]:
    """Audit hook: count file operations under `root` in `counter[0]`; SIGKILL this process at the `kill_at`-th."""
    root_text = os.path.realpath(root)

    def under(path: object) -> bool:
        try:
            real = os.path.realpath(os.fsdecode(path))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
        return real == root_text or real.startswith(root_text + os.sep)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            if isinstance(path, int) or path is None or not under(path):
                return
            if mode is not None and not any(c in str(mode) for c in "wax+"):
                return
            if mode is None and not (flags or 0) & _WRITE_FLAGS:
                return
        elif event in _FILE_EVENTS:
            if not under(args[0]):
                return
        else:
            return
        counter[0] += 1
        if counter[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def install_from_env() -> None:
    """Install the hook when `FAULT_KILL_AT` is set (and this is rank `FAULT_RANK`, default 0)."""
    if "FAULT_KILL_AT" not in os.environ:
        return
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    if rank != int(os.environ.get("FAULT_RANK", "0")):
        return
    sys.addaudithook(file_operation_hook(os.environ["FAULT_ROOT"], int(os.environ["FAULT_KILL_AT"]), [0]))


def kill_at_step(operation: Callable[[], object], root: str | os.PathLike, kill_at: int, timeout: float = 300) -> int:
    """Run `operation()` in a forked child, SIGKILLed at its `kill_at`-th file operation under `root` (0: never).

    Returns the number of operations counted when the child finished, or `kill_at` when it was killed there.

    Raises:
        AssertionError: the child failed, hung past `timeout`, or was not killed at `kill_at` although it should be.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns
        code = 1
        try:
            os.close(read_fd)
            import torch

            torch.set_num_threads(1)
            counter = [0]
            sys.addaudithook(file_operation_hook(root, kill_at, counter))
            operation()
            os.write(write_fd, str(counter[0]).encode())
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(write_fd)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"child still running after {timeout} s")
        time.sleep(0.01)
    with os.fdopen(read_fd) as handle:
        report = handle.read()
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL and kill_at > 0, f"child died of signal {os.WTERMSIG(status)}"
        return kill_at
    assert os.WEXITSTATUS(status) == 0, f"the operation failed in the child (exit {os.WEXITSTATUS(status)})"
    return int(report)


def spread(count: int, most: int) -> list[int]:
    """Up to `most` kill points spread over 1..count, first and last included."""
    if count <= most:
        return list(range(1, count + 1))
    return sorted({1 + round(i * (count - 1) / (most - 1)) for i in range(most)})


def checkpoint_trials(base_model: str, work: str, most: int) -> dict:
    """Single-process checkpoint trials (see the module docstring); returns what happened at each kill point."""
    from ds_driver import parse_args, run

    from neat_hf.trainers.checkpoints import is_complete, latest_complete_checkpoint

    def train(output_dir: str, resume: bool = False) -> None:
        ns = parse_args(["--base_model", base_model, "--output_dir", output_dir, "--save_steps", "2"])
        ns.resume_from_checkpoint = True if resume else None
        if resume:
            with open(os.path.join(output_dir, "resumed_from.txt"), "w", encoding="utf-8") as handle:
                handle.write(os.path.basename(latest_complete_checkpoint(output_dir)))
        run(ns)

    reference = os.path.join(work, "reference")
    kill_at_step(lambda: train(reference), reference, 0)
    counting = os.path.join(work, "counting")
    steps = kill_at_step(lambda: train(counting), os.path.join(counting, "checkpoint-4"), 0)
    results = {"steps": steps, "trials": []}
    for kill_at in spread(steps, most):
        output = os.path.join(work, f"kill{kill_at}")
        kill_at_step(lambda: train(output), os.path.join(output, "checkpoint-4"), kill_at)
        complete_after_kill = is_complete(os.path.join(output, "checkpoint-4"))
        kill_at_step(lambda: train(output, resume=True), os.path.join(work, "unused"), 0)
        with open(os.path.join(output, "resumed_from.txt"), encoding="utf-8") as handle:
            resumed_from = handle.read()
        results["trials"].append(
            {"kill_at": kill_at, "checkpoint_4_complete": complete_after_kill, "resumed_from": resumed_from, "output": output}
        )
    return results


if __name__ == "__main__":
    command, base, work, most = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    assert command == "checkpoint-trials"
    print(json.dumps(checkpoint_trials(base, work, most)))
