"""Shared by the multi-process tests (tests/test_deepspeed.py, tests/test_fsdp.py): launch a driver, read its report,
compare the adapters (and merged weights) two runs saved; and, inside the drivers (tests/ds_driver.py,
tests/fsdp_driver.py), the base of their gather counters."""

from __future__ import annotations

import json
import os
import socket
import subprocess
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


def run_launcher(
    command: list[str], *, timeout: int = 600, expect_failure: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run a launcher command line with one thread per rank (plus `env`); fail the test with its output unless it
    exits as expected."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if (result.returncode != 0) != expect_failure:
        pytest.fail(f"{command[:3]} exited with {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}")
    return result


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
