"""A loopback HTTP server for corpora and for the faults a crawler must survive.

Used by the demo (the embedded default corpus), the tests and the benchmarks. It listens on
127.0.0.1 (or another loopback address, one per host) at a free port, serves images from
memory and, on the routes below, misbehaves on purpose; `StalledServer` accepts and never
answers. Nothing here ever contacts another host: redirects to private addresses are only
*announced* in a Location header, and the crawler must refuse them before connecting.

Routes (NAME is an image's name, N a count, ID any token naming a retry counter):
  /img/NAME                      the image
  /status/CODE                   an empty response with that status
  /flaky/ID/N/NAME               503 for the first N requests of ID, then the image
  /retry-after/ID/N/NAME         429 with Retry-After: 1 for the first N requests, then the image
  /slow/SECONDS/NAME             waits, then the image
  /truncated/NAME                a Content-Length larger than the body it sends
  /html                          a text/html page
  /huge                          an endless image/jpeg body with no Content-Length
  /robots-tag/DIRECTIVE/NAME     the image with `X-Robots-Tag: DIRECTIVE`
  /redirect?to=URL               302 to URL
  /redirect-loop                 302 to itself
  /redirect-chain/N/NAME         N redirects, then the image
  /drip/SECONDS/NAME             the image, 1 kB every SECONDS (each read is quick, the whole is slow)
  /reset/NAME                    half the image, then a TCP reset
  /concurrent/ID/NAME            the image after 0.2 s; records ID's peak concurrency and start times
  /private/NAME                  the image, but robots.txt disallows /private/
  /robots.txt                    `robots_txt` (404 when None), after `robots_delay` seconds
"""

from __future__ import annotations

import argparse
import logging
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)
DEFAULT_ROBOTS_TXT = "User-agent: *\nDisallow: /private/\n"
_TYPES = {
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "gif": "image/gif",
    "webp": "image/webp",
}


