"""The front of the embedded Hub: what stock clients ask that olah does not answer, then olah for the rest.

``kernel-loader hub serve`` puts this small HTTP server on the public port and olah behind it on a private
loopback port. It answers two things itself and forwards every other request unchanged (streamed, redirects
pointed back at the front):

- ``GET /api/organizations/<org>/overview``: the publisher-trust check of the stock ``kernels`` client (and of
  transformers through it). olah answers 401. The front answers ``trustedKernelPublisher: true`` for the orgs the
  Hub's administrator marks trusted, ``false`` for other orgs that have repos here, 404 otherwise. Trusted orgs
  come from ``--trusted-org ORG`` and from the file ``<root>/trusted-orgs`` (one org per line, ``#`` comments),
  re-read on every request so an administrator can change it without a restart.
- revisions spelled as full ref names: ``kernels versions`` asks for ``refs/heads/v1`` (the ``ref`` of a listed
  branch), which olah cannot resolve (401). ``refs/heads/NAME`` and ``refs/tags/NAME`` in a revision segment are
  forwarded as ``NAME``; olah then resolves it as it resolves any name, so when a branch and a tag share a name,
  the one olah (GitPython) picks is used.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

TRUSTED_ORGS_FILE = "trusted-orgs"
_ORG_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?\Z")
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection", "host",
        "content-length"}
_OVERVIEW_RE = re.compile(r"^/api/organizations/([^/?]+)/overview/?(?:\?.*)?\Z")
# A revision segment written as a full ref name, URL-encoded as clients send it (and as plain text, defensively).
_FULL_REF_RE = re.compile(r"(/(?:resolve|tree|revision|paths-info)/)refs(?:%2F|/)(?:heads|tags)(?:%2F|/)",
                          re.IGNORECASE)


def check_org(name: str, *, where: str) -> str:
    if not isinstance(name, str) or not _ORG_RE.match(name) or "--" in name or ".." in name:
        raise ValueError(f"{where}: {name!r} is not an org name (letters, digits, '-', '_', '.', starting and "
                         "ending with a letter or digit, no '--' or '..')")
    return name


def read_trusted_orgs(root: Path) -> set[str]:
    """Orgs listed in ``<root>/trusted-orgs``; a malformed line is a ValueError naming it."""
    path = Path(root) / TRUSTED_ORGS_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return set()
    out = set()
    for i, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if line:
            out.add(check_org(line, where=f"{path} line {i}"))
    return out


def rewrite_full_refs(path: str) -> str:
    """``/api/kernels/o/n/tree/refs%2Fheads%2Fv1/build`` -> ``/api/kernels/o/n/tree/v1/build``."""
    return _FULL_REF_RE.sub(r"\1", path)


@dataclass
class HubFront:
    root: Path
    upstream_port: int
    trusted_orgs: frozenset[str] = frozenset()
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port
    _server: ThreadingHTTPServer | None = field(default=None, repr=False)

    def trusted(self) -> set[str]:
        try:
            from_file = read_trusted_orgs(self.root)
        except (OSError, ValueError):
            from_file = set()  # a file being edited must not make the Hub fail; `hub serve` checked it at start
        return set(self.trusted_orgs) | from_file

    def overview(self, org: str) -> tuple[int, dict]:
        if not _ORG_RE.match(org):
            return 404, {"error": f"Organization {org!r} not found"}
        trusted = org in self.trusted()
        if not trusted and not (self.root / "kernels" / org).is_dir():
            return 404, {"error": f"Organization {org!r} not found"}
        return 200, {"name": org, "fullname": org, "avatarUrl": "", "isVerified": False,
                     "trustedKernelPublisher": trusted}

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.server_port}"

    @property
    def server_port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> "HubFront":
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                self._handle("GET")

            def do_HEAD(self):
                self._handle("HEAD")

            def _handle(self, method: str) -> None:
                m = _OVERVIEW_RE.match(self.path)
                if m is not None:
                    from urllib.parse import unquote

                    status, body = front.overview(unquote(m.group(1)))
                    data = json.dumps(body).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if method == "GET":
                        self.wfile.write(data)
                    return
                self._forward(method, rewrite_full_refs(self.path))

            def _forward(self, method: str, path: str) -> None:
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", front.upstream_port, timeout=300)
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                    conn.request(method, path, headers=headers)
                    resp = conn.getresponse()
                except (OSError, http.client.HTTPException):
                    self.send_response(502)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                try:
                    self.send_response(resp.status)
                    upstream = f"127.0.0.1:{front.upstream_port}"
                    for k, v in resp.getheaders():
                        if k.lower() in _HOP:
                            continue
                        if k.lower() == "location":
                            v = v.replace(upstream, f"{front.host}:{front.server_port}")
                        self.send_header(k, v)
                    length = resp.getheader("content-length")
                    if method == "HEAD" or resp.status in (204, 304):
                        self.send_header("Content-Length", length or "0")
                        self.end_headers()
                        return
                    if length is not None:
                        self.send_header("Content-Length", length)
                    else:
                        self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    while chunk := resp.read(1 << 20):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if length is None else chunk)
                    if length is None:
                        self.wfile.write(b"0\r\n\r\n")
                except (OSError, http.client.HTTPException):
                    self.close_connection = True  # client or upstream gone mid-answer: the client sees a cut
                finally:
                    conn.close()

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="hub-front", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
