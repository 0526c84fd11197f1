"""Recipe registry: the paper's training setups shipped as YAML files under `neat_hf/trainers/recipes/`.

(Named like torchtune's `_recipe_registry.py`: a module called `recipes` would shadow the data folder of that name.)

A recipe is a flat YAML mapping of `neat-train` flags (model, data, NEAT and `TrainingArguments` fields) used as
defaults; flags given on the command line win, as with TRL's `--config` and torchtune's `key=value` overrides. A
recipe is named by its path under `recipes/` without `.yaml`, e.g. `commonsense/llama2-7b` (`neat-train --list`).
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any

import yaml

from neat_hf.errors import TrainingArgumentError, UnknownRecipeError

RECIPES_DIR = Path(__file__).with_name("recipes")
DEFAULT_RECIPE = "default"


def list_recipes() -> list[str]:
    """Names of the shipped recipes, sorted (`default`, `commonsense/llama2-7b`, …)."""
    names = [path.relative_to(RECIPES_DIR).with_suffix("").as_posix() for path in RECIPES_DIR.rglob("*.yaml")]
    return sorted(names, key=lambda name: (name != DEFAULT_RECIPE, name))


def resolve_recipe(name: str | os.PathLike) -> Path:
    """Returns the file of recipe `name`: a shipped recipe name, or a path to a YAML/JSON file.

    Raises:
        UnknownRecipeError: neither a shipped recipe nor an existing file; the message lists the known recipes.
    """
    text = os.fspath(name)
    shipped = RECIPES_DIR / f"{text.removesuffix('.yaml')}.yaml"
    if shipped.is_file() and shipped.resolve().is_relative_to(RECIPES_DIR.resolve()):
        return shipped
    if os.path.isfile(text) and text.endswith((".yaml", ".yml", ".json")):
        return Path(text)
    known = list_recipes()
    close = difflib.get_close_matches(text, known, n=3, cutoff=0.5)
    suggestion = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownRecipeError(
        f"Unknown recipe {text!r}.{suggestion} Known recipes: {', '.join(known)}. "
        "A path to your own .yaml/.json file works too (`neat-train --list` shows the recipes)."
    )


def load_recipe(name: str | os.PathLike) -> dict[str, Any]:
    """Reads recipe `name` (see [`resolve_recipe`]) into a flat `{flag: value}` dict."""
    return load_config_file(resolve_recipe(name))


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a flat YAML or JSON mapping of `neat-train` flags.

    Raises:
        TrainingArgumentError: the file does not exist, cannot be read, or is not a mapping of flag names to values.
    """
    path = Path(path)
    if not path.is_file():
        raise TrainingArgumentError(f"Config file {str(path)!r} does not exist.")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise TrainingArgumentError(f"Config file {str(path)!r} cannot be read as UTF-8 text: {error}") from error
    try:
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError, RecursionError) as error:
        kind = path.suffix.lstrip(".").upper() or "YAML"
        reason = " ".join(str(error).split())  # YAML's messages span lines (the mark, then the problem)
        raise TrainingArgumentError(f"Config file {str(path)!r} is not valid {kind}: {reason}") from error
    if values is None:
        return {}
    if not isinstance(values, dict) or not all(isinstance(key, str) for key in values):
        raise TrainingArgumentError(
            f"Config file {str(path)!r} must be a flat mapping of neat-train flags to values "
            f"(e.g. `learning_rate: 3.0e-4`), got {type(values).__name__}."
        )
    return values


def recipe_summary(name: str) -> str:
    """The first line of a recipe's header comment (its title), for `neat-train --list`."""
    for line in resolve_recipe(name).read_text(encoding="utf-8").splitlines():
        stripped = line.lstrip("# ").strip()
        if line.startswith("#") and stripped:
            return stripped
    return ""
