"""`neat-lm-eval`: lm-eval's own command line, with `--model neat` registered and the bundled tasks included.

This command imports our backend and then runs lm-eval's CLI unchanged. (The stock `lm_eval --model neat` also works:
lm-eval 0.4.13 finds backends only in its built-in table, and neat-hf's start-up hook, `_neat_hf_lm_eval`, adds `neat`
to it; the bundled tasks then need `--include_path`.) Every lm-eval flag and subcommand
(`run`, `ls`, `validate`) works as documented by lm-eval; the only difference is that `neat_hf.eval_harness.TASKS_DIR`
is always on the include path, in front of any `--include_path` you pass (yours wins on a name clash), and a
`token=` in the model arguments (`--model_args`, or `model_args` in a `--config` YAML) is passed to the Hub as `HF_TOKEN`
instead of being printed, logged and saved with the results.

One option is added: `--update_card [ADAPTER_DIR]` folds the results of this run into the adapter folder's model card
(`README.md`, `model-index` entries) through `neat_hf.cards.adapter_card`, as `neat-hub card ADAPTER_DIR --eval-results FILE`
does. It needs `--output_path` (the results file is read back from there); without a value it uses the local
`adapter=` (or `peft=`) folder of `--model_args`.

Example:

    neat-lm-eval --model neat \\
        --model_args pretrained=meta-llama/Llama-2-7b-hf,adapter=./neat-out,dtype=bfloat16 \\
        --tasks neat_commonsense_gen --batch_size 16 --output_path results/
    neat-lm-eval ls tasks          # the bundled neat_* suites are listed with lm-eval's own
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import tempfile
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from neat_hf.cards.adapter_card import write_model_card
from neat_hf.cli import REPORTED_ERRORS, exit_status
from neat_hf.cli.hints import option_strings, unknown_option_hints, unrecognized_options
from neat_hf.errors import NeatError

from neat_hf.eval_harness.api import TASKS_DIR, task_include_paths
from neat_hf.eval_harness.results import eval_results_from_lm_eval

logger = logging.getLogger(__name__)

_FROM_MODEL_ARGS = object()  # `--update_card` given without a folder


@contextlib.contextmanager
def _argv(argv: list[str]) -> Iterator[None]:
    # lm-eval's HarnessCLI reads (and edits) sys.argv itself; give it ours and put the real one back afterwards.
    saved = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved


def _config_include_path(config_path: str | None) -> str | list[str] | None:
    """`include_path` from a `--config` YAML, which the merged command-line value would otherwise replace."""
    if not config_path:
        return None
    from lm_eval.config.evaluate_config import EvaluatorConfig  # lazy: lm-eval is optional and slow to import

    return EvaluatorConfig.load_yaml_config(config_path).get("include_path")


def _with_bundled_tasks(args: argparse.Namespace) -> None:
    """Put the bundled tasks in front of the user's include paths (command line and `--config` YAML)."""
    if not hasattr(args, "include_path"):  # `neat-lm-eval` with no subcommand only prints help
        return
    user_paths: list[str] = []
    for value in (_config_include_path(getattr(args, "config", None)), args.include_path):
        if value:
            user_paths.extend([value] if isinstance(value, str) else value)
    args.include_path = task_include_paths(user_paths)


