"""Exceptions raised by neat-hf (every exception class of the core and the integrations lives here).

Bad input (a value, file, folder or setup neat-hf cannot use) raises a `NeatError` subclass. `NeatError` is a
`ValueError`, so existing `except ValueError` handlers keep working while callers who care can catch the specific case.
A failed Hub operation raises `HubError`, which is not a `ValueError`: the Hub failing (unreachable, a server error,
access refused) is not a bad value, and `except ValueError` around a push must not swallow it.
"""

from __future__ import annotations


class NeatError(ValueError):
    """Base class of every error neat-hf raises for bad input."""


class NoTargetModulesError(NeatError):
    """`target_modules` (with `layers_to_transform` / `exclude_modules`) matched no layer of the model."""


class UnsupportedModuleError(NeatError, TypeError):
    """A matched target is not a layer NEAT can adapt (only `nn.Linear` and GPT-2's `Conv1D` are)."""


class AdapterLoadError(NeatError):
    """An adapter folder or Hub repo is missing a file, holds a corrupt file or an invalid config."""


class FolderInUseError(NeatError):
    """Another process (or thread) holds the folder: a run writing into its output folder, or a save into the same
    adapter folder that did not finish in time (see `neat_hf.io.folder_lock`)."""


class AdapterMismatchError(AdapterLoadError):
    """An adapter's tensors do not fit the base model (module missing or of another shape)."""


class UnsupportedQuantizationError(NeatError):
    """The base model is quantized in a way NEAT cannot adapt (only bitsandbytes 4-bit and 8-bit are supported), or
    a quantized base is combined with a setting that does not work with it (DeepSpeed ZeRO-2/3, an in-place merge)."""


class MissingDependencyError(NeatError, ImportError):
    """An optional dependency is needed but not installed; the message names the `neat-hf[...]` extra."""


# --- Training integration: `neat-train`, `NeatTrainer`, `NeatTrainingArguments` (neat_hf.trainers) ---------------


class TrainingArgumentError(NeatError):
    """A `neat-train` flag, a recipe/config-file key or value, or a training argument is invalid."""


class UnknownRecipeError(TrainingArgumentError):
    """`--recipe` names no shipped recipe and no existing YAML/JSON file."""


class DatasetError(NeatError):
    """The training data cannot be used as given: no data, an unknown split/format/file type, or unusable labels."""


class MissingColumnsError(DatasetError):
    """The dataset lacks columns that the recipe's `dataset_format` needs."""


class TrainerSetupError(NeatError):
    """`NeatTrainer` got arguments that contradict each other, or a setup it does not support (e.g. FSDP1)."""


class FsdpConfigError(TrainerSetupError):
    """An FSDP setup NEAT cannot train correctly with (FSDP1, a wrap policy that splits a NEAT layer from its weights,
    a quantized base); the message names the supported setting."""


# --- Hub, evaluation and DeepSpeed integrations (neat_hf.hub, neat_hf.eval_harness,
# neat_hf.deepspeed_configs) -----------------------------------------------------------------------------------------


class HubError(Exception):
    """A Hub operation failed; the message names the repo, revision and file involved and what to do. Not a
    `NeatError` (see the module docstring); the command lines end with exit status 1 on it, 2 on a `NeatError`."""


class NeatModelArgsError(NeatError):
    """A `--model_args` value given to the lm-eval `neat` backend is missing or invalid."""


class DeepSpeedConfigError(NeatError):
    """A DeepSpeed config is missing, is not valid JSON, or holds a value DeepSpeed would reject."""


# --- Serving (neat_hf.export.lora, neat_hf.export.serving) ------------------------------------------------------------------


class ServingLimitError(NeatError):
    """An exported adapter breaks a documented limit of an inference server (the message names server and limit)."""
