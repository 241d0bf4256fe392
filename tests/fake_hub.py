"""A local stand-in for the Hugging Face Hub on 127.0.0.1, serving the endpoints huggingface_hub calls.

- HEAD /                                              (qwenkit's reachability probe)
- GET  /api/models/OWNER/REPO/tree/REV?recursive=...   (list_repo_files)
- POST /api/models/OWNER/REPO/paths-info/REV           (get_paths_info: size and LFS sha256)
- HEAD /OWNER/REPO/resolve/REV/PATH                     (metadata: X-Repo-Commit, ETag, X-Linked-Etag,
                                                         X-Linked-Size, as the Hub sends for LFS files)
- GET  /OWNER/REPO/resolve/REV/PATH                     (the bytes; honours Range: bytes=N-)

`cut[path] = n` makes the next GET of `path` send n bytes of a full-length response and drop the
connection; `corrupt[path] = data` serves other bytes than the advertised sha256 describes.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self) -> None:
        self.files: dict[str, dict[str, bytes]] = {}
        self.cut: dict[str, int] = {}
        self.corrupt: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, Range header
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, repo: str, path: str, data: bytes) -> None:
        self.files.setdefault(repo, {})[path] = data

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

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


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    resolve = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
    api = re.compile(r"^/api/models/([^/]+/[^/]+)/(tree|paths-info)/([^/]+)")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _record(self) -> str:
            path = unquote(urlparse(self.path).path)
            hub.requests.append((self.command, path, self.headers.get("Range")))
            return path

        def _json(self, body: object, status: int = 200) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _missing(self) -> None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_HEAD(self) -> None:
            path = self._record()
            m = resolve.match(path)
            if path == "/" or m is None:
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            repo, _rev, file = m.groups()
            if file not in hub.files.get(repo, {}):
                self._missing()
                return
            self._file_headers(repo, file, 200, len(hub.files[repo][file]))
            self.end_headers()

        def _file_headers(self, repo: str, file: str, status: int, length: int) -> None:
            info = hub.info(repo, file)
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
            if m := api.match(path):
                repo = m[1]
                if repo not in hub.files:
                    self._json({"error": "Repository not found"}, 404)
                    return
                self._json([hub.info(repo, p) for p in sorted(hub.files[repo])])
                return
            m = resolve.match(path)
            if m is None or m[3] not in hub.files.get(m[1], {}):
                self._missing()
                return
            repo, _rev, file = m.groups()
            data = hub.corrupt.get(file, hub.files[repo][file])
            start = 0
            if (rng := self.headers.get("Range")) and (r := re.match(r"bytes=(\d+)-", rng)):
                start = int(r[1])
            body = data[start:]
            self._file_headers(repo, file, 206 if start else 200, len(body))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if (n := hub.cut.pop(file, None)) is not None:
                self.wfile.write(body[:n])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

        def do_POST(self) -> None:
            path = self._record()
            m = api.match(path)
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode())
            if m is None or m[1] not in hub.files:
                self._json({"error": "Repository not found"}, 404)
                return
            repo = m[1]
            self._json([hub.info(repo, p) for p in form.get("paths", []) if p in hub.files[repo]])

    return Handler
