"""A local threaded HTTP file server for tests, with Range support and fault injection.

    with FileServer(root) as server:          # 127.0.0.1, a free port
        url = server.url("corpus.tar.gz")     # serves root/corpus.tar.gz
        server.fail_next(2, status=500)       # the next 2 requests get a 500
        server.cut_after(4096)                # next body: full Content-Length, 4096 bytes sent
        ...
        [r.range for r in server.requests]    # the Range header of every request, in order

Single-range ``Range: bytes=A-B`` / ``bytes=A-`` / ``bytes=-N`` requests get a 206 with
Content-Range; a start past the end gets a 416 with ``Content-Range: bytes */SIZE``; other
Range forms are ignored (200). A plain module: import it from any test.
"""
from __future__ import annotations

import re
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass
class RequestRecord:
    """One request as the server saw it, and what it answered."""
    method: str
    path: str
    range: str | None
    status: int = 0


class FileServer:
    """Serve the files under ``root`` on 127.0.0.1 with knobs to inject faults.

    Knobs apply to the coming requests in order and are used up as they are applied:
    ``fail_next`` answers with an error status, ``cut_after`` truncates the next body,
    ``stall_next`` sleeps before answering, ``ignore_range`` answers 200 to Range requests.
    """

    def __init__(self, root: str | Path, host: str = "127.0.0.1"):
        self.root = Path(root)
        self.host = host
        self.requests: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._fail: list[int] = []
        self._cut: list[int] = []
        self._stall: list[float] = []
        self._ignore_range = False
        self._httpd: _QuietServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle
    def start(self) -> "FileServer":
        handler = type("_BoundHandler", (_Handler,), {"owner": self})
        self._httpd = _QuietServer((self.host, 0), handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True,
                                        kwargs={"poll_interval": 0.05})
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = None

    def __enter__(self) -> "FileServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def url(self, name: str) -> str:
        """URL of ``root/name``."""
        return f"http://{self.host}:{self.port}/{quote(name)}"

    # -- knobs
    def fail_next(self, n: int = 1, status: int = 500) -> None:
        """Answer the next ``n`` requests with ``status`` (an empty error body)."""
        with self._lock:
            self._fail.extend([status] * n)

    def cut_after(self, nbytes: int, times: int = 1) -> None:
        """On the next ``times`` body responses, send a correct Content-Length header but
        only ``nbytes`` of the body, then close the connection."""
        with self._lock:
            self._cut.extend([nbytes] * times)

    def stall_next(self, seconds: float, n: int = 1) -> None:
        """Sleep ``seconds`` before answering each of the next ``n`` requests."""
        with self._lock:
            self._stall.extend([seconds] * n)

    def ignore_range(self, flag: bool = True) -> None:
        """While set, answer Range requests with a plain 200 and the whole file."""
        with self._lock:
            self._ignore_range = flag

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.requests]

    @property
    def ranges(self) -> list[str | None]:
        return [r.range for r in self.requests]

    # -- used by the handler
    def _take(self, queue: list):
        with self._lock:
            return queue.pop(0) if queue else None

    def _record(self, method: str, path: str, rng: str | None) -> RequestRecord:
        rec = RequestRecord(method, path, rng)
        with self._lock:
            self.requests.append(rec)
        return rec


class _QuietServer(ThreadingHTTPServer):
    """Threads die with the test; a client that hung up (after a stall or cut) is no error."""
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    owner: FileServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        owner = self.owner
        rec = owner._record(self.command, self.path, self.headers.get("Range"))
        stall = owner._take(owner._stall)
        if stall:
            time.sleep(stall)
        status = owner._take(owner._fail)
        if status:
            return self._empty(rec, status)
        path = owner.root / unquote(urlsplit(self.path).path).lstrip("/")
        if not path.is_file() or owner.root.resolve() not in path.resolve().parents:
            return self._empty(rec, 404)
        data = path.read_bytes()
        start, end = 0, len(data)
        rng = None if owner._ignore_range else _parse_range(rec.range, len(data))
        if rng == "unsatisfiable":
            return self._empty(rec, 416, {"Content-Range": f"bytes */{len(data)}"})
        if rng:
            start, end = rng
        rec.status = 206 if rng else 200
        self.send_response(rec.status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        if body:
            self._send_body(data[start:end])

    def _send_body(self, payload: bytes) -> None:
        cut = self.owner._take(self.owner._cut)
        if cut is None:
            self.wfile.write(payload)
            return
        self.wfile.write(payload[:cut])
        self.wfile.flush()
        self.close_connection = True

    def _empty(self, rec: RequestRecord, status: int, headers: dict | None = None) -> None:
        rec.status = status
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()



def _parse_range(header: str | None, size: int):
    """(start, end) for a single satisfiable byte range, "unsatisfiable", or None to ignore."""
    m = _RANGE.match(header.strip()) if header else None
    if not m or (not m.group(1) and not m.group(2)):
        return None
    first, last = m.group(1), m.group(2)
    if not first:  # suffix: the last N bytes
        n = int(last)
        return (max(size - n, 0), size) if n else "unsatisfiable"
    start = int(first)
    if start >= size:
        return "unsatisfiable"
    end = min(int(last) + 1, size) if last else size
    return (start, end) if end > start else None
