"""The one translator from huggingface_hub's exceptions to neat-hf's: every Hub call (download or push) goes through it.

huggingface_hub raises `RepositoryNotFoundError`, `RevisionNotFoundError`, `EntryNotFoundError`, offline cache misses
and bare HTTP errors whose text names neither what the user asked for nor how to fix it. [`hub_errors`] re-raises them
as one line naming the action, the repo, the revision and the file, with the fix. Downloads raise
[`AdapterLoadError`](neat_hf.errors.AdapterLoadError) (the adapter could not be read), pushes
[`HubError`](neat_hf.errors.HubError). transformers wraps huggingface_hub's exceptions in `OSError` when it loads a
model, config or tokenizer; [`loading_errors`] reads the chain to tell the Hub failing from a name that does not exist.
The original exception is chained; messages never contain the token.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from neat_hf.errors import AdapterLoadError, HubError, NeatError

try:  # huggingface_hub 2.x sends its requests through httpx2, 1.x through httpx (both its own dependencies)
    from httpx2 import TransportError
except ImportError:  # pragma: no cover - huggingface_hub 1.x
    from httpx import TransportError


@contextlib.contextmanager
def hub_errors(
    action: str,
    repo_id: str,
    *,
    revision: str | None = None,
    filename: str | None = None,
    error: type[HubError] | type[AdapterLoadError] = HubError,
) -> Iterator[None]:
    """Re-raise huggingface_hub's not-found / offline / auth errors inside the block as `error` naming what is wrong.

    Args:
        action (`str`): what was attempted, completing "Cannot {action} {repo}", e.g. `"push to"`.
        repo_id (`str`): the repo involved.
        revision (`str`, *optional*): the branch, tag or commit involved.
        filename (`str`, *optional*): the file involved (downloads).
        error (`type`, *optional*, defaults to `HubError`): the class to raise (`AdapterLoadError` for downloads).
    """
    where = f"{repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    prefix = f"Cannot {action} {where}"
    try:
        yield
    except RevisionNotFoundError as err:
        raise error(
            f"{prefix}: revision {revision or 'main'!r} does not exist in the repo "
            "(pass an existing branch, tag or commit, or a new branch name to push to)."
        ) from err
    except RepositoryNotFoundError as err:
        raise error(
            f"{prefix}: the repo does not exist or your token cannot access it "
            "(check the repo id; for private repos set HF_TOKEN, pass token=..., or run `hf auth login`)."
        ) from err
    # LocalEntryNotFoundError subclasses EntryNotFoundError: it must come first.
    except LocalEntryNotFoundError as err:
        raise error(
            f"{prefix}: {filename or 'the file'!r} is not in the local cache and the Hub cannot be reached (offline "
            "mode: HF_HUB_OFFLINE / local_files_only). Download it once online, or pass a local folder."
        ) from err
    except EntryNotFoundError as err:
        raise error(
            f"{prefix}: file {filename or '?'!r} does not exist there; is it a NEAT/PEANuT adapter repo?"
        ) from err
    except HFValidationError as err:
        raise error(f"{prefix}: {repo_id!r} is neither a local folder nor a valid Hub repo id ({err}).") from err
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status in (401, 403):
            raise error(
                f"{prefix}: the Hub refused the request ({status}). Set HF_TOKEN to a token with access to this "
                "namespace, pass token=..., or run `hf auth login`."
            ) from err
        if status is not None and status >= 500:
            raise error(
                f"{prefix}: the Hub failed with HTTP {status} ({_first_line(err)}). Nothing was changed by this request; "
                "try again later."
            ) from err
        raise error(f"{prefix}: the Hub answered HTTP {status} ({_first_line(err)}).") from err
    except TransportError as err:
        raise error(
            f"{prefix}: the connection failed ({type(err).__name__}: {_first_line(err)}). If it dropped after the "
            "request was sent, the change may have landed; running the same push again is safe (files already on "
            "the Hub make no new commit)."
        ) from err


@contextlib.contextmanager
def loading_errors(
    what: str, name: str | os.PathLike, *, revision: str | None = None, error: type[NeatError] = NeatError
) -> Iterator[None]:
    """Re-raise what transformers raises inside the block while loading `name` (`OSError`: a missing or incomplete
    folder, an unknown Hub id or revision, no network; `ValueError`: a config it does not recognise) as one line, "Cannot
    load {what} {name}: ...": a `HubError` when the Hub failed (no connection, a server error, access refused), else
    `error`. neat-hf's own errors pass through unchanged.
    """
    try:
        yield
    except NeatError:
        raise
    except (OSError, ValueError) as err:
        where = f"{os.fspath(name)!r}" + (f" at revision {revision!r}" if revision else "")
        raise (HubError if _hub_failed(err) else error)(f"Cannot load {what} {where}: {_first_line(err)}") from err


def _hub_failed(err: BaseException) -> bool:
    """Whether the exception chain of `err` shows the Hub failing (a connection error, or an HTTP error other than a
    repo, revision or file that does not exist), rather than bad input."""
    chain: list[BaseException] = []
    while err is not None and all(err is not seen for seen in chain):
        chain.append(err)
        err = err.__cause__ or err.__context__
    not_found = (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError)
    return any(isinstance(e, (TransportError, ConnectionError)) for e in chain) or any(
        isinstance(e, HfHubHTTPError) and not isinstance(e, not_found) for e in chain
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__
