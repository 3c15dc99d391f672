"""A real HTTP server on 127.0.0.1, started by a test, standing in for the internet.

It serves files by name (``/<name>``) with HTTP Range support (416 with the length past the end),
and can misbehave per file: drop the connection after some bytes (once), corrupt the body, ignore
Range requests, or answer 404 (any name it does not hold).
It also answers as a Hugging Face hub endpoint (``/<repo>/resolve/<revision>/<file>``, HEAD and GET
with the hub's ETag and commit headers), for the weights' download. Every request is logged.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Files:
    """What the server holds and how it misbehaves; mutable while it runs."""

    bodies: dict[str, bytes] = field(default_factory=dict)
    drop_after: dict[str, int] = field(default_factory=dict)  # name -> bytes sent before the first drop
    corrupt: set[str] = field(default_factory=set)
    ignore_range: set[str] = field(default_factory=set)  # answered 200 with the whole file, as some servers do
    hub: dict[str, bytes] = field(default_factory=dict)  # "<repo>/<file>" -> body
    log: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range header)


def _handler(files: Files) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def do_GET(self) -> None:
            self._serve(head=False)

        def _serve(self, head: bool) -> None:
            files.log.append((self.command, self.path, self.headers.get("Range")))
            name = self.path.lstrip("/")
            extra = {}
            if "/resolve/" in name:  # the hub: <repo>/resolve/<revision>/<file>
                repo, _, rest = name.partition("/resolve/")
                key = f"{repo}/{rest.split('/', 1)[1]}"
                body = files.hub.get(key)
                if body is not None:
                    extra = {"ETag": f'"{hashlib.sha256(body).hexdigest()}"', "X-Repo-Commit": COMMIT}
            else:
                body = files.bodies.get(name)
            if body is None:
                self.send_error(404, "Not Found")
                return
            if name in files.corrupt:
                body = bytes(b ^ 0xFF for b in body[:64]) + body[64:]
            start = 0
            ranged = self.headers.get("Range")
            if ranged and ranged.startswith("bytes=") and ranged.endswith("-") and name not in files.ignore_range:
                start = int(ranged[len("bytes="):-1])
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Length", str(len(body) - start))
            self.send_header("Accept-Ranges", "bytes")
            for key, value in extra.items():
                self.send_header(key, value)
            self.end_headers()
            if head:
                return
            payload = body[start:]
            drop = files.drop_after.pop(name, None)
            if drop is not None:
                self.wfile.write(payload[:drop])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.wfile.write(payload)

    return Handler


class QuietServer(ThreadingHTTPServer):
    """A client that hangs up early (a full disk, a refused download) is not an error here."""

    def handle_error(self, request, client_address) -> None:
        pass


@contextmanager
def serving(files: Files) -> Iterator[str]:
    """Serve ``files`` on a free loopback port; yields the base URL."""
    server = QuietServer(("127.0.0.1", 0), _handler(files))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
