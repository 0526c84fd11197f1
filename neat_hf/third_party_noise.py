"""Known third-party import noise that importing neat-hf triggers, kept off the terminal unless asked for.

bitsandbytes (≥ 0.49, on CPUs with AVX512-BF16) logs a warning at import time when it cannot fetch an optional CPU
kernel from the Hub: `Failed to load CPU gemm_4bit_forward from kernels-community: ...`. neat-hf imports peft, which
imports bitsandbytes, so every neat-hf command and every `import neat_hf` began with that line, although nothing is
wrong (bitsandbytes falls back to its own kernel). [`quiet_known_import_noise`] drops exactly that record of exactly
that logger, and nothing else: other warnings of bitsandbytes, and every other logger, are untouched.

It is shown again when asked for: set `NEAT_HF_VERBOSE=1`, or set the `bitsandbytes` logger to DEBUG before importing
neat-hf (`logging.getLogger("bitsandbytes").setLevel(logging.DEBUG)`).
"""

from __future__ import annotations

import logging
import os

#: The logger and message prefix of the bitsandbytes kernel-fetch notice (bitsandbytes/backends/cpu/ops.py).
BNB_CPU_OPS_LOGGER = "bitsandbytes.backends.cpu.ops"
BNB_KERNEL_NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"
VERBOSE_ENV = "NEAT_HF_VERBOSE"


def verbose_requested() -> bool:
    """Whether the user asked to see third-party notices (`NEAT_HF_VERBOSE=1`, or bitsandbytes' logger at DEBUG)."""
    if os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    level = logging.getLogger("bitsandbytes").level
    return level != logging.NOTSET and level <= logging.DEBUG


class _KernelNoticeFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(BNB_KERNEL_NOTICE) or verbose_requested()


_FILTER = _KernelNoticeFilter()


def quiet_known_import_noise() -> None:
    """Drop bitsandbytes' kernel-fetch notice (see the module docstring); idempotent, and a no-op once imported.

    Called first thing by `neat_hf/__init__.py`, before anything imports peft or bitsandbytes.
    """
    logger = logging.getLogger(BNB_CPU_OPS_LOGGER)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
