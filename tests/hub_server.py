"""A loopback server for the part of the Hugging Face Hub HTTP API that `huggingface_hub` uses to push and pull repos.

Tests drive the *real* `huggingface_hub` client (create_repo, create_commit, upload_folder, create_branch,
hf_hub_download, model_info, list_repo_files, ...) against this server, so nothing is mocked above the HTTP layer and
nothing leaves the machine. Written against huggingface_hub 2.4 (the request code in `hf_api.py`, `_commit_api.py`,
`_upload_pipeline.py` and `file_download.py`); the same endpoints are used by huggingface_hub 1.x.

Endpoints (repo types `models`, `datasets`, `spaces`; revisions and paths URL-quoted as the client sends them):

| method | path | answer |
|---|---|---|
| POST | `/api/repos/create` | `{"url", "name", "id"}`; 409 if it exists (the client's `exist_ok=True` accepts 409) |
| POST | `/api/validate-yaml` | parses the card's YAML front matter; 400 `{"errors": [...]}` if it is not a mapping |
| POST | `/api/{type}s/{repo}/preupload/{rev}` | `uploadMode: "regular"` for every file, `shouldIgnore`, `oid` (git sha1 of the stored file) |
| POST | `/api/{type}s/{repo}/commit/{rev}` | NDJSON `header` / `file` (base64) / `deletedFile` / `deletedFolder` lines -> `commitOid`, `commitUrl` (+ `pullRequestUrl` with `create_pr=1`) |
| POST | `/api/{type}s/{repo}/branch/{name}` | new branch from `startingPoint` (default `main`); 409 if it exists |
| GET | `/api/{type}s/{repo}[/revision/{rev}]` | `id`, `sha`, `siblings`, `private`, `cardData`, `library_name`, `tags`, `pipeline_tag` |
| GET | `/api/{type}s/{repo}/tree/{rev}[/{path}]` | `[{"type": "file" or "directory", "path", "oid", "size"}]` (`recursive=true` lists every file) |
| GET | `/api/{type}s/{repo}/refs`, `/commits/{rev}` | branches / commit history |
| HEAD, GET | `/[{type}s/]{repo}/resolve/{rev}/{path}` | file bytes with `X-Repo-Commit`, `ETag` (git sha1), `Content-Length` |
| GET | `/api/whoami-v2`, `/api/agent-harnesses` | the test user / an empty registry |

Errors carry `X-Error-Code` (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`) and `X-Error-Message`, which is how
the client turns a 404 into `RepositoryNotFoundError`, `RevisionNotFoundError` or `RemoteEntryNotFoundError`.
Every request body is read completely before answering (keep-alive connections otherwise break), every answer has a
`Content-Length`. Requests the server does not implement get a 404 *without* an error code and are recorded in
`HubServer.unhandled`, so a test can assert the client did nothing unexpected.

Pointing the client at the server (huggingface_hub reads `HF_ENDPOINT` once, at import):

* in this process, `patch_hub_endpoint(endpoint)` (used by the `hub_server` fixture in `hub_fixtures.py`) rewrites
  `huggingface_hub.constants.ENDPOINT` and `HUGGINGFACE_CO_URL_TEMPLATE` (read at call time by `hf_hub_url` and
  `HfApi()`), the module-level `huggingface_hub.hf_api.api` instance behind `create_repo`, `upload_folder`,
  `file_exists`, ... (its `endpoint` is fixed when it is built), and resets transformers' shared
  `transformers.utils.hub._hf_api` (built lazily by `Trainer.push_to_hub`, endpoint fixed at creation);
* in a subprocess, `hub_env(endpoint, home)` gives the environment (`HF_ENDPOINT`, `HF_HOME`, `HF_HUB_CACHE`,
  `HF_TOKEN`, telemetry off) to start it with; nothing needs patching there.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml

DEFAULT_NAMESPACE = "neat-tester"
DUMMY_TOKEN = "hf_neatDummyTokenForLoopbackTests0123456789"

_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob, which the Hub uses as a regular file's `oid` and `ETag`."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    message: str
    files: dict[str, bytes]
    date: float


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # branch or PR ref -> commit oid
    prs: int = 0

    def resolve(self, revision: str) -> str | None:
        """Commit oid for a branch name, `refs/pr/N` or a full commit oid; None if it does not exist."""
        if revision in self.branches:
            return self.branches[revision]
        if revision.startswith("refs/heads/") and revision[len("refs/heads/") :] in self.branches:
            return self.branches[revision[len("refs/heads/") :]]
        if revision in self.commits:
            return revision
        return None


class HubState:
    """In-memory repos, shared by the handler threads. Tests read it through `HubServer` helpers."""

    def __init__(self, namespace: str = DEFAULT_NAMESPACE, valid_tokens: set[str] | None = None) -> None:
        self.namespace = namespace
        self.valid_tokens = valid_tokens
        self.lock = threading.RLock()
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[dict[str, Any]] = []
        self.unhandled: list[str] = []
        #: injected failures (see `HubServer.inject_fault`), consumed in order
        self.faults: list[dict[str, Any]] = []
        self._counter = 0

    def new_commit(self, repo: Repo, parent: str | None, title: str, message: str, files: dict[str, bytes]) -> Commit:
        self._counter += 1
        digest = hashlib.sha1()
        digest.update(f"{repo.repo_type}:{repo.repo_id}:{parent}:{self._counter}:{title}\n{message}".encode())
        for path in sorted(files):
            digest.update(f"{path}:{git_blob_sha1(files[path])}\n".encode())
        commit = Commit(digest.hexdigest(), parent, title, message, dict(files), time.time())
        repo.commits[commit.oid] = commit
        return commit


#: Paths other libraries request from whatever HF_ENDPOINT says; not neat-hf's calls, so not counted as unhandled.
THIRD_PARTY_PATHS = ("/api/organizations/kernels-community/", "/api/models/kernels-community/")


class _HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str, repo_commit: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.repo_commit = status, code, message, repo_commit


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(ts))


def _card_metadata(readme: bytes | None) -> dict[str, Any] | None:
    if not readme:
        return None
    text = readme.decode("utf-8", errors="replace")
    if not text.startswith("---"):
        return None
    parts = text.split("\n---", 1)
    try:
        data = yaml.safe_load(parts[0][3:]) if len(parts) == 2 else None
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real Hub; every answer sets Content-Length
    server: _Server

    # ------------------------------------------------------------------ plumbing
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence the default stderr log
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _take_fault(self, method: str, path: str) -> dict[str, Any] | None:
        state = self.server.state
        with state.lock:
            for fault in state.faults:
                if fault["method"] == method and fault["path_contains"] in path and fault["times"] > 0:
                    fault["times"] -= 1
                    return fault
        return None

    def _drop_connection(self) -> None:
        """Close the socket without an answer (what a dropped connection looks like to the client)."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False) -> None:
        if getattr(self, "_drop_response", False):
            self._drop_response = False
            self._drop_connection()
            return
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and not head:
            self.wfile.write(body)

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, err: _HubError, head: bool = False) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": err.message}
        if err.code:
            headers["X-Error-Code"] = err.code
        if err.repo_commit:
            headers["X-Repo-Commit"] = err.repo_commit
        self._send(err.status, json.dumps({"error": err.message}).encode(), headers, head=head)

    def _dispatch(self, method: str) -> None:
        body = self._read_body()  # always drain the body first
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        state = self.server.state
        with state.lock:
            state.requests.append(
                {
                    "method": method,
                    "path": split.path,
                    "query": query,
                    "authorization": self.headers.get("Authorization"),
                    "body": body,
                }
            )
        fault = self._take_fault(method, split.path)
        if fault is not None:
            if fault["kind"] == "delay":
                time.sleep(fault["seconds"])
            elif fault["kind"] == "500":
                self._json(500, {"error": "loopback hub: injected internal error"})
                return
            elif fault["kind"] == "403":
                self._json(403, {"error": "loopback hub: injected refusal"}, {"X-Error-Message": "injected refusal"})
                return
            elif fault["kind"] == "drop_before":
                self._drop_connection()
                return
            elif fault["kind"] == "drop_after":
                self._drop_response = True  # handle the request (the commit lands), then drop the answer
        try:
            self._check_token()
            handled = self._route(method, split.path, query, body)
        except _HubError as err:
            self._error(err, head=method == "HEAD")
            return
        if not handled:
            # bitsandbytes' CPU backend asks the Hub for a kernel repo when it is imported (through peft, in a
            # subprocess that inherits HF_ENDPOINT): third-party traffic, answered 404 like a Hub without it.
            if not split.path.startswith(THIRD_PARTY_PATHS):
                with state.lock:
                    state.unhandled.append(f"{method} {self.path}")
            self._json(404, {"error": f"loopback hub: {method} {split.path} is not implemented"})

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def _check_token(self) -> None:
        valid = self.server.state.valid_tokens
        auth = self.headers.get("Authorization")
        if valid is None or auth is None:
            return
        if not auth.startswith("Bearer ") or auth[len("Bearer ") :] not in valid:
            raise _HubError(401, None, "Invalid credentials in Authorization header")

    @property
    def _authenticated(self) -> bool:
        return self.headers.get("Authorization") is not None

    # ------------------------------------------------------------------ routing
    def _route(self, method: str, path: str, query: dict[str, str], body: bytes) -> bool:
        raw = path.split("/")[1:]  # keep quoted segments: a quoted revision ("refs%2Fpr%2F1") is one segment
        if raw[:1] == ["api"]:
            return self._route_api(method, raw[1:], query, body)
        # /{repo}/resolve/{rev}/{path} or /{datasets|spaces}/{repo}/resolve/...
        if method in ("GET", "HEAD") and "resolve" in raw:
            repo_type = "model"
            if raw[0] in ("datasets", "spaces"):
                repo_type, raw = _REPO_TYPES[raw[0]], raw[1:]
            idx = raw.index("resolve")
            if idx == 0 or len(raw) < idx + 3:
                return False
            repo_id = "/".join(unquote(p) for p in raw[:idx])
            revision = unquote(raw[idx + 1])
            filename = unquote("/".join(raw[idx + 2 :]))
            self._resolve(method, repo_type, repo_id, revision, filename)
            return True
        return False

    def _route_api(self, method: str, parts: list[str], query: dict[str, str], body: bytes) -> bool:
        if method == "POST" and parts == ["repos", "create"]:
            self._create_repo(json.loads(body or b"{}"))
            return True
        if method == "POST" and parts == ["validate-yaml"]:
            self._validate_yaml(json.loads(body or b"{}"))
            return True
        if method == "GET" and parts == ["whoami-v2"]:
            self._json(200, {"type": "user", "name": self.server.state.namespace, "orgs": [], "auth": {}})
            return True
        if method == "GET" and parts == ["agent-harnesses"]:
            self._json(200, {"standardEnvVars": [], "harnesses": {}})
            return True
        if not parts or parts[0] not in _REPO_TYPES or len(parts) < 3:
            return False
        repo_type = _REPO_TYPES[parts[0]]
        repo_id = f"{unquote(parts[1])}/{unquote(parts[2])}"
        rest = parts[3:]
        if method == "GET" and not rest:
            self._repo_info(repo_type, repo_id, None, query)
            return True
        if method == "GET" and rest[:1] == ["revision"] and len(rest) >= 2:
            self._repo_info(repo_type, repo_id, unquote("/".join(rest[1:])), query)
            return True
        if method == "GET" and rest[:1] == ["tree"] and len(rest) >= 2:
            sub = unquote("/".join(rest[2:])) if len(rest) > 2 else ""
            self._tree(repo_type, repo_id, unquote(rest[1]), sub, query)
            return True
        if method == "GET" and rest == ["refs"]:
            self._refs(repo_type, repo_id, query)
            return True
        if method == "GET" and rest[:1] == ["commits"] and len(rest) == 2:
            self._commits(repo_type, repo_id, unquote(rest[1]))
            return True
        if method == "POST" and rest[:1] == ["preupload"] and len(rest) == 2:
            self._preupload(repo_type, repo_id, unquote(rest[1]), query, json.loads(body or b"{}"))
            return True
        if method == "POST" and rest[:1] == ["commit"] and len(rest) == 2:
            self._commit(repo_type, repo_id, unquote(rest[1]), query, body)
            return True
        if method == "POST" and rest[:1] == ["branch"] and len(rest) == 2:
            self._create_branch(repo_type, repo_id, unquote(rest[1]), json.loads(body or b"{}"))
            return True
        if method == "DELETE" and rest[:1] == ["branch"] and len(rest) == 2:
            self._delete_branch(repo_type, repo_id, unquote(rest[1]))
            return True
        return False

    # ------------------------------------------------------------------ helpers
    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.server.state.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not self._authenticated):
            raise _HubError(404, "RepoNotFound", "Repository not found")
        return repo

    def _commit_of(self, repo: Repo, revision: str) -> Commit:
        oid = repo.resolve(revision)
        if oid is None:
            raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return repo.commits[oid]

    def _url(self, repo: Repo) -> str:
        return f"{self.server.endpoint}/{_URL_PREFIX[repo.repo_type]}{repo.repo_id}"

    # ------------------------------------------------------------------ endpoints
    def _create_repo(self, payload: dict[str, Any]) -> None:
        state = self.server.state
        if not self._authenticated:
            raise _HubError(401, None, "You must be authenticated to create a repo")
        name = payload.get("name")
        if not isinstance(name, str) or not name or "/" in name:
            self._json(400, {"error": f"Invalid repo name {name!r}"})
            return
        namespace = payload.get("organization") or state.namespace
        repo_type = payload.get("type") or "model"
        repo_id = f"{namespace}/{name}"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        with state.lock:
            if (repo_type, repo_id) in state.repos:
                repo = state.repos[(repo_type, repo_id)]
                self._json(409, {"error": "You already created this model repo", "url": self._url(repo)})
                return
            repo = Repo(repo_id=repo_id, repo_type=repo_type, private=private)
            initial = state.new_commit(
                repo,
                None,
                "initial commit",
                "",
                {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"},
            )
            repo.branches["main"] = initial.oid
            state.repos[(repo_type, repo_id)] = repo
        self._json(200, {"url": self._url(repo), "name": repo_id, "id": repo_id})

    def _validate_yaml(self, payload: dict[str, Any]) -> None:
        content = payload.get("content", "")
        if not content.startswith("---"):
            self._json(200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata in repo card"}]})
            return
        head = content.split("\n---", 1)
        try:
            data = yaml.safe_load(head[0][3:]) if len(head) == 2 else None
        except yaml.YAMLError as exc:
            self._json(400, {"errors": [{"message": f"Invalid YAML: {exc}"}]})
            return
        if not isinstance(data, dict):
            self._json(400, {"errors": [{"message": "YAML metadata must be a mapping"}]})
            return
        errors = []
        for key in ("tags", "datasets"):
            if key in data and not isinstance(data[key], (list, str)):
                errors.append({"message": f'"{key}" must be a string or an array of strings'})
        if "model-index" in data and not isinstance(data["model-index"], list):
            errors.append({"message": '"model-index" must be an array'})
        if errors:
            self._json(400, {"errors": errors})
            return
        self._json(200, {"errors": [], "warnings": []})

    def _repo_info(self, repo_type: str, repo_id: str, revision: str | None, query: dict[str, str]) -> None:
        with self.server.state.lock:
            repo = self._repo(repo_type, repo_id)
            commit = self._commit_of(repo, revision or "main")
            siblings = []
            for path in sorted(commit.files):
                sibling: dict[str, Any] = {"rfilename": path}
                if query.get("blobs"):
                    sibling.update(size=len(commit.files[path]), blobId=git_blob_sha1(commit.files[path]))
                siblings.append(sibling)
            card = _card_metadata(commit.files.get("README.md"))
        info: dict[str, Any] = {
            "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "modelId": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit.oid,
            "lastModified": _iso(commit.date),
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": list((card or {}).get("tags") or []),
            "siblings": siblings,
        }
        if card is not None:
            info["cardData"] = card
            for key in ("library_name", "pipeline_tag"):
                if key in card:
                    info[key] = card[key]
        self._json(200, info)

    def _tree(self, repo_type: str, repo_id: str, revision: str, sub: str, query: dict[str, str]) -> None:
        recursive = query.get("recursive", "false").lower() in ("1", "true")
        with self.server.state.lock:
            repo = self._repo(repo_type, repo_id)
            commit = self._commit_of(repo, revision)
            files = dict(commit.files)
        prefix = f"{sub.strip('/')}/" if sub.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in files):
            raise _HubError(404, "EntryNotFound", f"{sub} does not exist on {revision}", repo_commit=commit.oid)
        entries: dict[str, dict[str, Any]] = {}
        for path in sorted(files):
            if not path.startswith(prefix):
                continue
            rel = path[len(prefix) :]
            parts = rel.split("/")
            # folders on the way (all of them when recursive, only the first level otherwise)
            depth = len(parts) - 1 if recursive else min(1, len(parts) - 1)
            for i in range(1, depth + 1):
                folder = prefix + "/".join(parts[:i])
                entries.setdefault(
                    folder,
                    {"type": "directory", "path": folder, "oid": hashlib.sha1(folder.encode()).hexdigest(), "size": 0},
                )
            if recursive or len(parts) == 1:
                data = files[path]
                entries[path] = {"type": "file", "path": path, "oid": git_blob_sha1(data), "size": len(data)}
        self._json(200, list(entries.values()))

    def _refs(self, repo_type: str, repo_id: str, query: dict[str, str]) -> None:
        with self.server.state.lock:
            repo = self._repo(repo_type, repo_id)
            branches = [
                {"name": name, "ref": f"refs/heads/{name}", "targetCommit": oid}
                for name, oid in repo.branches.items()
                if not name.startswith("refs/pr/")
            ]
            prs = [
                {"name": name, "ref": name, "targetCommit": oid}
                for name, oid in repo.branches.items()
                if name.startswith("refs/pr/")
            ]
        payload: dict[str, Any] = {"branches": branches, "converts": [], "tags": []}
        if query.get("include_prs"):
            payload["pullRequests"] = prs
        self._json(200, payload)

    def _commits(self, repo_type: str, repo_id: str, revision: str) -> None:
        with self.server.state.lock:
            repo = self._repo(repo_type, repo_id)
            commit: Commit | None = self._commit_of(repo, revision)
            items = []
            while commit is not None:
                items.append(
                    {
                        "id": commit.oid,
                        "authors": [{"user": self.server.state.namespace}],
                        "date": _iso(commit.date),
                        "title": commit.title,
                        "message": commit.message,
                    }
                )
                commit = repo.commits.get(commit.parent) if commit.parent else None
        self._json(200, items)

    def _preupload(
        self, repo_type: str, repo_id: str, revision: str, query: dict[str, str], payload: dict[str, Any]
    ) -> None:
        with self.server.state.lock:
            repo = self._repo(repo_type, repo_id)
            commit = self._commit_of(repo, revision)
            files = []
            for item in payload.get("files", []):
                stored = commit.files.get(item["path"])
                files.append(
                    {
                        "path": item["path"],
                        "uploadMode": "regular",
                        "shouldIgnore": False,
                        # the client skips files whose oid is unchanged (no empty commits); not for PRs
                        "oid": git_blob_sha1(stored) if stored is not None and not query.get("create_pr") else None,
                    }
                )
        self._json(200, {"files": files, "commitOid": commit.oid})

    def _commit(self, repo_type: str, repo_id: str, revision: str, query: dict[str, str], body: bytes) -> None:
        state = self.server.state
        lines = [json.loads(line) for line in body.decode("utf-8").splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            self._json(400, {"error": "The first line of a commit payload must be its header"})
            return
        header = lines[0]["value"]
        with state.lock:
            repo = self._repo(repo_type, repo_id)
            if not self._authenticated:
                raise _HubError(401, None, "You must be authenticated to commit")
            base = self._commit_of(repo, revision)
            parent_commit = header.get("parentCommit")
            if parent_commit is not None and parent_commit != base.oid:
                self._json(412, {"error": f"parentCommit {parent_commit} is not the head of {revision}"})
                return
            files = dict(base.files)
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value", {})
                if key == "file":
                    if value.get("encoding") != "base64":
                        self._json(400, {"error": f"unsupported encoding {value.get('encoding')!r}"})
                        return
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    if value["path"] not in files:
                        raise _HubError(404, "EntryNotFound", f"A file with this name doesn't exist: {value['path']}")
                    del files[value["path"]]
                elif key == "deletedFolder":
                    folder = value["path"].rstrip("/") + "/"
                    files = {p: d for p, d in files.items() if not p.startswith(folder)}
                else:
                    # lfsFile would need the LFS batch API, which this server does not implement (preupload never asks)
                    self._json(400, {"error": f"loopback hub: unsupported commit operation {key!r}"})
                    return
            commit = state.new_commit(repo, base.oid, header.get("summary", ""), header.get("description", ""), files)
            payload: dict[str, Any] = {"success": True, "commitOid": commit.oid, "hookOutput": ""}
            if query.get("create_pr"):
                repo.prs += 1
                ref = f"refs/pr/{repo.prs}"
                repo.branches[ref] = commit.oid
                payload["pullRequestUrl"] = f"{self._url(repo)}/discussions/{repo.prs}"
            else:
                target = revision[len("refs/heads/") :] if revision.startswith("refs/heads/") else revision
                if target not in repo.branches:
                    raise _HubError(400, None, f"Cannot commit to {revision}: not a branch")
                repo.branches[target] = commit.oid
            payload["commitUrl"] = f"{self._url(repo)}/commit/{commit.oid}"
        self._json(200, payload)

    def _create_branch(self, repo_type: str, repo_id: str, branch: str, payload: dict[str, Any]) -> None:
        with self.server.state.lock:
            repo = self._repo(repo_type, repo_id)
            if not self._authenticated:
                raise _HubError(401, None, "You must be authenticated to create a branch")
            if branch in repo.branches:
                self._json(409, {"error": f"Reference refs/heads/{branch} already exists"})
                return
            start = self._commit_of(repo, payload.get("startingPoint") or "main")
            repo.branches[branch] = start.oid
        self._json(200, {})

    def _delete_branch(self, repo_type: str, repo_id: str, branch: str) -> None:
        with self.server.state.lock:
            repo = self._repo(repo_type, repo_id)
            if branch not in repo.branches or branch == "main":
                raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {branch}")
            del repo.branches[branch]
        self._json(200, {})

    def _resolve(self, method: str, repo_type: str, repo_id: str, revision: str, filename: str) -> None:
        head = method == "HEAD"
        try:
            with self.server.state.lock:
                repo = self._repo(repo_type, repo_id)
                commit = self._commit_of(repo, revision)
                data = commit.files.get(filename)
                if data is None:
                    raise _HubError(
                        404, "EntryNotFound", f"{filename} does not exist on {revision}", repo_commit=commit.oid
                    )
        except _HubError as err:
            self._error(err, head=head)
            return
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{git_blob_sha1(data)}"',
            "Accept-Ranges": "bytes",
        }
        status, payload = 200, data
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and not head:
            start_s, _, end_s = rng[len("bytes=") :].partition("-")
            start = int(start_s or 0)
            end = int(end_s) if end_s else len(data) - 1
            payload = data[start : end + 1]
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        if head:
            # A HEAD answer announces the file's size but has no body.
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            return
        self._send(status, payload, headers)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, state: HubState) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state
        self.endpoint = f"http://127.0.0.1:{self.server_address[1]}"


