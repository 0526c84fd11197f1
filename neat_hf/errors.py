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


class ServingLimitError(NeatError):
    """An exported adapter breaks a documented limit of an inference server (the message names server and limit)."""
