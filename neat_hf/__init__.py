"""neat-hf: NEAT (nonlinear parameter-efficient adaptation, arXiv 2410.01870) for the Hugging Face stack.

Public API, mirroring PEFT: [`NeatConfig`], [`get_neat_model`], [`NeatModel`]. Adapter files are PEFT's PEANUT format.
"""

from .config import NeatConfig
from .constants import LIBRARY_VERSION
from .errors import AdapterLoadError, AdapterMismatchError, NeatError, NoTargetModulesError, UnsupportedModuleError
from .layer import NeatLayer
from .model import NeatModel, get_neat_model

__version__ = LIBRARY_VERSION

__all__ = [
    "AdapterLoadError",
    "AdapterMismatchError",
    "NeatConfig",
    "NeatError",
    "NeatLayer",
    "NeatModel",
    "NoTargetModulesError",
    "UnsupportedModuleError",
    "__version__",
    "get_neat_model",
]
