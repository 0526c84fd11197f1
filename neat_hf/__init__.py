"""neat-hf: NEAT (nonlinear parameter-efficient adaptation, arXiv 2410.01870) for the Hugging Face stack.

Public API, mirroring PEFT: [`NeatConfig`], [`get_neat_model`], [`NeatModel`] (a `peft.PeftConfig` and a
`peft.PeftModel`), and [`apply_neat_to_peft`], which makes PEFT's own PEANuT build neat-hf's factored layers.
Adapter files are PEFT's PEANUT format.
"""

from .config import NeatConfig
from .constants import LIBRARY_VERSION
from .errors import (
    AdapterLoadError,
    AdapterMismatchError,
    MissingDependencyError,
    NeatError,
    NoTargetModulesError,
    UnsupportedModuleError,
    UnsupportedQuantizationError,
)
from .layer import NeatLayer
from .model import NeatModel, get_neat_model
from .peft_patch import apply_neat_to_peft, revert_neat_to_peft
from .quantization import prepare_model_for_kbit_training
from .tuner import NeatTuner  # registers itself as the tuner apply_neat_to_peft installs

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
