"""`NeatTrainParser`: the one parser of `neat-train`, an [`~transformers.HfArgumentParser`] that also reads a recipe
and a config file, as TRL's `TrlParser` reads `--config`.

Values come, lowest first, from the dataclasses, `neat-train`'s own default (`output_dir=neat-output`; `report_to`
stays transformers' default, `"none"`, so `--report_to trackio` or a recipe turns a tracker on), a recipe
(`--recipe`), a config file (`--config`), then the command line. Without `--recipe`, `--config` and
`--model_name_or_path`, the `default` recipe applies. Recipe and config values become the parser's defaults (TRL's
`set_defaults_with_config`), so `--help` and the command line treat them like any default.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
from collections.abc import Sequence
from typing import Any

from transformers import HfArgumentParser

from neat_hf.errors import TrainingArgumentError
from neat_hf.cli.train.recipe_registry import DEFAULT_RECIPE, list_recipes, load_config_file, load_recipe
from neat_hf.cli.train.script_args import DataArguments, ModelArguments
from neat_hf.trainers.neat_arguments import NeatArguments
from neat_hf.trainers.training_args import RENAMED_FIELDS, NeatTrainingArguments

ArgumentTuple = tuple[ModelArguments, DataArguments, NeatArguments, NeatTrainingArguments]

DATACLASSES = (ModelArguments, DataArguments, NeatArguments, NeatTrainingArguments)
#: Flags of the parser itself (not dataclass fields).
RUN_FLAGS = ("recipe", "config", "list")
#: Defaults of `neat-train` that differ from the dataclasses' (the adapter lands in ./neat-output).
CLI_DEFAULTS = {"output_dir": "neat-output"}


#: The flags `neat-train --help` shows (after --recipe/--config/--list); `--help-all` shows every flag.
COMMON_FLAGS = (
    "model_name_or_path", "dataset_name", "dataset_config_name", "train_file", "validation_file", "task",
    "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "max_steps", "num_train_epochs", "learning_rate",
    "per_device_train_batch_size", "gradient_accumulation_steps", "neat_r", "neat_target_modules", "neat_depth",
    "neat_act_fn", "bf16", "deepspeed", "push_to_hub", "hub_model_id",
)


#: Names users bring from other trainers (PEFT, torchtune, common scripts) -> the neat-train flag (without dashes).
FLAG_ALIASES = {
    "lr": "learning_rate", "rank": "neat_r", "lora_r": "neat_r",
    "epochs": "num_train_epochs", "batch_size": "per_device_train_batch_size", "model": "model_name_or_path",
    "dataset": "dataset_name", "steps": "max_steps", "output": "output_dir",
}


class _HelpAction(argparse.Action):
    """`-h/--help`: the short help; `--help-all`: every flag."""

    def __init__(self, option_strings: list[str], dest: str, full: bool = False, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, **kwargs)
        self.full = full

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option_string: str | None = None) -> None:
        print(parser.format_help() if self.full else parser.format_short_help())
        parser.exit()


class NeatTrainParser(HfArgumentParser):
    """The `neat-train` parser: model, data, NEAT and training arguments, plus `--recipe`, `--config` and `--list`.

    Example:
        >>> parser = NeatTrainParser()
        >>> (model_args, data_args, neat_args, training_args), recipe = parser.parse_args_and_config(["--max_steps", "5"])
        >>> recipe, training_args.max_steps
        ('default', 5)
    """

    def __init__(self, description: str | None = None) -> None:
        super().__init__(
            DATACLASSES,
            prog="neat-train",
            description=description,
            epilog="Recipes: " + ", ".join(list_recipes()) + ". Without --recipe/--config/--model_name_or_path the "
            "`default` recipe applies.",
            allow_abbrev=False,
            add_help=False,
        )
        group = self.add_argument_group("neat-train")
        group.add_argument("-h", "--help", action=_HelpAction, help="Show the most used flags and exit.")
        group.add_argument("--help-all", action=_HelpAction, full=True, help="Show every flag and exit.")
        group.add_argument("--recipe", default=None, help="Shipped recipe name (see --list) or a YAML/JSON file of defaults.")
        group.add_argument("--config", default=None, help="YAML/JSON file of flag values; overrides the recipe.")
        group.add_argument("--list", action="store_true", help="List the shipped recipes and exit.")
        self.set_defaults(**CLI_DEFAULTS)
        for action in self._actions:  # transformers' text is written for scripts that ignore these
            if action.dest == "resume_from_checkpoint":
                action.help = ("Resume a run: `true` for the last checkpoint-* folder in --output_dir, or a checkpoint "
                               "folder (Ctrl-C prints the exact command).")
            elif action.dest == "deepspeed":
                action.help = "DeepSpeed config: a bundled name (zero2, zero3, zero3_offload) or a JSON file."

    def format_short_help(self) -> str:
        """`neat-train --help`: how to start (`--recipe`, `--config`, `--list`), then the most used flags."""
        actions = {action.dest: action for action in self._actions}
        formatter = self._get_formatter()
        formatter.add_usage("neat-train [--recipe NAME] [--config FILE] [--FLAG VALUE ...]", [], [])
        formatter.add_text(self.description)
        formatter.start_section("start here")
        formatter.add_arguments([a for a in self._actions if a.dest in RUN_FLAGS or isinstance(a, _HelpAction)])
        formatter.end_section()
        formatter.start_section("most used flags (recipe and config values become their defaults)")
        formatter.add_arguments([actions[name] for name in COMMON_FLAGS if name in actions])
        formatter.end_section()
        hidden = len([a for a in self._actions if a.option_strings]) - len(COMMON_FLAGS)
        formatter.add_text(f"{self.epilog} `neat-train --help-all` lists all {hidden} other flags.")
        return formatter.format_help()

    @staticmethod
    def parse_run_flags(argv: Sequence[str]) -> argparse.Namespace:
        """`--recipe`, `--config`, `--list` and `--model_name_or_path` alone (they decide the defaults of the rest)."""
        pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        pre.add_argument("--recipe")
        pre.add_argument("--config")
        pre.add_argument("--list", action="store_true")
        pre.add_argument("--model_name_or_path", "--model-name-or-path")
        return pre.parse_known_args(list(argv))[0]

    def set_defaults_with_config(self, source: str, values: dict[str, Any]) -> dict[str, Any]:
        """Make the recipe's or config file's `values` the parser's defaults; every key must name a flag.

        Values are converted with each flag's type, as the command line would (YAML reads `3e-4` as a string).

        Returns:
            `dict` of the converted values, by flag name.

        Raises:
            TrainingArgumentError: an unknown key (with the closest flag) or a value the flag's type refuses.
        """
        actions = {action.dest: action for action in self._actions}
        # Recipes use transformers 5.23's field names; older versions know those fields by their old names.
        values = {(RENAMED_FIELDS[key] if key not in actions and RENAMED_FIELDS.get(key) in actions else key): value
                  for key, value in values.items()}
        unknown = [key for key in values if key not in actions or key in RUN_FLAGS]
        if unknown:
            hints = []
            for key in unknown:
                close = self.closest_flag(key)
                hints.append(f"{key!r}" + (f" (did you mean {close.lstrip('-')!r}?)" if close else ""))
            raise TrainingArgumentError(
                f"Unknown key(s) in {source}: {', '.join(hints)}. Keys are neat-train flags without the dashes "
                "(`neat-train --help` lists them)."
            )
        converted = {}
        for key, value in values.items():
            try:
                converted[key] = _convert(actions[key], value)
            except (TypeError, ValueError) as error:
                raise TrainingArgumentError(f"Bad value {value!r} for {key!r} in {source}: {error}") from error
        self.set_defaults(**converted)
        return converted

    def parse_args_and_config(self, argv: Sequence[str] | None = None) -> tuple[ArgumentTuple, str | None]:
        """Parse `neat-train` arguments into the four dataclasses, over the recipe's and config file's values.

        Returns:
            `((model_args, data_args, neat_args, training_args), recipe_name)`.

        Raises:
            UnknownRecipeError: `--recipe` names no shipped recipe or file.
            TrainingArgumentError: an unknown flag, or an unknown key or bad value in a recipe/config file.
            DeepSpeedConfigError: the DeepSpeed config is missing or invalid.
        """
        argv = list(sys.argv[1:] if argv is None else argv)
        options = self.parse_run_flags(argv)
        config = load_config_file(options.config) if options.config else {}
        recipe = options.recipe or config.get("recipe")
        config.pop("recipe", None)
        if recipe is None and not options.config and options.model_name_or_path is None:
            recipe = DEFAULT_RECIPE
        from_files: dict[str, Any] = {}
        if recipe:
            from_files.update(self.set_defaults_with_config(f"recipe {recipe!r}", load_recipe(recipe)))
        from_files.update(self.set_defaults_with_config(f"config {options.config!r}", config))

        namespace, unknown = self.parse_known_args(argv)
        if unknown:
            raise TrainingArgumentError(self._unknown_flags_message(unknown))
        values = vars(namespace)
        explicit = set(from_files) | {a.lstrip("-").split("=", 1)[0].replace("-", "_") for a in argv if a.startswith("--")}
        if values["task"] == "image-classification" and "remove_unused_columns" not in explicit:
            values["remove_unused_columns"] = False  # the image transform reads the raw image column
        outputs = []
        for dtype in DATACLASSES:
            names = {f.name for f in dataclasses.fields(dtype) if f.init}
            outputs.append(dtype(**{k: v for k, v in values.items() if k in names}))
        return tuple(outputs), recipe  # type: ignore[return-value]

    def closest_flag(self, name: str) -> str | None:
        """The known `--flag` closest to `name` (a flag or config key, dashes and `-`/`_` spelling ignored), or None.

        NEAT flags also answer to their `NeatConfig` name (`r` → `--neat_r`, `target_modules` →
        `--neat_target_modules`), and a few names from other trainers map to ours ([`FLAG_ALIASES`]).
        """
        spellings: dict[str, str] = {}
        flags = sorted((s for action in self._actions for s in action.option_strings if s.startswith("--")),
                       key=lambda s: ("-" in s[2:], s))  # prefer the underscore spelling the docs use
        for flag in flags:
            key = flag[2:].replace("-", "_")
            spellings.setdefault(key, flag)
            spellings.setdefault(key.removeprefix("neat_"), flag)
        for alias, target in FLAG_ALIASES.items():
            if target in spellings:
                spellings.setdefault(alias, spellings[target])
        close = difflib.get_close_matches(name.lstrip("-").replace("-", "_"), list(spellings), n=1)
        return spellings[close[0]] if close else None

    def _unknown_flags_message(self, unknown: list[str]) -> str:
        hints = []
        for flag in (a.split("=", 1)[0] for a in unknown if a.startswith("-")):
            close = self.closest_flag(flag)
            if close:
                hints.append(f"{flag} (did you mean {close}?)")
        hint = f" {'; '.join(hints)}." if hints else ""
        return (f"Unrecognized arguments: {' '.join(unknown)}.{hint} `neat-train --help` lists the common flags, "
                "`--help-all` every flag.")


def _convert(action: argparse.Action, value: Any) -> Any:
    """Apply the parser's type to a value read from YAML (where `3e-4` is a string) as the command line would."""
    convert = action.type if callable(action.type) else None
    if convert is None or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [convert(v) if isinstance(v, str) else v for v in value]
    if isinstance(value, str) and not (action.nargs in ("+", "*") and convert is str):
        return convert(value)
    return value