class HubServer:
    """Handle on a running loopback Hub: its `endpoint` URL plus read-only views of what was pushed."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        self.state = server.state
        self.endpoint = server.endpoint

    # repos -------------------------------------------------------------
    def repo_ids(self, repo_type: str = "model") -> list[str]:
        with self.state.lock:
            return sorted(rid for (rtype, rid) in self.state.repos if rtype == repo_type)

    def _repo(self, repo_id: str, repo_type: str) -> Repo:
        repo = self.state.repos.get((repo_type, repo_id))
        if repo is None:
            raise KeyError(f"no {repo_type} repo {repo_id!r} on the loopback hub; repos: {self.repo_ids(repo_type)}")
        return repo

    def is_private(self, repo_id: str, repo_type: str = "model") -> bool:
        with self.state.lock:
            return self._repo(repo_id, repo_type).private

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """`{path: bytes}` of `repo_id` at `revision` (branch, `refs/pr/N` or commit oid)."""
        with self.state.lock:
            repo = self._repo(repo_id, repo_type)
            oid = repo.resolve(revision)
            if oid is None:
                raise KeyError(f"revision {revision!r} not in {repo_id}; branches: {sorted(repo.branches)}")
            return dict(repo.commits[oid].files)

    def branches(self, repo_id: str, repo_type: str = "model") -> dict[str, str]:
        with self.state.lock:
            return dict(self._repo(repo_id, repo_type).branches)

    def history(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[Commit]:
        """Commits reachable from `revision`, newest first (the repo's initial commit last)."""
        with self.state.lock:
            repo = self._repo(repo_id, repo_type)
            oid = repo.resolve(revision)
            out = []
            while oid is not None:
                commit = repo.commits[oid]
                out.append(copy.copy(commit))
                oid = commit.parent
            return out

    # traffic -----------------------------------------------------------
    @property
    def requests(self) -> list[dict[str, Any]]:
        with self.state.lock:
            return list(self.state.requests)

    @property
    def unhandled(self) -> list[str]:
        with self.state.lock:
            return list(self.state.unhandled)

    def request_count(self) -> int:
        with self.state.lock:
            return len(self.state.requests)

    def inject_fault(
        self, kind: str, *, path_contains: str = "/commit/", method: str = "POST", times: int = 1, seconds: float = 0.0
    ) -> None:
        """Make the next `times` matching requests fail: `"500"` (an internal error, nothing done), `"403"` (refused,
        nothing done; unlike a 500 or a dropped connection the client does not retry it), `"drop_before"` (connection
        closed before the request is handled), `"drop_after"` (handled, e.g. the commit lands, then the connection is
        closed without an answer), or `"delay"` (answered after `seconds`)."""
        if kind not in ("500", "403", "drop_before", "drop_after", "delay"):
            raise ValueError(f"unknown fault {kind!r}")
        with self.state.lock:
            self.state.faults.append(
                {"kind": kind, "path_contains": path_contains, "method": method, "times": times, "seconds": seconds}
            )

    def add_file(
        self, repo_id: str, path: str, data: bytes, *, revision: str = "main", repo_type: str = "model"
    ) -> str:
        """Commit `data` at `path` server-side (no client involved), e.g. to plant a bad file; returns the commit."""
        with self.state.lock:
            repo = self._repo(repo_id, repo_type)
            base = repo.commits[repo.branches[revision]]
            commit = self.state.new_commit(repo, base.oid, f"add {path}", "", {**base.files, path: data})
            repo.branches[revision] = commit.oid
            return commit.oid


@contextlib.contextmanager
def run_hub_server(*, namespace: str = DEFAULT_NAMESPACE, valid_tokens: set[str] | None = None) -> Iterator[HubServer]:
    """Run the loopback Hub on 127.0.0.1 and a free port for the duration of the `with` block.

    Args:
        namespace (`str`, *optional*, defaults to `"neat-tester"`):
            The user that owns repos created without an explicit namespace (what `whoami` answers).
        valid_tokens (`set[str]`, *optional*):
            If given, a request carrying any other bearer token gets the Hub's 401 "Invalid credentials". Requests
            without a token are still served for public repos; writes always need a token.

    Yields:
        [`HubServer`]: `.endpoint` is the URL to point `HF_ENDPOINT` at.
    """
    state = HubState(namespace=namespace, valid_tokens=valid_tokens)
    server = _Server(state)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="loopback-hub", daemon=True
    )
    thread.start()
    try:
        yield HubServer(server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextlib.contextmanager
def patch_hub_endpoint(endpoint: str, *, offline: bool = False) -> Iterator[None]:
    """Point this process's already-imported `huggingface_hub` (and transformers' shared HfApi) at `endpoint`.

    `HF_ENDPOINT` is read once when `huggingface_hub` is imported, and conftest fixtures import transformers (hence
    huggingface_hub) long before a test runs, so setting the variable in a test is too late. This patches the copies
    that matter for huggingface_hub 2.4 and restores them on exit:

    - `huggingface_hub.constants.ENDPOINT` and `.HUGGINGFACE_CO_URL_TEMPLATE` (read at call time by `hf_hub_url`,
      `HfApi()`, `validate-yaml`),
    - `huggingface_hub.hf_api.api.endpoint`: the instance behind the module-level `create_repo`, `upload_folder`,
      `file_exists`, `model_info`, ... functions (PEFT imports `file_exists` from there),
    - `transformers.utils.hub._hf_api` (reset to None, so `Trainer.push_to_hub` builds a new HfApi on the patched
      endpoint),
    - `constants.HF_HUB_OFFLINE` when `offline=True` (also `HF_HUB_OFFLINE` in `os.environ`, which PEFT reads).
    """
    from huggingface_hub import constants, hf_api
    from huggingface_hub.utils import _http

    saved = {
        "ENDPOINT": constants.ENDPOINT,
        "HUGGINGFACE_CO_URL_TEMPLATE": constants.HUGGINGFACE_CO_URL_TEMPLATE,
        "HF_HUB_OFFLINE": constants.HF_HUB_OFFLINE,
    }
    saved_api_endpoint = hf_api.api.endpoint
    saved_env = os.environ.get("HF_HUB_OFFLINE")
    try:
        import transformers.utils.hub as tf_hub
    except ImportError:  # pragma: no cover - transformers is a dependency of neat-hf
        tf_hub = None
    saved_tf_api = getattr(tf_hub, "_hf_api", None)
    constants.ENDPOINT = endpoint
    constants.HUGGINGFACE_CO_URL_TEMPLATE = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    hf_api.api.endpoint = endpoint
    if tf_hub is not None:
        tf_hub._hf_api = None
    if offline:
        constants.HF_HUB_OFFLINE = True
        os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(constants, key, value)
        hf_api.api.endpoint = saved_api_endpoint
        if tf_hub is not None:
            tf_hub._hf_api = saved_tf_api
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env
        _http.close_session()  # drop keep-alive connections to a server that is about to stop


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """`HF_HUB_OFFLINE=1` for an already-imported huggingface_hub (constant + environment), restored on exit."""
    from huggingface_hub import constants

    saved, saved_env = constants.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE")
    constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


def hub_env(endpoint: str, home: str | os.PathLike[str], token: str = DUMMY_TOKEN) -> dict[str, str]:
    """Environment for a *subprocess* that should talk to the loopback Hub (set before huggingface_hub is imported)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE_"))}
    home = os.fspath(home)
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=home,
        HF_HUB_CACHE=os.path.join(home, "hub"),
        HF_TOKEN=token,
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_IMPLICIT_TOKEN="0",
        TRANSFORMERS_OFFLINE="0",
    )
    return env


def quote_revision(revision: str) -> str:
    """How the client puts a revision into a URL (one path segment)."""
    return quote(revision, safe="")
