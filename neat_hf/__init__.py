"""neat-hf: NEAT (nonlinear parameter-efficient adaptation, arXiv 2410.01870) for the Hugging Face stack.

Public API, mirroring PEFT: [`NeatConfig`], [`get_neat_model`], [`NeatModel`] (a `peft.PeftConfig` and a
`peft.PeftModel`), and [`apply_neat_to_peft`], which makes PEFT's own PEANuT build neat-hf's factored layers.
Adapter files are PEFT's PEANUT format.
"""

from neat_hf.third_party_noise import quiet_known_import_noise

quiet_known_import_noise()  # before anything imports peft (and with it bitsandbytes)

from typing import TYPE_CHECKING

from neat_hf.constants import LIBRARY_VERSION
from neat_hf.lazy_imports import lazy_getattr
from neat_hf.errors import (
    AdapterLoadError,
    AdapterMismatchError,
    MissingDependencyError,
    NeatError,
    NoTargetModulesError,
    UnsupportedModuleError,
    UnsupportedQuantizationError,
)

if TYPE_CHECKING:
    from neat_hf.config import NeatConfig
    from neat_hf.layer import NeatLayer
    from neat_hf.model import NeatModel, get_neat_model
    from neat_hf.peft_patch import apply_neat_to_peft, revert_neat_to_peft
    from neat_hf.quantization import prepare_model_for_kbit_training
    from neat_hf.tuner import NeatTuner

__version__ = LIBRARY_VERSION

__all__ = [
    "AdapterLoadError",
    "AdapterMismatchError",
    "MissingDependencyError",
    "NeatConfig",
    "NeatError",
    "NeatLayer",
    "NeatModel",
    "NeatTuner",
    "NoTargetModulesError",
    "UnsupportedModuleError",
    "UnsupportedQuantizationError",
    "__version__",
    "apply_neat_to_peft",
    "get_neat_model",
    "prepare_model_for_kbit_training",
    "revert_neat_to_peft",
]

#: Public names whose modules import torch, transformers and peft: loaded on first use (PEP 562), so that `import
#: neat_hf` and the command lines (which refuse careless input before any heavy import) start fast.
_LAZY = {
    "NeatConfig": "config",
    "NeatLayer": "layer",
    "NeatModel": "model",
    "NeatTuner": "tuner",
    "apply_neat_to_peft": "peft_patch",
    "revert_neat_to_peft": "peft_patch",
    "get_neat_model": "model",
    "prepare_model_for_kbit_training": "quantization",
}

__getattr__ = lazy_getattr(__name__, _LAZY, globals())
