"""The house rules of the import graph, checked on the source with `ast` (nothing is imported).

- Floors: every project module sits on one floor of [`FLOORS`] and imports only from its own floor or lower ones, at
  module level, inside a function or under `if TYPE_CHECKING:` alike. So the library (floors up to `trainers`) never
  imports the command lines (`neat_hf.cli`), `eval_harness` or the integrations; `neat_hf.hub` uploads what
  `neat_hf.cards` wrote and knows no model; the model is built on the method, never the other way round.
- No import circles between project modules, type-only and function-level imports included.
- Project imports sit at module top; one inside a function is allowed only for a lazy optional heavy package (lm-eval,
  deepspeed, ...) and must say so with a `lazy` comment on its line or the line above.
- Every `NeatError` subclass is defined in `neat_hf/errors.py`.
- No module of the library is over ~500 lines.

The folders install under one namespace (pyproject `[tool.setuptools.package-dir]`): `trainers/` is
`neat_hf.trainers`, and so on. A package `__init__` that only re-exports lazily (PEP 562) sits on the floor of what
it re-exports; its name strings are not imports.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: import name -> source folder, as in pyproject's [tool.setuptools.package-dir].
PACKAGE_DIRS = {
    "neat_hf": "neat_hf",
    "neat_hf.trainers": "trainers",
    "neat_hf.hub": "hub",
    "neat_hf.eval_harness": "eval_harness",
    "neat_hf.deepspeed_configs": "deepspeed_configs",
}
#: The floors of the house, lowest first: (name, module-name prefixes). Docs: docs/concepts/architecture.md.
FLOORS: list[tuple[str, tuple[str, ...]]] = [
    ("basics", ("neat_hf.errors", "neat_hf.constants", "neat_hf.lazy_imports", "neat_hf.third_party_noise",
                "neat_hf.task_types", "neat_hf.adapter_names", "neat_hf.activations", "neat_hf.deepspeed_configs")),
    ("files", ("neat_hf.io", "neat_hf.hub.error_translation", "neat_hf.hub.download")),
    ("method", ("neat_hf.peft_patch", "neat_hf.config", "neat_hf.training_info", "neat_hf.quantization",
                "neat_hf.parallel", "neat_hf.mixed_batch", "neat_hf.layer", "neat_hf.targets", "neat_hf.tuner",
                "neat_hf.loading")),
    ("cards, uploads, LoRA export", ("neat_hf.cards", "neat_hf.hub", "neat_hf.export.lora", "neat_hf.export.serving")),
    ("model", ("neat_hf.model", "neat_hf")),
    ("trainers, exports of saved adapters", ("neat_hf.trainers", "neat_hf.export")),
    ("front ends: command lines, lm-eval, Axolotl", ("neat_hf.cli", "neat_hf.eval_harness", "neat_hf.integrations")),
]
#: Lines above which a module must be split (or be listed in ONE_CONCERN_MODULES, with the reason).
MAX_MODULE_LINES = 520
ONE_CONCERN_MODULES: dict[str, str] = {
    "neat_hf.model": "NeatModel, one class: PEFT's PeftModel API (adapters, merge, save, load, push) for NEAT",
    "neat_hf.trainers.trainer": "NeatTrainer, one class: the Trainer's hooks for a NEAT model (optimizer, save, resume)",
}
ERRORS_MODULE = "neat_hf.errors"


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    tree: ast.Module
    lines: list[str]
    #: (line, imported module, at module level?) for every project import.
    imports: list[tuple[int, str, bool]] = field(default_factory=list)


def _module_name(package: str, folder: Path, path: Path) -> str:
    parts = list(path.relative_to(folder).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def _load_modules() -> dict[str, Module]:
    modules = {}
    for package, folder_name in PACKAGE_DIRS.items():
        folder = ROOT / folder_name
        for path in sorted(folder.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            text = path.read_text(encoding="utf-8")
            name = _module_name(package, folder, path)
            modules[name] = Module(name, path, path.name == "__init__.py", ast.parse(text), text.splitlines())
    for module in modules.values():
        module.imports = list(_project_imports(module, modules))
    return modules


def _walk(nodes: list[ast.stmt], module_level: bool):
    """Yield (import node, at module level?) for every import, `if TYPE_CHECKING:` blocks included (a type-only import
    is still an edge of the picture); class bodies run at import time."""
    for node in nodes:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, module_level
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _walk(node.body, False)
        else:
            for child_field in ("body", "orelse", "finalbody", "handlers", "cases"):
                children = getattr(node, child_field, None)
                if isinstance(children, list):
                    yield from _walk([c for c in children if isinstance(c, ast.AST)], module_level)


def _resolve(name: str, modules: dict[str, Module]) -> str | None:
    """The project module `name` refers to (the longest known prefix), or None for a third-party name."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _project_imports(module: Module, modules: dict[str, Module]):
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    for node, module_level in _walk(module.tree.body, True):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = ".".join(p for p in (anchor, base) if p)
            # `from pkg import submodule` imports the submodule; `from pkg import name` only pkg.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        for target in dict.fromkeys(targets):
            resolved = _resolve(target, modules)
            if resolved is not None and resolved != module.name:
                yield node.lineno, resolved, module_level


