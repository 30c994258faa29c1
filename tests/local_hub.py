"""A Hugging Face hub on 127.0.0.1 that serves model folders, speaking as much of the hub's file
API as huggingface_hub, diffusers and transformers use to download a model (point HF_ENDPOINT
at `LocalHub.url`):

    HEAD|GET /{repo}/resolve/{revision}/{path}   the file, with X-Repo-Commit, ETag and
                                                 Content-Length; 404 with X-Error-Code
                                                 RepoNotFound / RevisionNotFound / EntryNotFound
    GET /api/models/{repo}[/revision/{revision}] {"id", "sha", "siblings"}
    GET /api/models/{repo}/tree/{revision}[/{path}] the entries under path (?recursive=true: all)
    HEAD /                                       200 (prolificli's reachability probe)

A revision is a branch or tag name (`refs`) or a full commit hash. Each request is recorded
(method, path), so a test can tell whether anything was fetched.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class Repo:
    commits: dict[str, Path] = field(default_factory=dict)  # commit hash -> the folder it serves
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit hash

    def commit(self, revision: str) -> str | None:
        return revision if revision in self.commits else self.refs.get(revision)


class LocalHub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self._server: ThreadingHTTPServer | None = None

    def add(self, repo_id: str, folder: Path, *, refs: tuple[str, ...] = ("main",)) -> str:
        """Serve `folder` as a new commit of `repo_id`, which each of `refs` then names; its hash."""
        digest = hashlib.sha1()
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
        commit = digest.hexdigest()
        repo = self.repos.setdefault(repo_id, Repo())
        repo.commits[commit] = folder
        repo.refs.update({ref: commit for ref in refs})
        return commit

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LocalHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:
                hub.answer(self, body=False)

            def do_GET(self) -> None:
                hub.answer(self, body=True)

            def log_message(self, *args) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- the API ---------------------------------------------------------------------------------

    def answer(self, request: BaseHTTPRequestHandler, body: bool) -> None:
        url = urlsplit(request.path)
        path = unquote(url.path)
        self.requests.append((request.command, path))
        parts = [p for p in path.split("/") if p]
        if not parts:
            return self._send(request, 200, b"", body)
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "tree":
            recursive = parse_qs(url.query).get("recursive", ["false"])[0].lower() == "true"
            return self._tree(request, "/".join(parts[2:4]), parts[5], "/".join(parts[6:]), recursive, body)
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            revision = parts[5] if len(parts) >= 6 and parts[4] == "revision" else "main"
            return self._model_info(request, "/".join(parts[2:4]), revision, body)
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._file(request, "/".join(parts[:2]), parts[3], "/".join(parts[4:]), body)
        return self._error(request, 404, None, body)

    def _resolve(self, request, repo_id: str, revision: str, body: bool) -> tuple[str, Path] | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            self._error(request, 404, "RepoNotFound", body)
            return None
        commit = repo.commit(revision)
        if commit is None:
            self._error(request, 404, "RevisionNotFound", body)
            return None
        return commit, repo.commits[commit]

    def _file(self, request, repo_id: str, revision: str, filename: str, body: bool) -> None:
        found = self._resolve(request, repo_id, revision, body)
        if found is None:
            return
        commit, folder = found
        target = (folder / filename).resolve()
        if not target.is_file() or folder.resolve() not in target.parents:
            return self._error(request, 404, "EntryNotFound", body, {"X-Repo-Commit": commit})
        data = target.read_bytes()
        etag = hashlib.sha256(data).hexdigest()
        self._send(request, 200, data, body, {"X-Repo-Commit": commit, "ETag": f'"{etag}"',
                                              "Content-Type": "application/octet-stream"})

    def _model_info(self, request, repo_id: str, revision: str, body: bool) -> None:
        found = self._resolve(request, repo_id, revision, body)
        if found is None:
            return
        commit, folder = found
        siblings = [{"rfilename": str(p.relative_to(folder))} for p in sorted(folder.rglob("*")) if p.is_file()]
        info = {"id": repo_id, "modelId": repo_id, "sha": commit, "private": False, "siblings": siblings}
        self._send(request, 200, json.dumps(info).encode(), body, {"Content-Type": "application/json"})

    def _tree(self, request, repo_id: str, revision: str, under: str, recursive: bool, body: bool) -> None:
        found = self._resolve(request, repo_id, revision, body)
        if found is None:
            return
        folder = found[1]
        top = folder / under
        if not top.is_dir():
            return self._error(request, 404, "EntryNotFound", body)
        entries = []
        for entry in sorted(top.rglob("*") if recursive else top.iterdir()):
            name = str(entry.relative_to(folder))
            if entry.is_dir():
                entries.append({"type": "directory", "path": name, "oid": hashlib.sha1(name.encode()).hexdigest()})
            else:
                data = entry.read_bytes()
                entries.append({"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()})
        self._send(request, 200, json.dumps(entries).encode(), body, {"Content-Type": "application/json"})

    def _error(self, request, status: int, code: str | None, body: bool, headers: dict | None = None) -> None:
        self._send(request, status, b'{"error": "not found"}', body,
                   {**({"X-Error-Code": code} if code else {}), **(headers or {}), "Content-Type": "application/json"})

    @staticmethod
    def _send(request, status: int, data: bytes, body: bool, headers: dict | None = None) -> None:
        request.send_response(status)
        for name, value in (headers or {}).items():
            request.send_header(name, value)
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        if body:
            request.wfile.write(data)
