"""STAND-IN for Axolotl's plugin interface, used only where Axolotl itself is not installed.

Axolotl 0.20+ requires Python >= 3.12, and the CI / dev environment of neat-hf runs Python 3.11 (the CPU build of
torch 2.13.0 on this machine is a cp311 wheel); Axolotl 0.18/0.19, which install on 3.11, pin transformers 5.16 and
peft 0.20, below neat-hf's requirements. So `tests/test_axolotl.py` checks `NeatPlugin` against this minimal
re-statement of the parts of Axolotl's interface a plugin adapter touches, written from Axolotl 0.21.0's source
(read, not copied):

- `axolotl.integrations.base.AdapterCapabilities(name, lora_like=False, relora=False)`, a frozen dataclass;
- `axolotl.integrations.base.BasePlugin`: `get_input_args()`, `get_adapter_capabilities()`, `pre_model_load(cfg)`,
  `load_adapter(model, cfg, inference=False, config_only=False)`, each a no-op by default;
- `PluginManager`: adapter name -> capability over the registered plugins (`supports_adapter`), and `load_adapter`,
  which returns the first plugin result that is not None;
- `axolotl.utils.dict.DictDefault`: a dict whose missing keys read as None, as attributes too;
- config validation (`utils/schemas/peft.py::LoraConfig.validate_adapter`): an `adapter:` other than lora, qlora or
  llama-adapter is accepted only if a registered plugin declares it;
- the adapter loader (`loaders/adapter.py::load_adapter`): lora/qlora/llama-adapter are built in, then the plugins'
  `load_adapter`, then LoRA-like plugin adapters through Axolotl's LoRA loader, else NotImplementedError;
- plugin input args (`integrations/config.py::merge_input_args`): the plugin's pydantic model becomes a base class of
  Axolotl's config model.

When Axolotl is installed, the tests use the real modules instead (`install()` does nothing).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, model_validator

BUILT_IN_ADAPTERS = ("lora", "qlora", "llama-adapter")


@dataclass(frozen=True)
class AdapterCapabilities:
    name: str
    lora_like: bool = False
    relora: bool = False


class BasePlugin:
    def get_input_args(self) -> str | None:
        return None

    def get_adapter_capabilities(self) -> list[AdapterCapabilities]:
        return []

    def pre_model_load(self, cfg: Any) -> None:
        return None

    def load_adapter(self, model: Any, cfg: Any, inference: bool = False, config_only: bool = False) -> Any:
        return None


class DictDefault(dict):
    def __getattr__(self, name: str) -> Any:
        return self.get(name)


class PluginManager:
    def __init__(self, plugins: list[BasePlugin]) -> None:
        self.plugins = list(plugins)

    def adapter_capabilities(self) -> dict[str, AdapterCapabilities]:
        return {c.name: c for plugin in self.plugins for c in plugin.get_adapter_capabilities()}

    def supports_adapter(self, adapter: str) -> bool:
        return adapter in self.adapter_capabilities()

    def load_adapter(self, model: Any, cfg: Any, inference: bool = False, config_only: bool = False) -> Any:
        for plugin in self.plugins:
            loaded = plugin.load_adapter(model, cfg, inference=inference, config_only=config_only)
            if loaded is not None:
                return loaded
        return None


def config_model(manager: PluginManager) -> type[BaseModel]:
    """Axolotl's config model with the plugins' input args merged in, validating `adapter:` as Axolotl does."""

    class AdapterSchema(BaseModel):
        adapter: str | None = None

        @model_validator(mode="before")
        @classmethod
        def validate_adapter(cls, data: dict) -> dict:
            adapter = data.get("adapter")
            if adapter and adapter not in BUILT_IN_ADAPTERS and not manager.supports_adapter(adapter):
                raise ValueError(f"Adapter '{adapter}' is not built in and was not registered by a plugin.")
            return data

    bases = [AdapterSchema]
    for plugin in manager.plugins:
        path = plugin.get_input_args()
        if path:
            module, name = path.rsplit(".", 1)
            bases.append(getattr(importlib.import_module(module), name))
    return types.new_class("AxolotlInputConfig", tuple(bases))


def load_adapter(manager: PluginManager, model: Any, cfg: Any, inference: bool = False, config_only: bool = False):
    """Axolotl's adapter dispatch, for an adapter that is not built in."""
    if cfg.adapter is None:
        return model, None
    loaded = manager.load_adapter(model, cfg, inference=inference, config_only=config_only)
    if loaded is not None:
        return loaded
    raise NotImplementedError(f"Adapter '{cfg.adapter}' is not built in and was not registered by a plugin.")


def install() -> bool:
    """Register this stand-in as `axolotl.integrations.base` and `axolotl.utils.dict` when Axolotl is not installed;
    True if it did."""
    if importlib.util.find_spec("axolotl") is not None or "axolotl" in sys.modules:
        return False
    modules = {}
    for name in ("axolotl", "axolotl.integrations", "axolotl.integrations.base", "axolotl.utils", "axolotl.utils.dict"):
        modules[name] = types.ModuleType(name)
        modules[name].__doc__ = "neat-hf test STAND-IN (tests/axolotl_standin.py), not Axolotl."
    modules["axolotl.integrations.base"].AdapterCapabilities = AdapterCapabilities
    modules["axolotl.integrations.base"].BasePlugin = BasePlugin
    modules["axolotl.utils.dict"].DictDefault = DictDefault
    sys.modules.update(modules)
    return True