def _pop_update_card(argv: Sequence[str]) -> tuple[object, list[str]]:
    """Take our one extra option, `--update_card [ADAPTER_DIR]`, out of the arguments meant for lm-eval."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--update_card", nargs="?", const=_FROM_MODEL_ARGS, default=None)
    ours, rest = parser.parse_known_args(list(argv))
    return ours.update_card, rest


def _card_folder(update_card: object, args: argparse.Namespace) -> Path:
    """The adapter folder whose card `--update_card` should update; checked before the evaluation starts."""
    if getattr(args, "command", None) != "run":
        raise NeatError("--update_card only applies to an evaluation run (`neat-lm-eval run ...`).")
    if not getattr(args, "output_path", None):
        raise NeatError("--update_card reads this run's results back from disk: also pass --output_path DIR.")
    if update_card is _FROM_MODEL_ARGS:
        model_args = args.model_args if isinstance(args.model_args, dict) else {}
        update_card = model_args.get("adapter") or model_args.get("peft")
        if not update_card:
            raise NeatError("--update_card without a folder takes adapter= from --model_args; pass --update_card DIR.")
    folder = Path(os.fspath(update_card))
    if not folder.is_dir():
        raise NeatError(f"--update_card needs a local adapter folder, got {os.fspath(update_card)!r}.")
    return folder


def _take_token(args: argparse.Namespace) -> str | None:
    """Take `token=` out of the parsed `--model_args`: lm-eval logs the model arguments ("Initializing neat model,
    with arguments: ...") and writes them to `results_*.json` (`config.model_args`), which would publish the token.
    [`_token_in_environment`] hands it to the loaders instead."""
    model_args = getattr(args, "model_args", None)
    if not isinstance(model_args, dict) or "token" not in model_args:
        return None
    token = model_args.pop("token")
    return None if token in (None, "") else str(token)


def _take_config_token(args: argparse.Namespace, folder: Path) -> str | None:
    """Take `token=` out of the `model_args` of a `--config` YAML, for the reason [`_take_token`] gives (lm-eval also
    prints the merged config): `args.config` then names a copy of the YAML without it, written into `folder`.

    Only when lm-eval would use the YAML's `model_args`: `--model_args` on the command line replace them whole (lm-eval's
    merge), so then the YAML's token is neither used nor shown.
    """
    config_path = getattr(args, "config", None)
    if not config_path or getattr(args, "model_args", None):
        return None
    from lm_eval.config.evaluate_config import EvaluatorConfig  # lazy: lm-eval is optional and slow to import
    from lm_eval.utils import simple_parse_args_string  # lazy, as above

    values = EvaluatorConfig.load_yaml_config(config_path)
    model_args = values.get("model_args")
    if isinstance(model_args, str):  # `model_args: pretrained=...,token=...`, which lm-eval parses the same way
        model_args = simple_parse_args_string(model_args)
    if not isinstance(model_args, dict) or "token" not in model_args:
        return None
    token = model_args.pop("token")
    copy = folder / Path(config_path).name
    copy.write_text(yaml.safe_dump({**values, "model_args": model_args}, sort_keys=False), encoding="utf-8")
    args.config = str(copy)
    return None if token in (None, "") else str(token)


@contextlib.contextmanager
def _token_in_environment(token: str | None) -> Iterator[None]:
    """`HF_TOKEN` set to `token` while the block runs (restored after), so that every Hub download of the run (base
    model, adapter, tokenizer) authenticates with it as `token=` would; a no-op for None."""
    if token is None:
        yield
        return
    saved = os.environ.get("HF_TOKEN")
    os.environ["HF_TOKEN"] = token
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("HF_TOKEN", None)
        else:
            os.environ["HF_TOKEN"] = saved


def _results_files(output_path: str) -> set[Path]:
    """lm-eval's results files under `--output_path` (a folder, or a `name.json` that becomes `name_<date>.json`)."""
    path = Path(output_path)
    if path.suffix == ".json":
        return set(path.parent.glob(f"{path.stem}_*.json"))
    return set(path.rglob("results_*.json"))


def _update_card(folder: Path, new_files: set[Path]) -> None:
    if not new_files:
        if int(os.environ.get("RANK", "0")) == 0:
            raise NeatError("--update_card: lm-eval wrote no results file, so the model card was left unchanged.")
        return  # only rank 0 writes results
    results_file = max(new_files, key=lambda p: p.stat().st_mtime)
    card = write_model_card(folder, eval_results=eval_results_from_lm_eval(results_file))
    print(f"Updated model card {card} with {results_file}")


def bundled_tasks() -> list[str]:
    """Names of the task suites and tasks shipped in `TASKS_DIR` (groups first)."""
    names = [p.stem for p in sorted(Path(TASKS_DIR).rglob("neat_*.yaml"))]
    groups = [n for n in names if n in ("neat_commonsense", "neat_commonsense_gen", "neat_math", "neat_math_gen",
                                        "neat_number_words")]
    return groups + [n for n in names if n not in groups]


def neat_help() -> str:
    """What `neat-lm-eval --help` shows before lm-eval's own help: the neat backend, its model_args, `--update_card`
    and the bundled tasks."""
    tasks = bundled_tasks()
    return "\n".join([
        "neat-lm-eval: lm-eval's command line with the NEAT backend (--model neat) and neat-hf's tasks.",
        "",
        "  neat-lm-eval run --model neat --model_args pretrained=BASE,adapter=ADAPTER[,merge=true][,dtype=bfloat16] \\",
        "      --tasks neat_commonsense_gen --batch_size 16 --output_path results/ [--update_card [ADAPTER_DIR]]",
        "",
        "--model neat, --model_args:",
        "  pretrained=BASE          base model the adapter was trained on (Hub id or folder; for the embedded",
        "                           default job: neat-output/base_model)",
        "  adapter=ADAPTER          NEAT adapter folder or Hub repo (neat-hf's or stock PEFT's PEANuT); peft= is",
        "                           accepted as an alias, as in --model hf",
        "  adapter_revision=REV     branch, tag or commit of a Hub adapter",
        "  merge=true|false         merge the adapter into the weights once (default true: base-model speed)",
        "  any other HFLM argument  dtype=, device=, max_length=, trust_remote_code=, ... (not delta=)",
        "",
        "--update_card [ADAPTER_DIR]  fold this run's scores into the adapter's model card (README.md model-index);",
        "                             needs --output_path; defaults to the adapter= folder",
        "",
        "Bundled tasks (always on the include path): " + ", ".join(tasks[:5]) + " (offline: the main job's held-out",
        "  data, generated locally);",
        textwrap.fill("single tasks: " + ", ".join(tasks[5:]), width=116, initial_indent="  ", subsequent_indent="    "),
        "",
        "lm-eval's own help follows (every lm-eval flag and subcommand works unchanged).",
        "",
    ])


