"""Local stand-ins on 127.0.0.1 for the hubs qwenkit downloads from, serving the endpoints their
client packages call. `FakeServer` is the shared part (server thread, request log, JSON replies);
`FakeHub` is Hugging Face (huggingface_hub), `FakeModelScope` is ModelScope (the modelscope package).

FakeHub:
- HEAD /                                              (qwenkit's reachability probe)
- GET  /api/models/OWNER/REPO/tree/REV?recursive=...   (list_repo_files)
- POST /api/models/OWNER/REPO/paths-info/REV           (get_paths_info: size and LFS sha256)
- HEAD /OWNER/REPO/resolve/REV/PATH                     (metadata: X-Repo-Commit, ETag, X-Linked-Etag,
                                                         X-Linked-Size, as the Hub sends for LFS files)
- GET  /OWNER/REPO/resolve/REV/PATH                     (the bytes; honours Range: bytes=N-)

FakeModelScope (point MODELSCOPE_ENDPOINT at `url`):
- GET /api/v1/models/OWNER/REPO/repo/files?Revision=...&Recursive=...  (listing with Size, Sha256)
- GET /api/v1/models/OWNER/REPO/revisions                              (branches and tags)
- GET /api/v1/models/OWNER/REPO/repo?Revision=...&FilePath=PATH        (the bytes)
- anything else (such as /api/v1/repos/internalAccelerationInfo): 404

`cut[path] = n` makes the next GET of `path` send n bytes of a full-length response and drop the
connection (FakeHub); `corrupt[path] = data` serves other bytes than the advertised sha256 describes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar, Self
from urllib.parse import parse_qs, unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeServer:
    """A threaded HTTP server on a free port of 127.0.0.1 holding repos of files; a context manager."""

    handler: ClassVar[type[_Handler]]

    def __init__(self) -> None:
        self.files: dict[str, dict[str, bytes]] = {}
        self.corrupt: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, Range header
        handler = type("Handler", (self.handler,), {"hub": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, repo: str, path: str, data: bytes) -> None:
        self.files.setdefault(repo, {})[path] = data

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: ClassVar[FakeServer]

    def log_message(self, *args: object) -> None:
        pass

    def _record(self) -> str:
        """The request's path (unquoted, without the query), logged in `hub.requests`."""
        path = unquote(urlparse(self.path).path)
        self.hub.requests.append((self.command, path, self.headers.get("Range")))
        return path

    def _json(self, body: object, status: int = 200) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_API = re.compile(r"^/api/models/([^/]+/[^/]+)/(tree|paths-info)/([^/]+)")


class _HubHandler(_Handler):
    hub: ClassVar[FakeHub]

    def _missing(self) -> None:
        self.send_response(404)
        self.send_header("X-Error-Code", "EntryNotFound")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self) -> None:
        path = self._record()
        m = _RESOLVE.match(path)
        if path == "/" or m is None:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        repo, _rev, file = m.groups()
        if file not in self.hub.files.get(repo, {}):
            self._missing()
            return
        self._file_headers(repo, file, 200, len(self.hub.files[repo][file]))
        self.end_headers()

    def _file_headers(self, repo: str, file: str, status: int, length: int) -> None:
        info = self.hub.info(repo, file)
        sha = info["lfs"]["oid"]  # type: ignore[index]
        self.send_response(status)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{sha}"')
        self.send_header("X-Linked-Etag", f'"{sha}"')
        self.send_header("X-Linked-Size", str(info["size"]))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(length))

    def do_GET(self) -> None:
        path = self._record()
        if m := _API.match(path):
            repo = m[1]
            if repo not in self.hub.files:
                self._json({"error": "Repository not found"}, 404)
                return
            self._json([self.hub.info(repo, p) for p in sorted(self.hub.files[repo])])
            return
        m = _RESOLVE.match(path)
        if m is None or m[3] not in self.hub.files.get(m[1], {}):
            self._missing()
            return
        repo, _rev, file = m.groups()
        data = self.hub.corrupt.get(file, self.hub.files[repo][file])
        start = 0
        if (rng := self.headers.get("Range")) and (r := re.match(r"bytes=(\d+)-", rng)):
            start = int(r[1])
        body = data[start:]
        self._file_headers(repo, file, 206 if start else 200, len(body))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if (n := self.hub.cut.pop(file, None)) is not None:
            self.wfile.write(body[:n])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def do_POST(self) -> None:
        path = self._record()
        m = _API.match(path)
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode())
        if m is None or m[1] not in self.hub.files:
            self._json({"error": "Repository not found"}, 404)
            return
        repo = m[1]
        self._json([self.hub.info(repo, p) for p in form.get("paths", []) if p in self.hub.files[repo]])


class FakeHub(FakeServer):
    """Hugging Face."""

    handler = _HubHandler

    def __init__(self) -> None:
        self.cut: dict[str, int] = {}
        super().__init__()

    def env(self, home: Path, **extra: str) -> dict[str, str]:
        """This process's environment for a qwenkit whose Hugging Face is this hub and whose
        $QWENKIT_HOME is `home` (online, no Xet, no telemetry), plus `extra`."""
        env = dict(
            os.environ,
            HF_ENDPOINT=self.url,
            QWENKIT_HOME=str(home),
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HOME=str(home / "hf-home"),
            **extra,
        )
        env.pop("HF_HUB_OFFLINE", None)
        return env

    def info(self, repo: str, path: str) -> dict[str, object]:
        data = self.files[repo][path]
        sha = hashlib.sha256(data).hexdigest()
        return {
            "type": "file",
            "path": path,
            "size": len(data),
            "oid": hashlib.sha1(data).hexdigest(),
            "lfs": {"oid": sha, "size": len(data), "pointerSize": 134},
        }


_MS_REPO = re.compile(r"^/api/v1/models/([^/]+/[^/]+)/(repo/files|revisions|repo)$")


class _ModelScopeHandler(_Handler):
    hub: ClassVar[FakeModelScope]

    def do_GET(self) -> None:
        path = self._record()
        query = parse_qs(urlparse(self.path).query)
        m = _MS_REPO.match(path)
        if m is None or m[1] not in self.hub.files:
            self._json({"Code": 404, "Success": False, "Message": f"not found: {path}"}, 404)
            return
        repo, what = m.groups()
        files = self.hub.files[repo]
        if what == "repo/files":
            self._json(
                {"Code": 200, "Success": True, "Data": {"Files": [self.hub.info(repo, p) for p in sorted(files)]}}
            )
        elif what == "revisions":
            branches = [{"Revision": "master", "CreatedAt": 0}]
            self._json({"Code": 200, "Success": True, "Data": {"RevisionMap": {"Branches": branches, "Tags": []}}})
        elif (file := query.get("FilePath", [""])[0]) in files:
            data = self.hub.corrupt.get(file, files[file])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        else:
            self._json({"Code": 404, "Success": False, "Message": f"no file {file}"}, 404)


class FakeModelScope(FakeServer):
    """ModelScope: its file listing gives each file's size and sha256, which the modelscope package checks."""

    handler = _ModelScopeHandler

    def info(self, repo: str, path: str) -> dict[str, object]:
        data = self.files[repo][path]
        return {
            "Name": path.rsplit("/", 1)[-1],
            "Path": path,
            "Type": "blob",
            "Size": len(data),
            "Sha256": hashlib.sha256(data).hexdigest(),
            "Revision": COMMIT,
            "IsLFS": True,
        }
