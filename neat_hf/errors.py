"""Exceptions raised by neat-hf.

All derive from `NeatError`, itself a `ValueError`, so existing `except ValueError` handlers keep working while callers
who care can catch the specific case.
"""

from __future__ import annotations


class NeatError(ValueError):
    """Base class of every error neat-hf raises for bad input."""


class NoTargetModulesError(NeatError):
    """`target_modules` (with `layers_to_transform` / `exclude_modules`) matched no layer of the model."""


class UnsupportedModuleError(NeatError, TypeError):
    """A matched target is not a layer NEAT can adapt (only `nn.Linear` and GPT-2's `Conv1D` are)."""


class AdapterLoadError(NeatError):
    """An adapter folder or Hub repo is missing a file, holds a corrupt file or an invalid config."""


class AdapterMismatchError(AdapterLoadError):
    """An adapter's tensors do not fit the base model (module missing or of another shape)."""


class UnsupportedQuantizationError(NeatError):
    """The base model is quantized in a way NEAT cannot adapt (only bitsandbytes 4-bit and 8-bit are supported), or
    a quantized base is combined with a setting that does not work with it (DeepSpeed ZeRO-3, an in-place merge)."""


class MissingDependencyError(NeatError, ImportError):
    """An optional dependency is needed but not installed; the message names the `neat-hf[...]` extra."""
