"""Bounded reads from a Hub: JSON answers with a byte cap, and file downloads into a path we choose.

huggingface_hub's download helpers build cache paths from what the server answers (the ETag becomes the blob
name, X-Repo-Commit the snapshot folder) and read listings and files without a size bound. For code we import,
the Hub is not trusted, so kernel_loader makes its Hub requests here, on huggingface_hub's own HTTP session and
headers (proxies, token, user agent and offline mode behave as everywhere else):

- :func:`get_json` reads at most ``max_bytes`` of an answer and parses it; a longer one is refused unread;
- :func:`download` streams one file into a temp file beside the destination we name, stops at the size the listing
  declared (a longer answer is refused), checks the bytes against the blob id the listing gave (git blob sha1, or
  the LFS sha256), and only then renames it into place;
- errors come out as :class:`HubStatus` (the Hub answered an HTTP error), :class:`HubUnreachable` (no answer:
  connection, timeout, cut transfer, 502/503/504 from a gateway) or ``ValueError`` (an answer we refuse).

Retries: a transport error, a cut or corrupted transfer, 429 and 502-504 are retried twice with a short backoff;
other statuses are answers and are not retried (a 500 is the Hub's own error, and waiting does not fix it).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlparse

_RETRY_STATUS = (429, 502, 503, 504)
_ATTEMPTS = 3
_CHUNK = 1 << 20


class HubStatus(Exception):
    """The Hub answered ``status`` for ``url``."""

    def __init__(self, status: int, url: str):
        super().__init__(f"HTTP {status} for {url}")
        self.status, self.url = status, url

    @property
    def server_error(self) -> bool:
        return self.status >= 500 and self.status not in _RETRY_STATUS


class HubUnreachable(Exception):
    """No usable answer: connection refused, timeout, a transfer cut short, or a gateway status."""


@dataclass
class Traffic:
    """Bytes received from the Hub by this process (for reports and tests)."""

    bytes: int = 0
    requests: int = 0


traffic = Traffic()


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")


def api_url(repo_id: str, *parts: str) -> str:
    """``{endpoint}/api/kernels/{repo_id}/...`` with each part quoted as one path segment (``/`` kept in paths)."""
    return "/".join([endpoint(), "api", "kernels", repo_id, *parts])


def file_url(repo_id: str, commit: str, path: str) -> str:
    return f"{endpoint()}/kernels/{repo_id}/resolve/{commit}/{quote(path)}"


def _headers() -> dict[str, str]:
    from huggingface_hub.utils import build_hf_headers

    from ._version import __version__
    from .hub_client import LIBRARY_NAME

    return build_hf_headers(library_name=LIBRARY_NAME, library_version=__version__)


def _timeout(download: bool):
    import httpx2
    from huggingface_hub import constants

    read = float(constants.HF_HUB_DOWNLOAD_TIMEOUT if download else max(constants.HF_HUB_ETAG_TIMEOUT, 10))
    return httpx2.Timeout(read, connect=read)


def _transport_errors() -> tuple[type[BaseException], ...]:
    import httpx2

    return (httpx2.RequestError, httpx2.StreamError)


def _same_origin(url: str) -> bool:
    a, b = urlparse(url), urlparse(endpoint())
    return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)


def _wait(attempt: int, response=None) -> None:
    delay = 0.5 * (2 ** attempt)
    if response is not None:
        try:
            delay = min(float(response.headers.get("retry-after", delay)), 10.0)
        except ValueError:
            pass
    time.sleep(max(delay, 0.0))


def _stream(url: str, *, download: bool):
    from huggingface_hub.utils import get_session

    traffic.requests += 1
    return get_session().stream("GET", url, headers=_headers(), timeout=_timeout(download), follow_redirects=True)


def get_json(url: str, *, max_bytes: int, what: str):
    """(parsed JSON, next-page URL or None) of a GET; at most ``max_bytes`` are read."""
    for attempt in range(_ATTEMPTS):
        last = attempt == _ATTEMPTS - 1
        try:
            with _stream(url, download=False) as r:
                if r.status_code in _RETRY_STATUS and not last:
                    _wait(attempt, r)
                    continue
                if r.status_code >= 400:
                    raise (HubUnreachable(f"HTTP {r.status_code}") if r.status_code in _RETRY_STATUS
                           else HubStatus(r.status_code, url))
                declared = r.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                    raise ValueError(f"{what}: the Hub's answer is {declared} bytes; at most {max_bytes} are read")
                body = bytearray()
                for chunk in r.iter_bytes(_CHUNK):
                    body += chunk
                    traffic.bytes += len(chunk)
                    if len(body) > max_bytes:
                        raise ValueError(f"{what}: the Hub's answer is over {max_bytes} bytes; refused unread")
                nxt = r.links.get("next", {}).get("url")
        except _transport_errors() as e:
            if last:
                raise HubUnreachable(type(e).__name__) from None
            _wait(attempt)
            continue
        try:
            data = json.loads(bytes(body))
        except (ValueError, RecursionError):
            raise ValueError(f"{what}: the Hub's answer is not JSON ({bytes(body[:60])!r})") from None
        if nxt is not None and not _same_origin(nxt):
            raise ValueError(f"{what}: the Hub's next-page link {nxt[:120]!r} leaves {endpoint()}; refused")
        return data, nxt
    raise HubUnreachable("no answer")  # not reached


def list_folder(repo_id: str, commit: str, folder: str, *, recursive: bool, max_entries: int, max_bytes: int,
                what: str) -> list:
    """Raw entries of the tree listing of ``folder`` at ``commit``, pages followed, at most ``max_entries``
    (one more and it is refused: the caller's limits decide, not the Hub's length)."""
    url = api_url(repo_id, "tree", commit, quote(folder)) + ("?recursive=true" if recursive else "")
    out: list = []
    budget = max_bytes
    while url is not None:
        page, url = get_json(url, max_bytes=budget, what=what)
        if not isinstance(page, list):
            raise ValueError(f"{what}: the Hub's tree listing is a {type(page).__name__}, expected a list")
        out.extend(page)
        if len(out) > max_entries:
            raise ValueError(f"{what}: the Hub's listing has more than {max_entries} entries, the limit "
                             "(KERNEL_LOADER_MAX_FILES sets it); refused before any download")
        budget -= len(json.dumps(page))
        if budget <= 0:
            raise ValueError(f"{what}: the Hub's tree listing is over {max_bytes} bytes; refused")
    return out


def _git_blob_sha1(size: int):
    h = hashlib.sha1()
    h.update(b"blob %d\0" % size)
    return h


def download(url: str, dest: Path, *, size: int, blob_id: str, lfs: bool, what: str) -> None:
    """Stream ``url`` into ``dest`` (a path the caller built and checked): at most ``size`` bytes, which must match
    ``blob_id``; written to a temp file in ``dest``'s folder and renamed, so ``dest`` is whole or absent."""
    for attempt in range(_ATTEMPTS):
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name[:16]}.", suffix=".incomplete")
        try:
            with os.fdopen(fd, "wb") as f:
                done = _get_once(url, f, size=size, blob_id=blob_id, lfs=lfs, what=what, attempt=attempt)
                if done:
                    f.flush()
                    os.fsync(f.fileno())
            if done:
                os.replace(tmp, dest)
                return
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise HubUnreachable(f"{what}: no complete transfer after {_ATTEMPTS} attempts")


