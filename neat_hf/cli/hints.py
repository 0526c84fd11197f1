""""Did you mean" for the command lines (`neat-hub`, `neat-lm-eval`): argparse names an unrecognized option, but
does not suggest the one meant. (`neat-train` has its own, richer matcher: `NeatTrainParser.closest_flag`.)"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Iterable, Sequence


def option_strings(*parsers: argparse.ArgumentParser) -> list[str]:
    """Every option string (`--flag`, `-f`) of `parsers`."""
    return [s for parser in parsers for action in parser._actions for s in action.option_strings]


def unknown_option_hints(unknown: Sequence[str], known: Iterable[str]) -> list[str]:
    """`"--flg (did you mean --flag?)"` for each option in `unknown` that has a close known one."""
    known = list(known)
    hints = []
    for flag in (a.split("=", 1)[0] for a in unknown if a.startswith("-")):
        close = difflib.get_close_matches(flag, known, n=1)
        if close:
            hints.append(f"{flag} (did you mean {close[0]}?)")
    return hints


def unrecognized_options(argv: Sequence[str], known: Iterable[str]) -> list[str]:
    """The `--options` of `argv` that argparse would not recognize (neither a known option nor a prefix of one)."""
    known = list(known)
    flags = (a.split("=", 1)[0] for a in argv if a.startswith("--") and a != "--")
    return [f for f in flags if not any(option == f or option.startswith(f) for option in known)]
