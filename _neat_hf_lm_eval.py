"""Start-up hook that makes the stock `lm_eval` command resolve `--model neat` (lm-eval 0.4.x has no plugin discovery).

lm-eval 0.4.13 finds model backends only in its own table (`lm_eval/models/__init__.py::MODEL_MAPPING`); it does not
read the `lm_eval.models` entry point that neat-hf declares (upstream request: EleutherAI/lm-evaluation-harness#3282).
So the wheel also installs `neat_hf_lm_eval.pth` at the top of site-packages. Python runs its one line at every
interpreter start; that line only compares `sys.argv[0]` / `sys.orig_argv` with lm-eval's command names (`lm_eval`,
`lm-eval`, `python -m lm_eval`) and, in an lm-eval process only, imports this module and calls [`install`]. Any other
Python process imports nothing of neat-hf or lm-eval.

[`install`] registers `neat` in lm-eval's model registry as a lazy `"module:Class"` placeholder, so neat-hf (and torch)
are imported only when a run actually asks for `--model neat`; `--model hf` and every other backend resolve exactly as
before. This module is top-level and imports nothing of `neat_hf`: importing `neat_hf.anything` would run
`neat_hf/__init__.py`, which loads torch, transformers and PEFT at interpreter start.

Remove when lm-eval loads `lm_eval.models` entry points: delete the `.pth` line in `setup.py` (`STARTUP_FILES`).
"""

from __future__ import annotations

import sys

#: The backend that `--model neat` resolves to (the same target as the `lm_eval.models` entry point).
NEAT_BACKEND = "neat_hf.eval_harness.model:NeatLM"


def install() -> bool:
    """Register `neat` in lm-eval's model registry, lazily; True if this call registered it.

    lm-eval's built-in backends are registered first (`import lm_eval.models`): `lm_eval.api.registry.get_model`
    imports them only while the registry is empty, so registering `neat` into an empty registry would hide every
    built-in backend. Nothing happens when lm-eval is not installed or `neat` is already registered (an lm-eval that
    discovers entry points, or a second `site-packages` path, such as a `lib64` link, running the `.pth` again).
    Never raises: a failure here would stop lm-eval from starting at all, so it is reported on stderr instead.
    """
    try:
        import lm_eval.models  # noqa: F401  (registers the built-in backends as lazy placeholders)
        from lm_eval.api.registry import model_registry
    except ImportError:
        return False  # neat-hf installed without its [eval] extra: there is no lm-eval to extend
    try:
        if "neat" in model_registry:
            return False
        model_registry.register("neat", target=NEAT_BACKEND)
        return True
    except Exception as err:  # noqa: BLE001 - see the docstring
        print(f"neat-hf: could not register `--model neat` with lm-eval ({err}); use neat-lm-eval.", file=sys.stderr)
        return False
