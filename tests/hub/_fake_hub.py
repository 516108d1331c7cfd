"""A Hub endpoint on localhost serving model repositories from folders, for online tests.

It answers the requests huggingface_hub's downloads make (revision info, tree listing, file
metadata and content) as the Hub does, including its ``X-Error-Code`` answers for a missing
repository or revision, and records every request path.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Repository:
    """A served repository: one commit of the files of ``folder``, reachable by ``refs``."""

    folder: Path
    commit: str
    refs: tuple[str, ...] = ("main",)

    def files(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(self.folder.iterdir()) if p.is_file()}

    def resolves(self, revision: str) -> bool:
        return revision == self.commit or revision in self.refs


def git_blob_id(content: bytes) -> str:
    """The git object id of a file, which the Hub reports as its ``oid`` and ETag."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class FakeHub:
    """``repositories`` by id; ``requests`` collects ``(method, path)`` of every request."""

    repositories: dict[str, Repository] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    endpoint: str = ""

    def start(self) -> http.server.ThreadingHTTPServer:
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hub.answer(self)

            def do_HEAD(self) -> None:
                hub.answer(self)

            def log_message(self, *args: Any) -> None:  # keep pytest's output clean
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        return server

    def answer(self, request: http.server.BaseHTTPRequestHandler) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(request.path).path)
        self.requests.append((request.command, path))
        api = path.startswith("/api/models/")
        parts = path.removeprefix("/api/models/" if api else "/").split("/")
        repo_id, action, revision = "/".join(parts[:2]), parts[2:3], parts[3:4]
        repository = self.repositories.get(repo_id)
        if repository is None or not action or not revision:
            return _send_error(request, "RepoNotFound", f"Repository {repo_id} not found")
        if not repository.resolves(revision[0]):
            return _send_error(request, "RevisionNotFound", f"Invalid rev id: {revision[0]}")
        files = repository.files()
        if api and action == ["revision"]:
            siblings = [{"rfilename": name} for name in files]
            body = {"id": repo_id, "sha": repository.commit, "siblings": siblings}
            return _send(request, json.dumps(body).encode(), {"Content-Type": "application/json"})
        if api and action == ["tree"]:
            entries = [
                {"type": "file", "path": name, "size": len(data), "oid": git_blob_id(data)}
                for name, data in files.items()
            ]
            return _send(
                request, json.dumps(entries).encode(), {"Content-Type": "application/json"}
            )
        name = "/".join(parts[4:])
        if not api and action == ["resolve"] and name in files:
            data = files[name]
            headers = {"X-Repo-Commit": repository.commit, "ETag": f'"{git_blob_id(data)}"'}
            return _send(request, data, headers)
        return _send_error(request, "EntryNotFound", f"{name} not found in {repo_id}")


def _send(
    request: http.server.BaseHTTPRequestHandler, body: bytes, headers: dict[str, str]
) -> None:
    request.send_response(200)
    for key, value in {**headers, "Content-Length": str(len(body))}.items():
        request.send_header(key, value)
    request.end_headers()
    if request.command != "HEAD":
        request.wfile.write(body)


def _send_error(request: http.server.BaseHTTPRequestHandler, code: str, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    request.send_response(404)
    for key, value in {
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        "X-Error-Code": code,
        "X-Error-Message": message,
    }.items():
        request.send_header(key, value)
    request.end_headers()
    if request.command != "HEAD":
        request.wfile.write(body)
