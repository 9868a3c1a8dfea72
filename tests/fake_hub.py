"""A loopback HTTP server that serves files the way the Hugging Face Hub's resolve endpoint does.

``HEAD /{repo}/resolve/{revision}/{filename}`` answers with ``X-Repo-Commit``, ``ETag`` (SHA-256 for
"LFS" files, git blob SHA-1 for small ones) and ``Content-Length``; ``GET`` sends the bytes. Per file,
a mode makes the transfer fail the ways real ones do: ``interrupt`` (the connection drops halfway),
``corrupt`` (right length, wrong bytes), ``slow`` (a first chunk at once, then a trickle: a download that
is still running when a test kills it), ``redirect:<url>`` (a 302 to another URL), ``interrupt-once`` (the
first GET drops halfway, later ones send what they ask for), ``norange`` (the first GET drops halfway, then 200
with the whole file, as servers that ignore Range do). In ``ok`` and ``interrupt-once`` modes a
``Range: bytes=N-`` request is answered with 206 and the rest of the file; ``interrupt`` drops every time. ``/raw/{name}`` serves plain-URL files. Only 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


class FakeHub:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.etags: dict[str, str] = {}
        self.modes: dict[str, str] = {}
        self.requests: list[tuple[str, str]] = []
        self.slow_chunk, self.slow_delay = 4096, 0.05  # the trickle of "slow" mode (bytes, seconds)
        self._server = None
        self._closing = threading.Event()

    def add(self, repo: str, filename: str, data: bytes, lfs: bool | None = None, mode: str = "ok") -> None:
        key = f"/{repo}/resolve/main/{filename}"
        lfs = len(data) > 10_000 if lfs is None else lfs
        self.files[key] = data
        self.etags[key] = hashlib.sha256(data).hexdigest() if lfs else git_blob_sha1(data)
        self.modes[key] = mode

    def add_raw(self, name: str, data: bytes, mode: str = "ok") -> str:
        key = f"/raw/{name}"
        self.files[key] = data
        self.etags[key] = hashlib.sha256(data).hexdigest()
        self.modes[key] = mode
        return self.url + key

    def set_mode(self, repo_or_raw: str, filename: str | None, mode: str) -> None:
        key = f"/{repo_or_raw}/resolve/main/{filename}" if filename else f"/raw/{repo_or_raw}"
        self.modes[key] = mode

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _key(self):
                path = self.path.split("?")[0]
                if "/resolve/" in path:  # any revision resolves to the one stored version
                    repo, _, rest = path.partition("/resolve/")
                    path = f"{repo}/resolve/main/{rest.partition('/')[2]}"
                return path

            def _headers(self, key, data):
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", f'"{hub.etags[key]}"')
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Type", "application/octet-stream")

            def do_HEAD(self):
                key = self._key()
                hub.requests.append(("HEAD", key))
                if key not in hub.files:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.end_headers()
                    return
                self.send_response(200)
                self._headers(key, hub.files[key])
                self.end_headers()

            def do_GET(self):
                key = self._key()
                hub.requests.append(("GET", key))
                if key not in hub.files:
                    self.send_response(404)
                    self.end_headers()
                    return
                data, mode = hub.files[key], hub.modes[key]
                if mode.startswith("redirect:"):
                    self.send_response(302)
                    self.send_header("Location", mode.partition(":")[2])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                gets = sum(1 for m, k in hub.requests if m == "GET" and k == key)
                start = self._range_start()
                if start is not None and mode in ("ok", "interrupt-once") and 0 < start < len(data):
                    self.send_response(206)
                    self._headers(key, data[start:])
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                    self.end_headers()
                    self.wfile.write(data[start:])
                    return
                self.send_response(200)
                self._headers(key, data)
                self.end_headers()
                if mode == "interrupt" or (mode in ("interrupt-once", "norange") and gets == 1):
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if mode == "corrupt":
                    data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
                if mode == "slow":
                    self._trickle(data)
                    return
                self.wfile.write(data)

            def _range_start(self):
                value = self.headers.get("Range") or ""
                if value.startswith("bytes=") and value.endswith("-") and value[6:-1].isdigit():
                    return int(value[6:-1])
                return None

            def _trickle(self, data):
                try:
                    self.wfile.write(data[: len(data) // 4])
                    self.wfile.flush()
                    for i in range(len(data) // 4, len(data), hub.slow_chunk):
                        if hub._closing.wait(hub.slow_delay):
                            break
                        self.wfile.write(data[i : i + hub.slow_chunk])
                        self.wfile.flush()
                except OSError:  # the client went away (killed): nothing to do
                    pass
                self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
