"""A fault-injecting HTTP proxy on loopback, placed between the Hub client (huggingface_hub) and olah.

It forwards every request to the upstream Hub with ``http.client`` and logs it (method, path, status, bytes), which
is also how the concurrency test counts downloads per file. Faults are armed per request pattern and fire a given
number of times, so a test can check both the error and the retry that follows:

- ``truncate``: send the real headers (full Content-Length), then half the body, then close;
- ``flip``: flip one byte in the middle of the body (same length, so only a digest check can notice);
- ``stall``: send the headers and a few bytes, then go silent for ``stall_s`` seconds;
- ``status``: answer ``code`` (500, 429, ...) with a short body, never reaching upstream;
- ``throttle``: stream the body in small chunks with a pause (to kill the upstream mid-transfer).

And the lies a hostile Hub (or mirror) can tell, for the containment and bounds tests:

- ``headers``: forward, but set the given response headers (``ETag: "/abs/path"``, ``X-Repo-Commit: ../..``);
- ``rewrite``: forward, but replace the body by ``transform(body)`` (a tree listing with extra or hostile entries);
- ``serve``: answer 200 with ``body()`` (an iterator of chunks, e.g. 1 GiB generated on the fly, never held in
  memory) and ``length`` (None: chunked), never reaching upstream.
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection", "host"}


@dataclass
class Fault:
    kind: str  # truncate | flip | stall | status | throttle
    match: object  # substring of the request path, or a compiled regex searched in it
    times: int = 1  # how many matching requests it hits (then it is spent)
    method: str = "GET"  # or "*" for GET and HEAD
    code: int = 500
    stall_s: float = 30.0
    headers: dict | None = None  # headers: set on the response
    transform: object = None  # rewrite: callable(bytes) -> bytes
    body: object = None  # serve: callable() -> iterator of bytes
    length: int | None = None  # serve: Content-Length (None: chunked)
    fired: int = 0


@dataclass
class LogRow:
    method: str
    path: str
    status: int
    bytes: int
    fault: str | None = None


@dataclass
class FaultProxy:
    upstream_port: int
    faults: list[Fault] = field(default_factory=list)
    log: list[LogRow] = field(default_factory=list)
    on_body_chunk: object = None  # callable(bytes_sent) during throttled transfers
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def arm(self, kind: str, match: str, **kw) -> Fault:
        f = Fault(kind, match, **kw)
        with self._lock:
            self.faults.append(f)
        return f

    def _take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for f in self.faults:
                hit = f.match.search(path) if hasattr(f.match, "search") else f.match in path
                if f.method in (method, "*") and hit and f.fired < f.times:
                    f.fired += 1
                    return f
        return None

    def _record(self, row: LogRow) -> None:
        with self._lock:
            self.log.append(row)

    def downloads(self) -> dict[str, int]:
        """GET /resolve/ requests per path that were answered 2xx (one per file actually downloaded)."""
        out: dict[str, int] = {}
        for r in list(self.log):
            if r.method == "GET" and "/resolve/" in r.path and 200 <= r.status < 300:
                out[r.path] = out.get(r.path, 0) + 1
        return out

    def start(self) -> "FaultProxy":
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                self._forward("GET")

            def do_HEAD(self):
                self._forward("HEAD")

            def _forward(self, method: str) -> None:
                fault = proxy._take(method, self.path)
                if fault is not None and fault.kind == "status":
                    body = f"injected {fault.code}".encode()
                    # Logged before answering: the client may finish (and a test read the log) before this
                    # handler thread runs another line.
                    proxy._record(LogRow(method, self.path, fault.code, len(body), "status"))
                    self.send_response(fault.code)
                    self.send_header("Content-Length", str(len(body)))
                    self.send_header("Retry-After", "0")
                    self.end_headers()
                    if method != "HEAD":
                        self.wfile.write(body)
                    return
                if fault is not None and fault.kind == "serve":
                    self._serve(method, fault)
                    return
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                    conn.request(method, self.path, headers=headers)
                    resp = conn.getresponse()
                    status, rheaders = resp.status, resp.getheaders()
                    body = resp.read() if fault is None or fault.kind != "throttle" else None
                except (OSError, http.client.HTTPException):
                    self.send_response(502)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    proxy._record(LogRow(method, self.path, 502, 0, "upstream down"))
                    return
                kind = fault.kind if fault else None
                if kind == "rewrite" and body is not None:
                    body = fault.transform(body)
                if kind == "headers":
                    names = {n.lower() for n in fault.headers}
                    rheaders = [(k, v) for k, v in rheaders if k.lower() not in names] + list(fault.headers.items())
                self.send_response(status)
                length = None
                for k, v in rheaders:
                    lk = k.lower()
                    if lk in _HOP or lk == "content-length":
                        if lk == "content-length":
                            length = int(v)
                        continue
                    if lk == "location":
                        v = v.replace(f"127.0.0.1:{proxy.upstream_port}", f"127.0.0.1:{proxy.port}")
                    self.send_header(k, v)
                if body is not None and method != "HEAD":
                    length = len(body)
                chunked = body is None and length is None  # streamed without a known size: chunk it on
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Content-Length", str(length or 0))
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                if method == "HEAD":
                    proxy._record(LogRow(method, self.path, status, 0, kind))
                    return
                try:
                    if kind == "throttle":
                        sent = 0
                        try:
                            while chunk := resp.read(64 << 10):
                                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                                sent += len(chunk)
                                if proxy.on_body_chunk:
                                    proxy.on_body_chunk(sent)
                                time.sleep(0.02)
                            if chunked:
                                self.wfile.write(b"0\r\n\r\n")
                        except http.client.HTTPException:  # upstream died mid-body: cut ours too
                            proxy._record(LogRow(method, self.path, status, sent, "upstream died"))
                            return
                        proxy._record(LogRow(method, self.path, status, sent, kind))
                        return
                    if kind == "truncate":
                        self.wfile.write(body[: len(body) // 2])
                    elif kind == "flip":
                        b = bytearray(body)
                        if b:
                            b[len(b) // 2] ^= 0xFF
                        self.wfile.write(bytes(b))
                    elif kind == "stall":
                        self.wfile.write(body[:1])
                        self.wfile.flush()
                        time.sleep(fault.stall_s)
                    else:
                        self.wfile.write(body)
                    proxy._record(LogRow(method, self.path, status, len(body), kind))
                except OSError:
                    proxy._record(LogRow(method, self.path, status, -1, kind or "client gone"))

            def _serve(self, method: str, fault: Fault) -> None:
                self.send_response(200)
                for k, v in (fault.headers or {}).items():
                    self.send_header(k, v)
                if fault.length is None:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Content-Length", str(fault.length))
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                sent = 0
                try:
                    if method != "HEAD":
                        for chunk in fault.body():
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if fault.length is None else chunk)
                            sent += len(chunk)
                        if fault.length is None:
                            self.wfile.write(b"0\r\n\r\n")
                except OSError:  # the client refused the rest: what it took is what was sent
                    pass
                proxy._record(LogRow(method, self.path, 200, sent, "serve"))

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
