"""Make neat-hf's factored layer the layer behind PEFT's PEANUT type: [`apply_neat_to_peft`], [`revert_neat_to_peft`].

PEFT's PEANuT (`peft.tuners.peanut`) builds the dense out×in ΔW in every forward; neat-hf computes the same function
factored (`neat_hf.layer`). PEFT picks a tuner class per `peft_type` from `peft.mapping.PEFT_TYPE_TO_TUNER_MAPPING`,
and 0.21's `register_peft_method` only accepts types already in `PeftType`, so a new type cannot be added; PEANUT's
own entry can be pointed at `neat_hf.tuner.NeatTuner`. That one dictionary entry is the whole patch, in
the way liger-kernel patches transformers: explicit, idempotent, reversible, and refused on a PEFT it was not tested
against. After it, everything that builds PEANuT through PEFT — `peft.get_peft_model(model, PeanutConfig(...))`,
`PeftModel.from_pretrained`, TRL's `peft_config=`, Axolotl, transformers' `model.load_adapter` — builds neat-hf's
layers; files stay PEFT's PEANUT format, so unpatched PEFT loads them.

`get_neat_model`, `NeatModel.from_pretrained`, `NeatConfig(...)`, `NeatTrainer` and `neat-train` call it for you
(a `NeatConfig` asks for neat-hf's layer, so `peft_config=NeatConfig(...)` in TRL gets it without another call).

`neat_hf.config` imports this module (a `NeatConfig` applies the patch); the tuner, the layer below it and PEFT's tuner
classes are imported by the first `apply_neat_to_peft`, after the version check, so an untested PEFT is refused in one
line rather than failing inside PEFT. The layer types its config as PEFT's `PeanutConfig`, so nothing below the tuner
imports `neat_hf.config`: no cycle.
"""

from __future__ import annotations

import os

import peft

from packaging.specifiers import SpecifierSet
from packaging.version import Version
from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import PeftType

from neat_hf.errors import NeatError

#: PEFT versions whose PEANuT neat-hf was tested against (same files, same outputs within 1e-6): the patch refuses
#: others unless `NEAT_HF_ALLOW_UNTESTED_PEFT=1` is set.
TESTED_PEFT_VERSIONS = ">=0.21,<0.22"
#: Environment variable that lets [`apply_neat_to_peft`] patch an untested PEFT (at your own risk).
ALLOW_UNTESTED_ENV = "NEAT_HF_ALLOW_UNTESTED_PEFT"

_original_tuner: type | None = None
_neat_tuner: type | None = None


def check_peft_version(version: str | None = None, *, allow_untested: bool = False) -> None:
    """Refuse a PEFT outside [`TESTED_PEFT_VERSIONS`] (one line naming the range and the way out).

    Raises:
        NeatError: the installed (or given) PEFT version is untested and neither `allow_untested` nor
            `NEAT_HF_ALLOW_UNTESTED_PEFT=1` allows it.
    """
    if version is None:
        version = peft.__version__
    if Version(Version(version).base_version) in SpecifierSet(TESTED_PEFT_VERSIONS):
        return
    if allow_untested or os.environ.get(ALLOW_UNTESTED_ENV, "") not in ("", "0"):
        return
    raise NeatError(
        f"neat-hf replaces PEFT's PEANuT layer and was tested with peft{TESTED_PEFT_VERSIONS}, not peft {version}: "
        f"install a tested version (pip install 'peft{TESTED_PEFT_VERSIONS}'), or set {ALLOW_UNTESTED_ENV}=1 to try it."
    )


def apply_neat_to_peft(*, allow_untested: bool = False) -> None:
    """Make PEFT build neat-hf's factored NEAT layers for its PEANUT type. Idempotent; undo with [`revert_neat_to_peft`].

    Args:
        allow_untested (`bool`, *optional*, defaults to `False`): patch a PEFT outside [`TESTED_PEFT_VERSIONS`].

    Raises:
        NeatError: untested PEFT version (see [`check_peft_version`]).

    Example:

    ```python
    >>> import neat_hf, peft
    >>> neat_hf.apply_neat_to_peft()
    >>> model = peft.get_peft_model(base_model, peft.PeanutConfig(r=8, target_modules=["q_proj", "v_proj"]))
    ```
    """
    global _original_tuner, _neat_tuner
    if is_neat_applied():
        return
    check_peft_version(allow_untested=allow_untested)
    # lazy: after the version check (see the module docstring); PEFT's tuner classes load with it.
    from neat_hf.tuner import NeatTuner

    _neat_tuner = NeatTuner
    _original_tuner = PEFT_TYPE_TO_TUNER_MAPPING[PeftType.PEANUT]
    PEFT_TYPE_TO_TUNER_MAPPING[PeftType.PEANUT] = _neat_tuner


def revert_neat_to_peft() -> None:
    """Give PEANUT its stock PEFT tuner back (models already built keep their layers). A no-op when not applied."""
    global _original_tuner
    if not is_neat_applied():
        return
    PEFT_TYPE_TO_TUNER_MAPPING[PeftType.PEANUT] = _original_tuner
    _original_tuner = None


def is_neat_applied() -> bool:
    """Whether PEFT's PEANUT type currently builds neat-hf's layers."""
    return _neat_tuner is not None and PEFT_TYPE_TO_TUNER_MAPPING.get(PeftType.PEANUT) is _neat_tuner
