"""Checks on bytes and names that come from outside (a Hub, a lock file, a bundle) before we act on them.

Everything here raises ``ValueError`` naming the input and saying what is valid; callers on the load path turn
that into :class:`KernelUnavailable`. A hostile Hub controls metadata.json, tree listings and file contents, so a
name is only ever used after :func:`safe_relpath` accepted it, and a module name only after :func:`check_metadata`.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from . import _kernels
from .spec import is_commit

MAX_METADATA_BYTES = 1 << 20  # real metadata.json files are a few KiB
MAX_PATH_CHARS = 512
# Our builds write _<python name>_<backend>_<rev> (kernel_loader/build/variant.py: ops_id_for); kernel-builder's
# ids have the same leading underscore. Requiring it keeps ids out of the namespace of importable top-level modules.
_BUILD_ID_RE = re.compile(r"^_[A-Za-z0-9]+(?:_[A-Za-z0-9]+)+\Z")
_BUILD_ID_MAX = 200
_B64_RE = re.compile(r"^[A-Za-z0-9+/]{42,86}={0,2}\Z")


def safe_relpath(name: object, *, what: str) -> str:
    """Return ``name`` if it is a plain relative POSIX path that stays inside its folder, else raise ValueError."""
    rule = "a relative path of '/'-separated names without '..', '.', empty parts, backslashes or control characters"
    if not isinstance(name, str):
        raise ValueError(f"{what}: path {name!r} is a {type(name).__name__}, expected {rule}")
    if not name or len(name) > MAX_PATH_CHARS:
        raise ValueError(f"{what}: path {name[:80]!r} is empty or longer than {MAX_PATH_CHARS} characters")
    if name.startswith("/") or "\\" in name or re.match(r"^[A-Za-z]:", name):
        raise ValueError(f"{what}: path {name!r} is absolute or uses backslashes; expected {rule}")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError(f"{what}: path {name!r} contains control characters; expected {rule}")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{what}: path {name!r} has an empty, '.' or '..' part; expected {rule}")
    return name


def check_commit(value: object, *, what: str) -> str:
    if not is_commit(value):
        raise ValueError(f"{what}: commit {value!r} is not 40 lowercase hex digits")
    return value


def check_digest_files(files: object, *, what: str) -> dict[str, str]:
    """A digest's ``files`` map: safe relative names -> base64 sha256/sha512."""
    if not isinstance(files, dict) or not files:
        raise ValueError(f"{what}: digest files must be a non-empty object of path -> base64 hash, got {files!r:.80}")
    for name, value in files.items():
        safe_relpath(name, what=what)
        if name == "metadata.json":
            raise ValueError(f"{what}: digest lists metadata.json, which cannot contain its own hash")
        if not isinstance(value, str) or not _B64_RE.match(value):
            raise ValueError(f"{what}: digest of {name!r} is {value!r:.80}, expected base64 sha256 or sha512")
    return dict(files)


def check_metadata(raw: bytes, *, where: str):
    """Parse a variant's metadata.json as the `kernels` library does, then refuse what we cannot use safely:
    a build id that is not a plain module name (it becomes ``sys.modules[id]``) and digest paths that leave the
    variant folder. Returns the `kernels` library's ``Metadata``."""
    if len(raw) > MAX_METADATA_BYTES:
        raise ValueError(f"{where}: metadata.json is {len(raw)} bytes; at most {MAX_METADATA_BYTES} are accepted")
    try:
        meta = _kernels.Metadata.from_bytes(raw)
    except (ValueError, OverflowError, TypeError) as e:
        raise ValueError(f"{where}: metadata.json is invalid ({one_line(e)})") from None
    check_build_id(meta.id, where=where)
    if meta.digest is not None:
        check_digest_files(dict(meta.digest.files), what=f"{where}: metadata.json")
    return meta


def one_line(e: BaseException) -> str:
    """An exception's whole message on one line (the kernels parser spreads its rules over several lines)."""
    text = " ".join(part.strip() for part in str(e).splitlines() if part.strip())
    return text or type(e).__name__


def sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def file_sha256_b64(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return base64.b64encode(h.digest()).decode()


def check_build_id(name: object, *, where: str) -> str:
    """A metadata.json ``id``: the shape our builds write, and no module Python could import by that name."""
    import importlib.util
    import sys

    rule = ("'_<name>_<backend>_<rev>' (a leading underscore, letters and digits in '_'-separated parts, e.g. "
            "'_flash_attn2_cpu_1a2b3c4')")
    if not isinstance(name, str) or len(name) > _BUILD_ID_MAX or not _BUILD_ID_RE.match(name):
        raise ValueError(f"{where}: metadata.json id {name!r:.80} is not a kernel build id; expected {rule}")
    if name in sys.builtin_module_names or name in getattr(sys, "stdlib_module_names", ()):
        raise ValueError(f"{where}: metadata.json id {name!r} is the name of a standard-library module; expected {rule}")
    if name not in sys.modules:
        try:
            found = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            found = None
        if found is not None:
            raise ValueError(f"{where}: metadata.json id {name!r} would shadow the importable module at "
                             f"{found.origin or found.name}; expected a build id no other module uses")
    return name