MODULES = _load_modules()


def _core_modules() -> list[Module]:
    return [m for m in MODULES.values() if m.path.parent == ROOT / "neat_hf"]


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module in the import graph (every import: module level,
    function level, type-only)."""
    graph = {name: sorted({t for _, t, _ in m.imports}) for name, m in MODULES.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for name in graph:
        if name not in index:
            visit(name)
    return components


def test_the_scan_sees_the_whole_project():
    """Guards the other tests against passing on an empty or wrong graph."""
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    for package, folder in PACKAGE_DIRS.items():
        assert f'"{package}" = "{folder}"' in pyproject, package
    for expected in ("neat_hf.model", "neat_hf.hub.push", "neat_hf.trainers.trainer", "neat_hf.eval_harness.cli"):
        assert expected in MODULES, expected
    model_imports = {t for _, t, _ in MODULES["neat_hf.model"].imports}
    assert {"neat_hf.config", "neat_hf.layer", "neat_hf.hub.commit"} <= model_imports, model_imports
    assert "neat_hf.hub.commit" in {t for _, t, _ in MODULES["neat_hf.hub.push"].imports}


def test_the_cycle_finder_finds_a_cycle():
    graph_backup = {name: list(m.imports) for name, m in MODULES.items()}
    try:
        MODULES["neat_hf.errors"].imports.append((1, "neat_hf.model", True))  # model -> errors already exists
        assert any({"neat_hf.errors", "neat_hf.model"} <= set(c) for c in _cycles())
    finally:
        for name, imports in graph_backup.items():
            MODULES[name].imports = imports


def test_no_import_cycles():
    cycles = _cycles()
    assert not cycles, "import circles (type-only imports included): " + "; ".join(" <-> ".join(c) for c in cycles)


def floor_of(module: str) -> int:
    """Index in [`FLOORS`] of the floor holding `module` (the longest matching prefix wins)."""
    best, floor = -1, None
    for index, (_, prefixes) in enumerate(FLOORS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, floor = len(prefix), index
    if floor is None:
        raise AssertionError(f"{module} is on no floor: add it to FLOORS in tests/test_architecture.py")
    return floor


def test_every_module_is_on_a_floor():
    for name in MODULES:
        floor_of(name)


def test_imports_go_down_the_floors():
    bad = [
        f"{m.path.relative_to(ROOT)}:{line} ({FLOORS[floor_of(m.name)][0]}) imports {target} "
        f"({FLOORS[floor_of(target)][0]})"
        for m in MODULES.values()
        for line, target, _ in m.imports
        if floor_of(target) > floor_of(m.name)
    ]
    assert not bad, "imports must go to the same floor or lower ones (see FLOORS):\n" + "\n".join(bad)


def test_the_floor_check_catches_an_upward_import():
    backup = list(MODULES["neat_hf.hub.commit"].imports)
    try:
        MODULES["neat_hf.hub.commit"].imports.append((1, "neat_hf.model", True))
        with pytest.raises(AssertionError, match="neat_hf.model"):
            test_imports_go_down_the_floors()
    finally:
        MODULES["neat_hf.hub.commit"].imports = backup


def test_library_modules_are_small():
    """No library module over ~500 lines (a longer one mixes concerns; split it where it joins two)."""
    big = [
        f"{m.path.relative_to(ROOT)}: {len(m.lines)} lines"
        for m in MODULES.values()
        if len(m.lines) > MAX_MODULE_LINES and m.name not in ONE_CONCERN_MODULES
    ]
    assert not big, "\n".join(big)


def _function_level_imports(folders: set[str]) -> list[str]:
    """Project imports inside functions, without a `lazy` comment, in modules under the given source folders."""
    bad = []
    for module in MODULES.values():
        if module.path.relative_to(ROOT).parts[0] not in folders:
            continue
        for line, target, module_level in module.imports:
            if module_level:
                continue
            context = " ".join(module.lines[max(line - 2, 0) : line]).lower()
            if "lazy" not in context:
                bad.append(f"{module.path.relative_to(ROOT)}:{line} imports {target} inside a function")
    return bad


def test_project_imports_at_module_top():
    bad = _function_level_imports(set(PACKAGE_DIRS.values()) - {"trainers"})
    assert not bad, "project imports belong at module top (or carry a `lazy` comment):\n" + "\n".join(bad)


def test_trainers_project_imports_at_module_top():
    bad = _function_level_imports({"trainers"})
    assert not bad, "project imports belong at module top (or carry a `lazy` comment):\n" + "\n".join(bad)


def _neat_errors_outside_errors_py(folders: set[str]) -> list[str]:
    """`NeatError` subclasses (found through the whole project's class hierarchy) defined outside `neat_hf/errors.py`
    in modules under the given source folders."""
    classes = [
        (module, node)
        for module in MODULES.values()
        for node in ast.walk(module.tree)
        if isinstance(node, ast.ClassDef)
    ]

    def base_names(node: ast.ClassDef) -> set[str]:
        return {b.id if isinstance(b, ast.Name) else b.attr for b in node.bases if isinstance(b, (ast.Name, ast.Attribute))}

    neat_errors = {"NeatError", "HubError"}  # HubError is neat-hf's too, though not a bad-input NeatError
    changed = True
    while changed:  # subclasses of subclasses, across modules
        changed = False
        for _, node in classes:
            if node.name not in neat_errors and base_names(node) & neat_errors:
                neat_errors.add(node.name)
                changed = True
    assert {"AdapterLoadError", "AdapterMismatchError", "HubError"} <= neat_errors, neat_errors  # the scan works
    return [
        f"{module.path.relative_to(ROOT)}:{node.lineno} defines {node.name}"
        for module, node in classes
        if node.name in neat_errors and module.name != ERRORS_MODULE and module.path.relative_to(ROOT).parts[0] in folders
    ]


def test_neat_errors_live_in_errors_py():
    bad = _neat_errors_outside_errors_py(set(PACKAGE_DIRS.values()) - {"trainers"})
    assert not bad, "NeatError subclasses belong in neat_hf/errors.py:\n" + "\n".join(bad)


def test_trainers_neat_errors_live_in_errors_py():
    bad = _neat_errors_outside_errors_py({"trainers"})
    assert not bad, "NeatError subclasses belong in neat_hf/errors.py:\n" + "\n".join(bad)


def test_one_import_style():
    """Project imports are absolute (`from neat_hf.x import y`), in the library and the scripts alike."""
    bad = [
        f"{m.path.relative_to(ROOT)}:{node.lineno}"
        for m in MODULES.values()
        for node in ast.walk(m.tree)
        if isinstance(node, ast.ImportFrom) and node.level
    ]
    assert not bad, "relative imports (write them absolute):\n" + "\n".join(bad)
