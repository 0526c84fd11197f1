"""Kill-at-step fault injection for the reliability tests (tests/test_faults.py, tests/test_deepspeed.py).

- `file_operation_hook(root, kill_at, counter)`: a `sys.addaudithook` hook that counts file operations under `root`
  (open for writing, rename/replace, remove, mkdir, rmdir) and SIGKILLs the process at the `kill_at`-th. Python's audit
  events see these calls from any library (torch.save, json, tempfile, os.replace), so nothing is patched; only
  safetensors' Rust writer is invisible, and neat-hf renames its files into place, which is seen.
- `kill_at_step(operation, root, kill_at)`: runs `operation()` in a forked child with the hook. Forking keeps a trial
  cheap (no new interpreter), and is safe as long as the forking process has not run parallel torch ops yet.
- `install_from_env()`: installs the hook from `FAULT_ROOT` / `FAULT_KILL_AT` / `FAULT_RANK` (used by tests/ds_driver.py
  under torchrun, where each rank is its own process).
- Run as a script (`python tests/fault_injection.py checkpoint-trials|rotation-trials ...`), it runs the
  single-process checkpoint trials: an uninterrupted reference, a counting run, then for each kill point a run
  SIGKILLed there (during the save of `checkpoint-4`; or, rotating with `save_total_limit=1`, at any file operation
  after the first checkpoint is complete) and a resume with `resume_from_checkpoint=True`, each in a child forked from
  one pristine process.
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


def _dir_fd(event: str, args: tuple) -> object:
    """The `dir_fd` argument of a file-operation audit event (None or -1: relative to the working directory)."""
    if event in ("os.remove", "os.rmdir", "shutil.rmtree"):
        return args[1] if len(args) > 1 else None
    if event == "os.mkdir":
        return args[2] if len(args) > 2 else None
    if event == "os.rename":
        return args[2] if len(args) > 2 else None
    return None


def file_operation_hook(
    root: str | os.PathLike, kill_at: int, counter: list[int], log: list[str] | None = None
) -> Callable[[str, tuple], None]:
    """Audit hook: count file operations under `root` in `counter[0]`; SIGKILL this process at the `kill_at`-th.

    Paths relative to a `dir_fd` (how `shutil.rmtree` removes each file and folder) are resolved through
    `/proc/self/fd`, so every single removal inside a tree deletion is a kill point. `log` (optional) receives one
    `"<event> <path relative to root>"` line per counted operation.
    """
    root_text = os.path.realpath(root)

    def resolve(path: object, dir_fd: object) -> str | None:
        try:
            text = os.fsdecode(path)  # type: ignore[arg-type]
            if isinstance(dir_fd, int) and dir_fd >= 0 and not os.path.isabs(text):
                text = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), text)
            return os.path.realpath(text)
        except (TypeError, ValueError, OSError):
            return None

    def under(path: object, dir_fd: object = None) -> bool:
        real = resolve(path, dir_fd)
        return real is not None and (real == root_text or real.startswith(root_text + os.sep))

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
            if not under(args[0], _dir_fd(event, args)):
                return
        else:
            return
        counter[0] += 1
        if log is not None:
            real = resolve(args[0], None if event == "open" else _dir_fd(event, args)) or "?"
            log.append(f"{event} {os.path.relpath(real, root_text)}")
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
    return _run_forked(operation, root, kill_at, timeout)[0]


def operation_log(operation: Callable[[], object], root: str | os.PathLike, timeout: float = 300) -> list[str]:
    """Run `operation()` to the end in a forked child; the file operations it made under `root`, in order (one
    `"<event> <relative path>"` line each; kill point k is line k-1)."""
    return _run_forked(operation, root, 0, timeout)[1]


def _run_forked(
    operation: Callable[[], object], root: str | os.PathLike, kill_at: int, timeout: float
) -> tuple[int, list[str]]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="neat-fault-") as scratch:
        report_path = os.path.join(scratch, "report.json")  # a file, not a pipe: a long log cannot block the child
        pid = os.fork()
        if pid == 0:  # child: never returns
            code = 1
            try:
                import torch

                torch.set_num_threads(1)
                counter: list[int] = [0]
                log: list[str] = []
                sys.addaudithook(file_operation_hook(root, kill_at, counter, log))
                operation()
                with open(report_path, "w", encoding="utf-8") as handle:
                    json.dump({"count": counter[0], "log": log}, handle)
                code = 0
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)
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
        if os.WIFSIGNALED(status):
            assert os.WTERMSIG(status) == signal.SIGKILL and kill_at > 0, f"child died of signal {os.WTERMSIG(status)}"
            return kill_at, []
        assert os.WEXITSTATUS(status) == 0, f"the operation failed in the child (exit {os.WEXITSTATUS(status)})"
        with open(report_path, encoding="utf-8") as handle:
            parsed = json.load(handle)
        return parsed["count"], parsed["log"]


def spread(count: int, most: int) -> list[int]:
    """Up to `most` kill points spread over 1..count, first and last included."""
    if count <= most:
        return list(range(1, count + 1))
    return sorted({1 + round(i * (count - 1) / (most - 1)) for i in range(most)})


def _driver_training(base_model: str, *flags: str) -> Callable[..., None]:
    """`train(output_dir, resume=False)`: one tests/ds_driver.py run (checkpoints every 2 steps, plus `flags`); a
    resume (`resume_from_checkpoint=True`) first writes which checkpoint it starts from to `resumed_from.txt`."""
    from ds_driver import parse_args, run

    from neat_hf.trainers.checkpoints import latest_complete_checkpoint

    def train(output_dir: str, resume: bool = False) -> None:
        ns = parse_args(["--base_model", base_model, "--output_dir", output_dir, "--save_steps", "2", *flags])
        ns.resume_from_checkpoint = True if resume else None
        if resume:
            with open(os.path.join(output_dir, "resumed_from.txt"), "w", encoding="utf-8") as handle:
                handle.write(os.path.basename(latest_complete_checkpoint(output_dir)))
        run(ns)

    return train


def checkpoint_trials(base_model: str, work: str, most: int) -> dict:
    """Single-process checkpoint trials (see the module docstring); returns what happened at each kill point."""
    from neat_hf.trainers.checkpoints import is_complete

    train = _driver_training(base_model)
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


def rotation_trials(base_model: str, work: str, most: int) -> dict:
    """Kill points over a run that rotates checkpoints (`save_total_limit=1`, checkpoints at steps 2, 4 and 5, 5 steps
    of 2-step epochs, then the final adapter save): an uninterrupted reference, a logging run, then for each file
    operation after `checkpoint-2` is complete (up to `most`, spread; 0: all) a run SIGKILLed there and a resume with
    `resume_from_checkpoint=True`. Each trial records the kill point's operation, the complete checkpoints the kill
    left, which one the resume started from and the step it ended at."""
    from neat_hf.trainers.checkpoints import MARKER, checkpoint_folders, is_complete

    train = _driver_training(base_model, "--max_steps", "5", "--save_total_limit", "1")
    reference = os.path.join(work, "reference")
    kill_at_step(lambda: train(reference), reference, 0)
    counting = os.path.join(work, "counting")
    log = operation_log(lambda: train(counting), counting)
    first_complete = log.index(f"os.remove {os.path.join('checkpoint-2', MARKER)}") + 1  # kill point numbers are 1-based
    points = list(range(first_complete + 1, len(log) + 1))
    if most and len(points) > most:
        points = [points[i - 1] for i in spread(len(points), most)]
    results = {"operations": log, "first_complete": first_complete, "trials": []}
    for kill_at in points:
        output = os.path.join(work, f"kill{kill_at}")
        kill_at_step(lambda: train(output), output, kill_at)
        complete = [os.path.basename(f) for f in checkpoint_folders(output) if is_complete(f)]
        kill_at_step(lambda: train(output, resume=True), os.path.join(work, "unused"), 0)
        with open(os.path.join(output, "resumed_from.txt"), encoding="utf-8") as handle:
            resumed_from = handle.read()
        with open(os.path.join(output, "driver_report.json"), encoding="utf-8") as handle:
            global_step = json.load(handle)["global_step"]
        results["trials"].append({
            "kill_at": kill_at, "operation": log[kill_at - 1], "complete_after_kill": complete,
            "resumed_from": resumed_from, "global_step": global_step, "output": output,
            "checkpoints_after_resume": [os.path.basename(f) for f in checkpoint_folders(output)],
            "leftovers": sorted(n for n in os.listdir(output) if n.startswith(".")),
        })
    return results


if __name__ == "__main__":
    command, base, work, most = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    trials = {"checkpoint-trials": checkpoint_trials, "rotation-trials": rotation_trials}
    print(json.dumps(trials[command](base, work, most)))
