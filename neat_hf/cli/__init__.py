"""The command lines: `neat-train` ([`neat_hf.cli.train`]) and `neat-hub` ([`neat_hf.cli.hub`]), with what they share
(option hints, telling a local base model from a Hub id, how errors end a command). The top floor: the library never
imports it."""

from __future__ import annotations

from neat_hf.errors import HubError, NeatError

#: The errors a command line (`neat-train`, `neat-hub`, `neat-lm-eval`) reports as one line, without a traceback:
#: neat-hf's own, raised where they are detected. Anything else (a bare ValueError, TypeError, OSError, ...) is a bug
#: or a failure neat-hf did not foresee, and keeps its traceback.
REPORTED_ERRORS = (NeatError, HubError)


def exit_status(error: NeatError | HubError) -> int:
    """The exit status of a command ended by `error`: 2 for bad input (`NeatError`, as argparse uses for bad flags),
    1 when the Hub failed (`HubError`: unreachable, a server error, access refused)."""
    return 1 if isinstance(error, HubError) else 2
