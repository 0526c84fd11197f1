"""neat-hf: NEAT (nonlinear parameter-efficient adaptation, arXiv 2410.01870) for the Hugging Face stack.

Public API, mirroring PEFT: [`NeatConfig`], [`get_neat_model`], [`NeatModel`]. Adapter files are PEFT's PEANUT format.
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
from .quantization import prepare_model_for_kbit_training

__version__ = LIBRARY_VERSION

__all__ = [
    "AdapterLoadError",
    "AdapterMismatchError",
    "MissingDependencyError",
    "NeatConfig",
    "NeatError",
    "NeatLayer",
    "NeatModel",
    "NoTargetModulesError",
    "UnsupportedModuleError",
    "UnsupportedQuantizationError",
    "__version__",
    "get_neat_model",
    "prepare_model_for_kbit_training",
]
