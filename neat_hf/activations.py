"""Activation functions for NEAT's weight network.

Any key of `transformers.activations.ACT2FN` is accepted, as in PEFT's PEANuT, plus `"sin"`: sin(2πx), the periodic
activation studied in the NEAT paper (arXiv 2410.01870, §5 and Appendix A.2). Stock PEFT does not know `"sin"`, so an
adapter using it fails loudly there (its config check rejects the name) instead of loading with another function.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from transformers.activations import ACT2FN

from neat_hf.errors import NeatError

#: Activations that neat-hf provides beyond transformers' ACT2FN.
EXTRA_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sin": lambda x: torch.sin(2 * math.pi * x),
}


def available_activations() -> list[str]:
    """Every accepted activation name, sorted."""
    return sorted(set(ACT2FN) | set(EXTRA_ACTIVATIONS))


def is_peft_compatible_activation(name: str) -> bool:
    """Whether stock PEFT PEANuT can represent this activation (i.e. it is an ACT2FN key)."""
    return name in ACT2FN


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return the activation called `name`.

    Raises:
        ValueError: if the name is unknown; the message lists the accepted names.
    """
    if name in EXTRA_ACTIVATIONS:
        return EXTRA_ACTIVATIONS[name]
    if name in ACT2FN:
        return ACT2FN[name]
    raise NeatError(f"Unknown NEAT activation {name!r}. Must be one of {available_activations()}.")
