"""Shared by the multi-process tests (tests/test_deepspeed.py, tests/test_fsdp.py): launch a driver, read its report,
compare the adapters (and merged weights) two runs saved; and, inside the drivers (tests/ds_driver.py,
tests/fsdp_driver.py), the base of their gather counters."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from neat_hf.constants import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME

#: Two runs on the same global batches agree to fp32 round-off: Adam turns round-off in near-zero gradients into a few
#: 1e-5 of absolute difference after 4 steps; a wrong gather would be off by orders of magnitude more.
TOLERANCE = {"rtol": 1e-3, "atol": 1e-4}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def remove_deepspeed_shm(port: int | str) -> None:
    """Remove the shared-memory buffers a finished DeepSpeed launch on `port` left in /dev/shm.

    DeepSpeed's CPU communication op maps one all-reduce buffer per rank, named
    `deepspeed_allreduce_buffer_<uid>_<master address>_<master port>_<rank>` (about 66 MiB each), and never unlinks
    it: each launch would keep its buffers in RAM until the machine restarts, and a later launch that drew the same
    port would map the stale ones.
    """
    for path in glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def launch_env(**extra: str) -> dict[str, str]:
    """The environment of a launched multi-process run (plus `extra`): one thread per rank, and DeepSpeed's JIT-built
    CPU communication op kept in a folder of this Python environment's own (`TORCH_EXTENSIONS_DIR`, unless set).

    torch builds such ops in one folder per user by default, guarded by a lock file. Checkouts with other virtual
    environments on the same machine rebuild the op there in turn (its build flags name the environment's paths), for
    30-80 s under the lock, and a builder killed while holding the lock leaves it behind, which hangs every later
    launch; a lock removed by hand during a build lets a rank load a half-written op.
    """
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    environment = hashlib.sha256(sys.prefix.encode()).hexdigest()[:12]
    default_extensions = os.path.join(cache, "torch_extensions", f"env-{environment}")
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", default_extensions),
        **extra,
    }


def run_launcher(
    command: list[str], *, timeout: int = 600, expect_failure: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run a launcher command line in `launch_env(**env)`; fail the test unless it exits as expected.

    A failing launch keeps its whole output: it is written to a log file, and the failure message names that file and
    quotes every Python traceback in the output before the tails, since the rank that failed first often printed its
    traceback far above the end, which the launcher's report and the other ranks' errors fill. A launch past `timeout`
    gets SIGTERM first, so that the launcher stops its ranks (torchrun starts each in a session of its own: a SIGKILLed
    launcher would leave them running), and SIGKILL a minute later.
    """
    env = launch_env(**(env or {}))
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                stdout, stderr = process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                stdout, stderr = process.communicate()
            _fail_launch(command, f"ran past {timeout} s and was stopped", stdout, stderr)
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    if (result.returncode != 0) != expect_failure:
        expected = "a failure" if expect_failure else "success"
        _fail_launch(command, f"exited with {result.returncode} (expected {expected})", stdout, stderr)
    return result


def _fail_launch(command: list[str], what: str, stdout: str, stderr: str) -> None:
    fd, log = tempfile.mkstemp(prefix="neat-hf-launch-", suffix=".log")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(f"$ {shlex.join(command)}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}")
    tracebacks = "\n".join(python_tracebacks(stderr + "\n" + stdout)) or "(none)"
    pytest.fail(
        f"{shlex.join(command)}\n{what}; whole output in {log}\n--- every traceback ---\n{tracebacks}\n"
        f"--- stdout (end) ---\n{stdout[-4000:]}\n--- stderr (end) ---\n{stderr[-8000:]}",
        pytrace=False,
    )


_RANK_PREFIX = re.compile(r"^\[[\w-]*\d+\]:\s?")  # "[rank1]: " / "[default0]: ", which launchers may prepend


def python_tracebacks(text: str) -> list[str]:
    """Each distinct Python traceback in `text` (from "Traceback (most recent call last):" to its exception line),
    in order of first appearance; several ranks print the same one."""
    found: list[str] = []
    block: list[str] | None = None
    for line in text.splitlines():
        body = _RANK_PREFIX.sub("", line)
        if body.startswith("Traceback (most recent call last):"):
            block = [line]
        elif block is not None:
            block.append(line)
            if body and not body[0].isspace():  # the exception line ends the traceback
                joined = "\n".join(block)
                if joined not in found:
                    found.append(joined)
                block = None
    return found


def read_report(folder, name: str = "driver_report.json") -> dict:
    with open(os.path.join(folder, name), encoding="utf-8") as handle:
        return json.load(handle)


def assert_same_adapter(folder, reference, **tolerance) -> None:
    got = load_file(os.path.join(folder, ADAPTER_WEIGHTS_NAME))
    expected = load_file(os.path.join(reference, ADAPTER_WEIGHTS_NAME))
    assert set(got) == set(expected)
    for key in expected:
        assert got[key].dtype == torch.float32 and got[key].shape == expected[key].shape, key
        torch.testing.assert_close(got[key], expected[key], **(tolerance or TOLERANCE), msg=lambda m, k=key: f"{k}: {m}")
    with open(os.path.join(folder, ADAPTER_CONFIG_NAME)) as a, open(os.path.join(reference, ADAPTER_CONFIG_NAME)) as b:
        assert json.load(a) == json.load(b)


def assert_same_merge(folder, reference) -> None:
    got = load_file(os.path.join(folder, "merged_weights.safetensors"))
    expected = load_file(os.path.join(reference, "merged_weights.safetensors"))
    assert set(got) == set(expected) and len(expected) == 10
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], **TOLERANCE)


class TrainingStepCounter:
    """Base of the drivers' gather counters: subclasses patch library functions to count calls (recording each
    original in `_restore`), and count only while `active`, i.e. inside `trainer.training_step` (forward + backward of
    one micro-batch), after `start_step` has set up that step's counts."""

    def __init__(self) -> None:
        self.active = False
        self._restore: list[tuple[Any, str, Any]] = []

    def start_step(self) -> None:
        """Set up the counts of the training step about to run."""
        raise NotImplementedError

    def count_training_steps(self, trainer) -> None:
        """Wrap `trainer.training_step` so that each call starts a step and counts only while it runs."""
        training_step = trainer.training_step

        def counted_training_step(*args, **kwargs):
            self.start_step()
            self.active = True
            try:
                return training_step(*args, **kwargs)
            finally:
                self.active = False

        trainer.training_step = counted_training_step

    def uninstall(self) -> None:
        """Put back every patched function."""
        for owner, name, original in self._restore:
            setattr(owner, name, original)
