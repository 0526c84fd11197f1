"""PEP 562 lazy attributes for the package `__init__` modules: a public name loads its module on first use.

`neat_hf`, `neat_hf.trainers` and `neat_hf.eval_harness` export names whose modules import torch, transformers, peft
or lm-eval (seconds each). Loading them on first use keeps `import neat_hf` cheap and lets the command lines refuse
careless input before those imports.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def lazy_getattr(package: str, names: Mapping[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package`: `names` maps each public name to its module (a dotted name, or a
    submodule of `package`); the first access imports it and caches the value in `namespace` (the package's
    `globals()`)."""

    def __getattr__(name: str) -> Any:
        if name in names:
            module = names[name] if "." in names[name] else f"{package}.{names[name]}"
            value = getattr(import_module(module), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
