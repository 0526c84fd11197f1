"""lm-evaluation-harness integration: the `neat` model backend, bundled task suites and the `neat-lm-eval` command.

- [`NeatLM`]: lm-eval's `HFLM` with a NEAT adapter loaded on the base model (merged by default), registered as
  `--model neat`.
- [`evaluate`]: `lm_eval.simple_evaluate` with the bundled tasks on the include path.
- `TASKS_DIR`: the bundled task suites (`neat_commonsense`, `neat_commonsense_gen`, `neat_math`, `neat_math_gen`);
  pass it to plain `lm_eval --include_path`.
- `neat-lm-eval`: lm-eval's own command line, with `neat` registered and `TASKS_DIR` on the include path.

`lm-eval` is an optional dependency (`pip install "neat-hf[eval]"`); it is imported only when `NeatLM` or `evaluate`
is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from neat_hf.eval_harness.api import TASKS_DIR, evaluate
from neat_hf.lazy_imports import lazy_getattr

if TYPE_CHECKING:
    from neat_hf.eval_harness.model import NeatLM

__all__ = ["TASKS_DIR", "NeatLM", "evaluate"]

_LAZY = {"NeatLM": "model"}


# Importing lm-eval costs seconds and is optional: load it the first time NeatLM is asked for (`evaluate` imports it
# when called).
__getattr__ = lazy_getattr(__name__, _LAZY, globals())