def fetch_bytes(url: str, *, size: int, blob_id: str, lfs: bool, what: str) -> bytes:
    """A small file (metadata.json, ``size`` already bounded by the caller) in memory, checked like :func:`download`;
    nothing is written to disk."""
    for attempt in range(_ATTEMPTS):
        buf = io.BytesIO()
        if _get_once(url, buf, size=size, blob_id=blob_id, lfs=lfs, what=what, attempt=attempt):
            return buf.getvalue()
    raise HubUnreachable(f"{what}: no complete transfer after {_ATTEMPTS} attempts")


def _get_once(url, out, *, size, blob_id, lfs, what, attempt) -> bool:
    """One GET into ``out``. True when complete and matching ``blob_id``; False to try again; raises when this
    was the last attempt or the answer is refused."""
    last = attempt == _ATTEMPTS - 1
    digest = hashlib.sha256() if lfs else _git_blob_sha1(size)
    got = 0
    try:
        with _stream(url, download=True) as r:
            if r.status_code in _RETRY_STATUS and not last:
                _wait(attempt, r)
                return False
            if r.status_code >= 400:
                raise (HubUnreachable(f"HTTP {r.status_code}") if r.status_code in _RETRY_STATUS
                       else HubStatus(r.status_code, url))
            declared = r.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > size:
                raise ValueError(f"{what}: the Hub sends {declared} bytes for {url.rsplit('/', 1)[-1]!r} but its "
                                 f"listing says {size}; refused before reading")
            for chunk in r.iter_bytes(_CHUNK):
                got += len(chunk)
                traffic.bytes += len(chunk)
                if got > size:
                    raise ValueError(f"{what}: the Hub sent more than the {size} bytes its listing declares for "
                                     f"{url.rsplit('/', 1)[-1]!r}; refused")
                digest.update(chunk)
                out.write(chunk)
    except _transport_errors() as e:
        if last:
            raise HubUnreachable(f"{type(e).__name__} after {got} of {size} bytes") from None
        _wait(attempt)
        return False
    if got < size:
        if last:
            raise HubUnreachable(f"transfer ended after {got} of {size} bytes")
        return False
    if digest.hexdigest() != blob_id:
        if last:
            raise ValueError(f"{what}: the bytes received for {url.rsplit('/', 1)[-1]!r} do not match the blob id "
                             f"{blob_id} the Hub lists ({'sha256' if lfs else 'git sha1'} {digest.hexdigest()})")
        return False
    return True