class CorpusServer:
    """Serve `images` (name -> bytes) on `host` (any loopback address); a context manager."""

    def __init__(
        self,
        images: dict[str, bytes] | None = None,
        robots_txt: str | None = DEFAULT_ROBOTS_TXT,
        robots_delay: float = 0.0,
        host: str = "127.0.0.1",
    ):
        self.images: dict[str, bytes] = dict(images or {})
        self.robots_txt, self.robots_delay = robots_txt, robots_delay
        self.hits: Counter = Counter()
        self.active: Counter = Counter()
        self.peak: Counter = Counter()
        self.starts: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        self._httpd = _QuietServer((host, 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def count(self, counter_id: str) -> int:
        """Increment and return how often `counter_id` was requested."""
        with self._lock:
            self.hits[counter_id] += 1
            return self.hits[counter_id]

    def serve_forever(self) -> None:
        """Serve in the calling thread until the process ends."""
        self._httpd.serve_forever()

    def enter(self, counter_id: str) -> None:
        """Note a request of `counter_id` starting (its start time and peak concurrency)."""
        with self._lock:
            self.starts.setdefault(counter_id, []).append(time.monotonic())
            self.active[counter_id] += 1
            self.peak[counter_id] = max(self.peak[counter_id], self.active[counter_id])

    def leave(self, counter_id: str) -> None:
        with self._lock:
            self.active[counter_id] -= 1

    def start(self) -> CorpusServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> CorpusServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class StalledServer:
    """A server that accepts connections on `host` and never answers; a context manager."""

    def __init__(self, host: str = "127.0.0.1"):
        self._socket = socket.create_server((host, 0), backlog=256)
        self._connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._socket.getsockname()[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:  # closed by stop()
                return
            self._connections.append(connection)  # held open, never read, never answered

    def __enter__(self) -> StalledServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._socket.close()
        for connection in self._connections:
            connection.close()


class _QuietServer(ThreadingHTTPServer):
    """Clients of the fault routes hang up mid-response on purpose; log that, do not print it."""

    def handle_error(self, request, client_address) -> None:
        log.debug("request from %s ended with an error", client_address, exc_info=True)


def _make_handler(server: CorpusServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Buffer writes so headers and body leave in one segment: with unbuffered writes a
        # keep-alive client waits out Nagle's algorithm and delayed ACKs (~40 ms a request).
        wbufsize = 1 << 16

        def log_message(self, *args) -> None:  # keep test and demo output clean
            pass

        def do_GET(self) -> None:
            try:
                _route(self, server)
            except (BrokenPipeError, ConnectionResetError):
                pass

    return Handler


def _send(handler, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _send_image(handler, server: CorpusServer, name: str, headers: dict | None = None) -> None:
    data = server.images.get(name)
    if data is None:
        _send(handler, 404)
        return
    kind = _TYPES.get(name.rsplit(".", 1)[-1].lower(), "application/octet-stream")
    _send(handler, 200, data, {"Content-Type": kind, **(headers or {})})


def _route(handler: BaseHTTPRequestHandler, server: CorpusServer) -> None:
    url = urlsplit(handler.path)
    server.count(url.path)
    parts = url.path.strip("/").split("/")
    route, args = parts[0], parts[1:]
    if route in ("img", "private"):
        _send_image(handler, server, "/".join(args))
    elif route == "status":
        _send(handler, int(args[0]))
    elif route in ("flaky", "retry-after"):
        _flaky(handler, server, route, args)
    elif route == "slow":
        time.sleep(float(args[0]))
        _send_image(handler, server, "/".join(args[1:]))
    elif route == "truncated":
        _truncated(handler, server.images["/".join(args)])
    elif route == "html":
        _send(
            handler, 200, b"<html><body>Not an image</body></html>", {"Content-Type": "text/html"}
        )
    elif route == "huge":
        _stream_forever(handler)
    elif route == "robots-tag":
        _send_image(handler, server, "/".join(args[1:]), {"X-Robots-Tag": args[0]})
    elif route == "redirect":
        _send(handler, 302, b"", {"Location": parse_qs(url.query)["to"][0]})
    elif route == "redirect-loop":
        _send(handler, 302, b"", {"Location": "/redirect-loop"})
    elif route == "redirect-chain":
        hops, name = int(args[0]), "/".join(args[1:])
        target = f"/redirect-chain/{hops - 1}/{name}" if hops > 1 else f"/img/{name}"
        _send(handler, 302, b"", {"Location": target})
    elif route == "drip":
        _drip(handler, server.images["/".join(args[1:])], float(args[0]))
    elif route == "reset":
        _reset_mid_body(handler, server.images["/".join(args)])
    elif route == "concurrent":
        _concurrent(handler, server, args[0], "/".join(args[1:]))
    elif route == "robots.txt":
        _robots_txt(handler, server)
    else:
        _send(handler, 404)


def _flaky(handler, server: CorpusServer, route: str, args: list[str]) -> None:
    """`/flaky/ID/N/NAME` fails N times with 503 (`/retry-after/...`: 429 and Retry-After: 1)
    before serving the image; each ID counts its own requests."""
    counter_id, failures, name = args[0], int(args[1]), "/".join(args[2:])
    if server.count(f"{route}/{counter_id}") <= failures:
        headers = {"Retry-After": "1"} if route == "retry-after" else {}
        _send(handler, 429 if route == "retry-after" else 503, b"", headers)
    else:
        _send_image(handler, server, name)


def _truncated(handler, data: bytes) -> None:
    """Claim twice the body's length, send the body, hang up."""
    handler.send_response(200)
    handler.send_header("Content-Type", "image/jpeg")
    handler.send_header("Content-Length", str(len(data) * 2))
    handler.end_headers()
    handler.wfile.write(data)
    handler.close_connection = True


def _concurrent(handler, server: CorpusServer, group: str, name: str) -> None:
    """Serve the image after 0.2 s, noting each request of `group` (its start, the peak in flight)."""
    server.enter(group)
    try:
        time.sleep(0.2)
        _send_image(handler, server, name)
    finally:
        server.leave(group)


def _robots_txt(handler, server: CorpusServer) -> None:
    time.sleep(server.robots_delay)
    if server.robots_txt is None:
        _send(handler, 404)
    else:
        _send(handler, 200, server.robots_txt.encode(), {"Content-Type": "text/plain"})


def _drip(handler, data: bytes, interval: float) -> None:
    """Send the body 1 kB at a time, `interval` seconds apart (bounded: stops at the body's end)."""
    handler.send_response(200)
    handler.send_header("Content-Type", "image/jpeg")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.flush()
    for start in range(0, len(data), 1024):
        handler.wfile.write(data[start : start + 1024])
        handler.wfile.flush()
        time.sleep(interval)


def _reset_mid_body(handler, data: bytes) -> None:
    """Promise the whole body, send half, then abort the connection with a TCP RST."""
    handler.send_response(200)
    handler.send_header("Content-Type", "image/jpeg")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data[: len(data) // 2])
    handler.wfile.flush()
    handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    handler.connection.close()
    handler.close_connection = True


def _stream_forever(handler) -> None:
    """An image body that never ends; the client must stop at its size cap."""
    handler.send_response(200)
    handler.send_header("Content-Type", "image/jpeg")
    handler.send_header("Connection", "close")
    handler.end_headers()
    handler.close_connection = True
    chunk = b"\xff" * 65536
    for _ in range(100_000):  # bounded: 6.5 GB at most, far past any cap
        handler.wfile.write(chunk)


def main(argv: list[str] | None = None) -> None:
    """Serve every file of a folder under /img/ until killed (for benchmarks in other processes)."""
    parser = argparse.ArgumentParser(description="serve a folder of images on 127.0.0.1")
    parser.add_argument("--folder", required=True)
    parser.add_argument("--url-file", help="write the base URL here once listening")
    args = parser.parse_args(argv)
    images = {p.name: p.read_bytes() for p in Path(args.folder).iterdir() if p.is_file()}
    server = CorpusServer(images)
    if args.url_file:
        Path(args.url_file).write_text(server.base_url)
    server.serve_forever()


if __name__ == "__main__":
    main()
