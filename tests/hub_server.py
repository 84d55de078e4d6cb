"""A minimal Hugging Face Hub-compatible HTTP server for tests, on 127.0.0.1.

It implements what huggingface_hub's own create_repo, create_branch, upload_folder /
create_commit, model_info, hf_hub_download and snapshot_download call, and for Spaces
space_info, add_space_variable / get_space_variables and request_space_hardware /
get_space_runtime, so the project's Hub code is exercised for real, over HTTP, through
HF_ENDPOINT. Every upload is answered as a "regular" (inline, base64) file, so no LFS or Xet
storage is needed. Repositories live in memory as full snapshots per commit; a model and a Space
may share an id, as on the Hub.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import yaml


@dataclass
class Repo:
    branches: dict[str, str] = field(default_factory=dict)   # branch -> commit sha
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> {path: content}
    sdk: str | None = None                                   # Spaces: gradio, docker, static, ...
    private: bool = False
    variables: dict[str, dict[str, str]] = field(default_factory=dict)  # Spaces: key -> {value, description}
    hardware: str | None = None                              # Spaces: the flavor last requested

    def resolve(self, revision: str) -> str | None:
        if revision in self.branches:
            return self.branches[revision]
        matches = [sha for sha in self.commits if sha.startswith(revision)] if len(revision) >= 7 else []
        return matches[0] if len(matches) == 1 else None


class HubState:
    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}   # (models | spaces, repo id) -> repo
        self.lock = threading.Lock()
        self.requests: list[str] = []

    def new_commit(self, repo: Repo, files: dict[str, bytes], message: str) -> str:
        sha = hashlib.sha1(f"{time.time_ns()}{message}{sorted(files)}".encode()).hexdigest()
        repo.commits[sha] = files
        return sha


class _Handler(BaseHTTPRequestHandler):
    state: HubState
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    # -- helpers ---------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)

    def _error(self, status: int, code: str, message: str) -> None:
        self._json(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _path(self) -> list[str]:
        return [unquote(part) for part in urlsplit(self.path).path.strip("/").split("/")]

    def _repo(self, repo_id: str, kind: str = "models") -> Repo | None:
        return self.state.repos.get((kind, repo_id))

    # -- routes ----------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        parts = self._path()
        self.state.requests.append(f"{self.command} {self.path}")
        with self.state.lock:
            if parts[0] == "api" and parts[1:2] in (["models"], ["spaces"]) and len(parts) >= 4:
                kind, repo_id = parts[1], "/".join(parts[2:4])
                if len(parts) >= 6 and parts[4] == "tree":
                    return self._tree(repo_id, parts[5], "/".join(parts[6:]), kind)
                if kind == "spaces" and parts[4:] == ["variables"]:
                    return self._space_variables(repo_id)
                if kind == "spaces" and parts[4:] == ["runtime"]:
                    return self._space_runtime(repo_id)
                revision = parts[5] if len(parts) >= 6 and parts[4] == "revision" else "main"
                return self._model_info(repo_id, revision) if kind == "models" else self._space_info(repo_id, revision)
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]))
        self._error(404, "EntryNotFound", f"no route for {self.path}")

    def do_POST(self) -> None:
        parts = self._path()
        self.state.requests.append(f"{self.command} {self.path}")
        body = self._body()
        with self.state.lock:
            if parts == ["api", "repos", "create"]:
                return self._create_repo(json.loads(body or b"{}"))
            if parts == ["api", "validate-yaml"]:
                return self._validate_yaml(json.loads(body)["content"])
            if parts[:2] == ["api", "spaces"] and parts[4:] in (["variables"], ["hardware"]):
                repo_id, payload = "/".join(parts[2:4]), json.loads(body or b"{}")
                if parts[4] == "variables":
                    return self._add_space_variable(repo_id, payload)
                return self._request_space_hardware(repo_id, payload)
            if parts[0] == "api" and parts[1:2] in (["models"], ["spaces"]) and len(parts) >= 6:
                kind, repo_id, action, revision = parts[1], "/".join(parts[2:4]), parts[4], "/".join(parts[5:])
                if action == "branch":
                    return self._create_branch(repo_id, revision, json.loads(body or b"{}"), kind)
                if action == "preupload":
                    return self._preupload(repo_id, json.loads(body), kind)
                if action == "commit":
                    return self._commit(repo_id, revision, body, kind)
        self._error(404, "EntryNotFound", f"no route for {self.path}")

    def _create_repo(self, payload: dict) -> None:
        name = payload.get("name", "")
        repo_id = f"{payload['organization']}/{name}" if payload.get("organization") else name
        kind = {"space": "spaces", "dataset": "datasets"}.get(payload.get("type") or "model", "models")
        if (kind, repo_id) in self.state.repos:
            return self._json(409, {"error": f"You already created this {kind[:-1]} repo", "url": self._url(repo_id)})
        if kind == "spaces" and not payload.get("sdk"):
            return self._error(400, "BadRequest", "a Space needs an sdk")
        repo = Repo(sdk=payload.get("sdk"), private=payload.get("visibility") == "private",
                    hardware=payload.get("hardware"))
        repo.branches["main"] = self.state.new_commit(repo, {".gitattributes": b""}, "initial commit")
        self.state.repos[(kind, repo_id)] = repo
        self._json(200, {"url": self._url(repo_id), "name": repo_id})

    def _validate_yaml(self, content: str) -> None:
        """Model card metadata must be a YAML mapping between '---' lines, as on the Hub."""
        match = re.match(r"^---\n(.*?)\n---\n", content, re.DOTALL)
        try:
            metadata = yaml.safe_load(match.group(1)) if match else None
        except yaml.YAMLError as exc:
            return self._json(400, {"errors": [{"message": f"invalid YAML: {exc}"}]})
        if not isinstance(metadata, dict):
            return self._json(200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]})
        self._json(200, {"errors": [], "warnings": []})

    def _create_branch(self, repo_id: str, branch: str, payload: dict, kind: str = "models") -> None:
        repo = self._repo(repo_id, kind)
        if repo is None:
            return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
        if branch in repo.branches:
            return self._error(409, "Conflict", f"Reference already exists: refs/heads/{branch}")
        start = repo.resolve(payload.get("startingPoint") or "main")
        repo.branches[branch] = start
        self._json(200, {})

    def _preupload(self, repo_id: str, payload: dict, kind: str = "models") -> None:
        if self._repo(repo_id, kind) is None:
            return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in payload["files"]]
        self._json(200, {"files": files, "commitOid": None})

    def _commit(self, repo_id: str, revision: str, body: bytes, kind: str = "models") -> None:
        repo = self._repo(repo_id, kind)
        if repo is None:
            return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
        if revision not in repo.branches:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        files = dict(repo.commits[repo.branches[revision]])
        message = ""
        for line in body.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            value = item["value"]
            if item["key"] == "header":
                message = value.get("summary", "")
            elif item["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "deletedFile":
                files.pop(value["path"], None)
            else:
                return self._error(400, "BadRequest", f"unsupported commit operation {item['key']!r}")
        sha = self.state.new_commit(repo, files, message)
        repo.branches[revision] = sha
        self._json(200, {"commitUrl": f"{self._url(repo_id)}/commit/{sha}", "commitOid": sha,
                         "success": True, "pullRequestUrl": None})

    def _snapshot(self, repo_id: str, revision: str, kind: str = "models") -> tuple[str, dict[str, bytes]] | None:
        """(commit, files) of a repo at a revision, or None after answering 404 as the Hub does."""
        repo = self._repo(repo_id, kind)
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
            return None
        sha = repo.resolve(revision)
        if sha is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None
        return sha, repo.commits[sha]

    def _model_info(self, repo_id: str, revision: str) -> None:
        if (snapshot := self._snapshot(repo_id, revision)) is None:
            return
        sha, files = snapshot
        self._json(200, {
            "id": repo_id, "modelId": repo_id, "sha": sha, "private": False, "disabled": False, "gated": False,
            "lastModified": "2026-01-01T00:00:00.000Z", "tags": [], "downloads": 0, "likes": 0,
            "siblings": [{"rfilename": path, "size": len(data)} for path, data in sorted(files.items())],
        })

    def _tree(self, repo_id: str, revision: str, prefix: str, kind: str = "models") -> None:
        if (snapshot := self._snapshot(repo_id, revision, kind)) is None:
            return
        entries = [{"type": "file", "path": path, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                   for path, data in sorted(snapshot[1].items()) if path.startswith(prefix)]
        self._json(200, entries)

    def _space_info(self, repo_id: str, revision: str) -> None:
        if (snapshot := self._snapshot(repo_id, revision, "spaces")) is None:
            return
        sha, files = snapshot
        repo = self._repo(repo_id, "spaces")
        self._json(200, {
            "id": repo_id, "sha": sha, "sdk": repo.sdk, "private": repo.private, "disabled": False,
            "lastModified": "2026-01-01T00:00:00.000Z", "tags": [], "likes": 0, "runtime": self._runtime(repo),
            "siblings": [{"rfilename": path, "size": len(data)} for path, data in sorted(files.items())],
        })

    def _space(self, repo_id: str) -> Repo | None:
        """The Space, or None after answering 404 as the Hub does."""
        repo = self._repo(repo_id, "spaces")
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository spaces/{repo_id} not found")
        return repo

    @staticmethod
    def _runtime(repo: Repo) -> dict:
        return {"stage": "BUILDING", "hardware": {"current": None, "requested": repo.hardware or "cpu-basic"},
                "gcTimeout": None, "storage": None}

    def _space_variables(self, repo_id: str) -> None:
        if (repo := self._space(repo_id)) is not None:
            self._json(200, repo.variables)

    def _add_space_variable(self, repo_id: str, payload: dict) -> None:
        if (repo := self._space(repo_id)) is None:
            return
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", payload.get("key", "")) or "value" not in payload:
            return self._error(400, "BadRequest", f"invalid variable {payload!r}")
        repo.variables[payload["key"]] = {"value": payload["value"], "description": payload.get("description"),
                                          "updatedAt": "2026-01-01T00:00:00.000Z"}
        self._json(200, repo.variables)

    def _space_runtime(self, repo_id: str) -> None:
        if (repo := self._space(repo_id)) is not None:
            self._json(200, self._runtime(repo))

    def _request_space_hardware(self, repo_id: str, payload: dict) -> None:
        if (repo := self._space(repo_id)) is None:
            return
        if not payload.get("flavor"):
            return self._error(400, "BadRequest", "no flavor requested")
        repo.hardware = payload["flavor"]
        self._json(200, self._runtime(repo))

    def _resolve(self, repo_id: str, revision: str, path: str) -> None:
        if (snapshot := self._snapshot(repo_id, revision)) is None:
            return
        sha, files = snapshot
        if (data := files.get(path)) is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist at {revision}")
        etag = hashlib.sha256(data).hexdigest()
        self._send(200, data, {"X-Repo-Commit": sha, "ETag": f'"{etag}"'}, "application/octet-stream")

    def _url(self, repo_id: str) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/{repo_id}"


class HubServer:
    """Run a HubState behind an HTTP server on 127.0.0.1 in a background thread."""

    def __init__(self) -> None:
        self.state = HubState()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def point_hub_at(monkeypatch, endpoint: str) -> None:
    """What HF_ENDPOINT does at import time, for a process that already imported
    huggingface_hub (tests that start a fresh process set the variable itself)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
