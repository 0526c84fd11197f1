"""Which modules of a model a `NeatConfig` adapts, decided without touching the model.

Matching follows PEFT's `check_target_module_exists` rule for rule, so a config selects the same layers in both
libraries (a test compares the two): a string is a regex that must match the whole module path; a list matches a
module whose path equals an entry or ends with "." + entry, and only such suffix matches are filtered by
`layers_to_transform` (the first numbered segment of the path, or the one after `layers_pattern`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import regex
from torch import nn

from neat_hf.config import NeatConfig
from neat_hf.constants import DEFAULT_TARGET_MODULES, TASK_HEAD_NAMES
from neat_hf.errors import NeatError, NoTargetModulesError, UnsupportedModuleError
from neat_hf.layer import NeatLayer, supported_layer_types

logger = logging.getLogger(__name__)

#: Seconds one user regex may spend on one module name. Real patterns take microseconds; a backtracking one such as
#: "(.*)*X" would take years, so `target_modules`, `exclude_modules` and `layers_pattern` are matched with the
#: `regex` package (a dependency of transformers, same syntax as `re` for these patterns), which supports a timeout.
REGEX_TIMEOUT_S = 0.25

# Sub-paths created by neat-hf itself; never adapt inside them.
_INTERNAL_MARKERS = (".base_layer", ".original_module", ".modules_to_save.", "peanut_")


@dataclass(frozen=True)
class InjectionPlan:
    """Result of matching a config against a model: module paths to wrap with NEAT and modules to train in full."""

    target_modules: list[str] | str
    targets: list[str]
    modules_to_save: list[str]
    #: `modules_to_save` as stored in the config: the user's entries plus the task heads found in the model.
    modules_to_save_names: list[str] | None = None


def _bounded(kind: str, pattern: str, name: str, field: str) -> regex.Match | None:
    """`regex.fullmatch`/`match` of a user pattern against a module path, refused (NeatError) past REGEX_TIMEOUT_S."""
    try:
        compiled = _compile(pattern)
        return getattr(compiled, kind)(name, timeout=REGEX_TIMEOUT_S)
    except TimeoutError:
        raise NeatError(
            f"{field} regex {pattern[:200]!r} took over {REGEX_TIMEOUT_S} s to match module {name!r} (catastrophic "
            "backtracking, e.g. a nested quantifier like '(.*)*'); use a simpler regex or a list of module names."
        ) from None
    except regex.error as err:
        raise NeatError(f"{field} is not a valid regex ({err}): {pattern[:200]!r}.") from None


_COMPILED: dict[str, regex.Pattern] = {}


def _compile(pattern: str) -> regex.Pattern:
    if pattern not in _COMPILED:
        if len(_COMPILED) > 256:
            _COMPILED.clear()
        _COMPILED[pattern] = regex.compile(pattern, flags=regex.VERSION0)
    return _COMPILED[pattern]


def name_matches(name: str, patterns: list[str] | str, field: str = "target_modules") -> bool:
    """PEFT's rule: regex full match for a string, exact-or-dotted-suffix for a list (the regex under a time bound)."""
    if isinstance(patterns, str):
        return _bounded("fullmatch", patterns, name, field) is not None
    return any(name == p or name.endswith("." + p) for p in patterns)


