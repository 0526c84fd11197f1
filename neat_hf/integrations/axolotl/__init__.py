"""NEAT in Axolotl: list `neat_hf.integrations.axolotl.NeatPlugin` under `plugins:` and set `adapter: neat`.

Needs Axolotl >= 0.18 (`pip install "neat-hf[axolotl]"`); see `plugin.py` for the keys and `examples/axolotl/`.
"""

from neat_hf.integrations.axolotl.args import NeatArgs
from neat_hf.integrations.axolotl.plugin import NeatPlugin

__all__ = ["NeatArgs", "NeatPlugin"]
