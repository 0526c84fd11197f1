"""Python entry point: `lm_eval.simple_evaluate` with the `neat` backend and the bundled tasks."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neat_hf.errors import NeatError

if TYPE_CHECKING:
    from lm_eval.api.model import LM
    from lm_eval.tasks import TaskManager

PathLike = str | os.PathLike

#: Folder of the bundled lm-eval task suites.
TASKS_DIR: Path = Path(__file__).resolve().parent / "tasks"


def task_include_paths(include_path: PathLike | Sequence[PathLike] | None = None) -> list[str]:
    """The task folders to index: the bundled `TASKS_DIR` first, then the caller's own.

    lm-eval indexes include paths in order and a later folder overrides a task of the same name from an earlier one,
    so a user's task wins over a bundled one.

    Args:
        include_path (`str`, `os.PathLike` or a sequence of them, *optional*): extra task folders.

    Returns:
        `list[str]`: `[TASKS_DIR, *include_path]`, without repeats.
    """
    extra: Sequence[PathLike]
    if include_path is None:
        extra = []
    elif isinstance(include_path, (str, os.PathLike)):
        extra = [include_path]
    else:
        extra = list(include_path)
    paths = [str(TASKS_DIR)]
    for path in extra:
        path = os.fspath(path)
        if path and os.path.abspath(path) not in {os.path.abspath(p) for p in paths}:
            paths.append(path)
    return paths


def evaluate(
    model: str | LM = "neat",
    model_args: str | dict[str, Any] | None = None,
    tasks: str | Sequence[str | dict] | None = None,
    *,
    include_path: PathLike | Sequence[PathLike] | None = None,
    task_manager: TaskManager | None = None,
    **kwargs: Any,
) -> dict[str, Any] | None:
    """Evaluate a NEAT adapter with lm-eval: `lm_eval.simple_evaluate` with the bundled tasks on the include path.

    Args:
        model (`str` or `lm_eval.api.model.LM`, *optional*, defaults to `"neat"`): a registered model name, or a
            ready model such as a [`NeatLM`].
        model_args (`str` or `dict`, *optional*): the model's arguments, e.g.
            `{"pretrained": "meta-llama/Llama-2-7b-hf", "adapter": "./neat-out", "dtype": "bfloat16"}` or the same as
            `"pretrained=...,adapter=..."`.
        tasks (`str` or `list`): task or group names, e.g. `["neat_commonsense_gen"]`.
        include_path (`str`, `os.PathLike` or a sequence of them, *optional*): your own task folders, indexed after
            the bundled ones (so your tasks win on a name clash).
        task_manager (`lm_eval.tasks.TaskManager`, *optional*): a ready task manager; it replaces the default one,
            so the bundled tasks are only found if you built it with [`task_include_paths`].
        **kwargs: any other argument of `lm_eval.simple_evaluate` (`batch_size`, `limit`, `num_fewshot`,
            `log_samples`, `gen_kwargs`, ...).

    Returns:
        `dict` or `None`: lm-eval's results (`None` on ranks other than 0).

    Raises:
        `ValueError`: `include_path` and `task_manager` both given, or no `tasks`.

    Example:
        >>> from neat_hf.eval_harness import evaluate
        >>> results = evaluate(  # doctest: +SKIP
        ...     model_args={"pretrained": "meta-llama/Llama-2-7b-hf", "adapter": "./neat-out", "dtype": "bfloat16"},
        ...     tasks=["neat_commonsense_gen"],
        ...     batch_size=16,
        ... )
        >>> results["groups"]["neat_commonsense_gen"]["exact_match,extract"]  # doctest: +SKIP
    """
    if not tasks:
        raise NeatError("evaluate() needs `tasks`, e.g. tasks=['neat_commonsense_gen'] (bundled: see TASKS_DIR).")
    if task_manager is not None and include_path is not None:
        raise NeatError(
            "Pass either `task_manager` or `include_path`, not both: build the task manager with "
            "TaskManager(include_path=task_include_paths(include_path)) instead."
        )
    # lazy: lm-eval is optional and slow to import (`pip install "neat-hf[eval]"`)
    import lm_eval
    from lm_eval.tasks import TaskManager

    from neat_hf.eval_harness import model as _register_neat  # noqa: F401  (lazy: registers `--model neat`; imports lm-eval, optional and heavy)

    if task_manager is None:
        # simple_evaluate hands the model arguments to the tasks as metadata when it builds the manager itself.
        metadata = dict(kwargs.get("metadata") or {})
        if isinstance(model_args, dict):
            metadata = model_args | metadata
        elif isinstance(model_args, str):
            from lm_eval.utils import simple_parse_args_string  # lazy: optional lm-eval

            metadata = simple_parse_args_string(model_args) | metadata
        task_manager = TaskManager(include_path=task_include_paths(include_path), metadata=metadata)
    if isinstance(tasks, str):
        tasks = [tasks]
    return lm_eval.simple_evaluate(
        model=model, model_args=model_args, tasks=list(tasks), task_manager=task_manager, **kwargs
    )