def layer_index(name: str, layers_pattern: list[str] | str | None) -> int | None:
    """Index of the block that module path `name` sits in (the *first* numbered segment, as in PEFT), or None."""
    if not layers_pattern:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)
        return int(match.group("idx")) if match else None
    patterns = [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern
    for pattern in patterns:
        match = _bounded("match", rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", name, "layers_pattern")
        if match:
            return int(match.group("idx"))
    return None


def target_matches(name: str, config: NeatConfig, target_modules: list[str] | str) -> bool:
    """Whether module path `name` is a NEAT target: PEFT's `check_target_module_exists`, rule for rule.

    A regex or an exact path is taken as is; only dotted-suffix matches are filtered by `layers_to_transform`.
    """
    if config.exclude_modules is not None and name_matches(name, config.exclude_modules, "exclude_modules"):
        return False
    if isinstance(target_modules, str):
        return name_matches(name, target_modules)
    if name in target_modules:
        return True
    if not any(name.endswith("." + t) for t in target_modules):
        return False
    if not config.layers_to_transform:
        return True
    return layer_index(name, config.layers_pattern) in config.layers_to_transform


def default_target_modules(model: nn.Module) -> list[str]:
    """The preset targets for the model's `config.model_type`.

    Raises:
        NeatError: no preset exists; the message lists the presets and asks for explicit `target_modules`.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in DEFAULT_TARGET_MODULES:
        kinds = supported_layer_types()
        names = [n for n, m in model.named_modules() if isinstance(m, kinds) and not _is_internal(n)]
        preset = DEFAULT_TARGET_MODULES[model_type]
        return [t for t in preset if any(name_matches(n, [t]) for n in names)] or list(preset)
    raise NeatError(
        f"No default target_modules for model_type={model_type!r}; pass target_modules explicitly "
        f"(presets exist for {sorted(DEFAULT_TARGET_MODULES)})."
    )


def _is_internal(name: str) -> bool:
    return any(marker in name for marker in _INTERNAL_MARKERS)


def linear_layer_names(model: nn.Module) -> list[str]:
    """Distinct last-segment names of the layers NEAT could adapt (for error messages)."""
    kinds = supported_layer_types()
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n and isinstance(m, kinds) and not _is_internal(n)})


def plan_injection(model: nn.Module, config: NeatConfig) -> InjectionPlan:
    """Match `config` against `model` and check every match, without modifying anything.

    Raises:
        NoTargetModulesError: nothing matched; the message lists the adaptable layer names that exist.
        UnsupportedModuleError: a match is not an `nn.Linear`/`Conv1D`; the message names the module and type.
        NeatError: a `modules_to_save` entry matches no module.
    """
    target_modules = config.target_modules if config.target_modules is not None else default_target_modules(model)
    task_heads = TASK_HEAD_NAMES.get(config.task_type or "", [])
    requested = list(config.modules_to_save or [])
    # As PEFT does for classification / QA task types: the task head is trained and saved too.
    modules_to_save = requested + [n for n in task_heads if n not in requested]
    save_paths = [k for k, _ in model.named_modules() if k and not _is_internal(k) and name_matches(k, modules_to_save)]
    missing = [n for n in modules_to_save if not any(name_matches(p, [n]) for p in save_paths)]
    if requested and all(n in missing for n in requested):
        raise NeatError(f"modules_to_save={requested} matches no module of {type(model).__name__}.")
    # A task head name the model lacks (PEFT lists both "classifier" and "score") is ignored quietly, as in PEFT.
    if [n for n in missing if n not in task_heads]:
        logger.warning("modules_to_save entries %s match no module of %s; ignoring them.", missing, type(model).__name__)
    # Outermost matches only: a saved module's children are saved with it.
    save_paths = [p for p in save_paths if not any(p.startswith(q + ".") for q in save_paths if q != p)]

    targets, unsupported = [], []
    kinds = supported_layer_types()
    for name, module in model.named_modules():
        if not name or _is_internal(name):
            continue
        if any(name == p or name.startswith(p + ".") for p in save_paths):
            continue
        if not target_matches(name, config, target_modules):
            continue
        if isinstance(module, (NeatLayer, *kinds)):  # a NeatLayer gets one more adapter
            targets.append(name)
        else:
            unsupported.append(f"{name} ({type(module).__name__})")
    if unsupported:
        raise UnsupportedModuleError(
            f"target_modules={target_modules!r} matched modules NEAT cannot adapt: {unsupported[:5]}"
            f"{' …' if len(unsupported) > 5 else ''}. NEAT adapts nn.Linear (and GPT-2 Conv1D) layers only; "
            f"narrow target_modules to layers such as {linear_layer_names(model)}."
        )
    if not targets:
        extra = ""
        if config.layers_to_transform is not None:
            extra += f", layers_to_transform={config.layers_to_transform}, layers_pattern={config.layers_pattern!r}"
        if config.exclude_modules is not None:
            extra += f", exclude_modules={config.exclude_modules!r}"
        raise NoTargetModulesError(
            f"target_modules={target_modules!r}{extra} matched no layer of {type(model).__name__}. "
            f"Layers NEAT can adapt in this model: {linear_layer_names(model)}."
        )
    names = requested + [n for n in task_heads if n not in requested and n not in missing]
    return InjectionPlan(target_modules, targets, save_paths, names or None)