def main(argv: Sequence[str] | None = None) -> None:
    """Run lm-eval's command line (`lm_eval.__main__.cli_evaluate`) with `neat` registered and our tasks included.

    `cli_evaluate` is `setup_logging(); parser = HarnessCLI(); args = parser.parse_args(); parser.execute(args)`.
    We do the same, and between parsing and running put `TASKS_DIR` on `args.include_path`: lm-eval's flag takes a
    single folder, so prepending to the command line could not keep a user's own `--include_path`.

    Args:
        argv (`Sequence[str]`, *optional*): the arguments after the program name; defaults to `sys.argv[1:]`.

    Raises:
        `SystemExit`: status 2 with a one-line message for bad input that neat-hf detects (`NeatError`: a missing
            or mismatched adapter, bad model_args, a bad `--update_card`), 1 when the Hub failed (`HubError`) or a
            task's data cannot be fetched; lm-eval's own errors propagate unchanged.
    """
    try:
        from lm_eval._cli import HarnessCLI
        from lm_eval.utils import setup_logging
    except ImportError as err:  # lm-eval missing, or older than its subcommand CLI (0.4.10)
        raise SystemExit(
            f"neat-lm-eval needs lm-eval >= 0.4.10 ({err}). From a clone: pip install -e '.[eval]'"
        ) from err

    from neat_hf.eval_harness import model as _register_neat  # noqa: F401  (lazy: registers `--model neat`; imports lm-eval, optional and heavy)

    update_card, lm_eval_argv = _pop_update_card(sys.argv[1:] if argv is None else argv)
    if not lm_eval_argv or any(a in ("-h", "--help") for a in lm_eval_argv):
        print(neat_help())  # ours first; lm-eval's own help follows
    setup_logging()
    parser = HarnessCLI()
    _refuse_unknown_options(parser, lm_eval_argv)
    with _argv(["neat-lm-eval", *lm_eval_argv]):
        args = parser.parse_args()
    _with_bundled_tasks(args)
    token = _take_token(args)
    try:
        card_folder = None if update_card is None else _card_folder(update_card, args)
        before = _results_files(args.output_path) if card_folder else set()
        with tempfile.TemporaryDirectory(prefix="neat-lm-eval-") as folder:
            config_token = _take_config_token(args, Path(folder))
            with _token_in_environment(token if token is not None else config_token):
                parser.execute(args)
        if card_folder:
            _update_card(card_folder, _results_files(args.output_path) - before)
    except REPORTED_ERRORS as err:
        logger.debug("neat-lm-eval failed", exc_info=True)
        print(f"neat-lm-eval: error: {err}", file=sys.stderr)
        raise SystemExit(exit_status(err)) from err
    except ConnectionError as err:  # `datasets` could not fetch a task's data (offline, or no network)
        logger.debug("neat-lm-eval failed", exc_info=True)
        print(f"neat-lm-eval: error: {offline_data_message(err)}", file=sys.stderr)
        raise SystemExit(1) from err


def _refuse_unknown_options(cli: Any, argv: Sequence[str]) -> None:
    """Name an unrecognized option with the closest one of its subcommand (`run` when none is given, as lm-eval
    assumes), in argparse's own format and exit status 2; lm-eval's parser would name it without a suggestion."""
    subcommands = cli._subparsers.choices
    command = subcommands.get(argv[0], subcommands["run"]) if argv else subcommands["run"]
    known = option_strings(cli._parser, command)
    unknown = unrecognized_options(argv, known)
    if unknown:
        hints = unknown_option_hints(unknown, known)
        command.error(f"unrecognized arguments: {' '.join(unknown)}" + (f"; {'; '.join(hints)}" if hints else ""))


def offline_data_message(err: ConnectionError) -> str:
    """One line for a task whose Hub data `datasets` could not load: which dataset, and what to do."""
    match = re.search(r"Couldn't reach '([^']+)'", str(err))
    dataset = f"dataset {match.group(1)!r}" if match else f"a task's dataset ({err})"
    offline = [name for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE") if os.environ.get(name, "").lower() in ("1", "true", "yes", "on")]
    why = f"{' and '.join(n + '=1' for n in offline)} is set" if offline else "the Hub cannot be reached"
    return (f"{dataset} is not in the local datasets cache and {why}. Run once with the Hub reachable (and "
            "HF_DATASETS_OFFLINE unset) to cache it, or evaluate offline on the bundled task neat_number_words "
            "(the main job's held-out data, generated locally).")


if __name__ == "__main__":
    main()
