"""The first seconds of every command (issue 23): no third-party import noise, careless input refused before the
heavy imports.

- bitsandbytes logs `Failed to load CPU gemm_4bit_forward from kernels-community ...` at import on CPUs with
  AVX512-BF16; neat-hf drops exactly that record (`neat_hf.third_party_noise`), unless `NEAT_HF_VERBOSE=1`.
- `neat-train` parses its arguments before it imports the Trainer, peft's model code or the job: a refusal is one line.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from neat_hf.third_party_noise import BNB_CPU_OPS_LOGGER, BNB_KERNEL_NOTICE, VERBOSE_ENV, quiet_known_import_noise

NOTICE = BNB_KERNEL_NOTICE + ": %s. Please make sure you already `pip install kernels`"


@pytest.fixture
def captured():
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger(BNB_CPU_OPS_LOGGER)
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def test_the_kernel_notice_is_dropped_and_other_warnings_are_kept(captured, monkeypatch):
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    quiet_known_import_noise()
    quiet_known_import_noise()  # idempotent
    logger = logging.getLogger(BNB_CPU_OPS_LOGGER)
    logger.warning(NOTICE, "no network")
    logger.warning("int8 matmul overflowed")  # a real warning of the same logger
    logging.getLogger("bitsandbytes").warning(BNB_KERNEL_NOTICE)  # the same words from another logger
    assert [r.getMessage() for r in captured] == ["int8 matmul overflowed"]


def test_verbose_shows_the_kernel_notice(captured, monkeypatch):
    monkeypatch.setenv(VERBOSE_ENV, "1")
    quiet_known_import_noise()
    logging.getLogger(BNB_CPU_OPS_LOGGER).warning(NOTICE, "no network")
    assert len(captured) == 1 and captured[0].getMessage().startswith(BNB_KERNEL_NOTICE)


def test_a_refused_flag_is_one_line_without_import_noise(tmp_path):
    """The issue's `--r 0`: stderr holds neat-train's line only (the kernel notice made it two)."""
    env = {key: value for key, value in os.environ.items() if key != VERBOSE_ENV}
    result = subprocess.run([sys.executable, "-m", "neat_hf.cli.train.main", "--r", "0"], capture_output=True,
                            text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [result.stderr.strip()], result.stderr
    assert result.stderr.startswith("neat-train: error: "), result.stderr
    assert BNB_KERNEL_NOTICE not in result.stderr


def test_a_refusal_imports_neither_the_trainer_nor_the_job(tmp_path):
    """What parsing does not need stays unimported until the arguments are accepted."""
    probe = (
        "import sys\n"
        "from neat_hf.cli.train.main import cli\n"
        "assert cli(['--r', '0']) == 2\n"
        "heavy = [m for m in ('neat_hf.cli.train.job', 'neat_hf.trainers.trainer', 'transformers.trainer', "
        "'neat_hf.model', 'datasets', 'transformers.models.llama.modeling_llama') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout, result.stdout
