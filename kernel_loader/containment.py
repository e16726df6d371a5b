"""What a Hub may make us write, checked before the first byte: names, listings, sizes, build ids.

A Hub (or a mirror, or anything between) controls every name and number it sends: tree listings, file sizes,
blob ids, headers. Nothing here trusts them. The rules, each a pure function raising ``ValueError`` that names the
value and says what is valid:

- every path we write is one *we* build (``blobs/<hex id>``, ``snapshots/<40-hex commit>/build/<variant>/<safe
  relative path>``) and still resolves inside the repo's cache folder after symlinks (:func:`check_inside`);
  no header value (ETag, X-Repo-Commit) is ever part of a path;
- a variant folder name is one the ``kernels`` library parses and a single path component
  (:func:`check_variant_name`);
- a listing entry names a file under the folder that was asked for, with an integer size and a hex blob id
  (:func:`listed_file`);
- before any file other than metadata.json is downloaded, the listing must hold exactly metadata.json plus the
  files its digest names, each within :class:`Limits` (:func:`plan_variant`);
- a build id (it becomes ``sys.modules[id]``) has the shape our builds write, ``_<name>_<backend>_<rev>``, and
  names no module Python could import otherwise (:func:`kernel_loader.integrity.check_build_id`, applied to every
  metadata.json that is parsed).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .integrity import MAX_METADATA_BYTES, safe_relpath

_HEX_ID_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})\Z")


@dataclass(frozen=True)
class Limits:
    """Upper bounds on what one variant download may cost; env overrides for unusual kernels."""

    file_bytes: int = 4 << 30  # one file (a fat CUDA binary is a few hundred MB)
    variant_bytes: int = 16 << 30  # all files of one variant
    files: int = 4096  # files in one variant (real ones have a handful)
    metadata_bytes: int = MAX_METADATA_BYTES
    listing_bytes: int = 4 << 20  # JSON of one tree listing (4,096 entries take about 1 MiB)

    @classmethod
    def from_env(cls) -> "Limits":
        d = cls()
        return cls(file_bytes=_env_int("KERNEL_LOADER_MAX_FILE_BYTES", d.file_bytes),
                   variant_bytes=_env_int("KERNEL_LOADER_MAX_VARIANT_BYTES", d.variant_bytes),
                   files=_env_int("KERNEL_LOADER_MAX_FILES", d.files))


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{name}={raw!r} must be a positive integer")
    return int(raw)


@dataclass(frozen=True)
class ListedFile:
    """One file of a Hub tree listing, after validation."""

    path: str  # relative to the folder that was listed, e.g. 'impl.py' or 'sub/x.py'
    size: int
    blob_id: str  # git blob sha1 (40 hex), or the LFS sha256 (64 hex) when lfs is set
    lfs: bool = False


def check_hex_id(value: object, *, what: str) -> str:
    if not isinstance(value, str) or not _HEX_ID_RE.match(value):
        raise ValueError(f"{what}: blob id {value!r:.80} is not 40 or 64 lowercase hex digits")
    return value


def check_variant_name(name: object, *, where: str) -> str:
    """A variant folder name from a listing: one path component the kernels library parses as a variant."""
    from kernels.variants import parse_variant

    rule = ("a build variant folder name such as torch213-cxx11-cpu-x86_64-linux, "
            "torch-stable-abi210-cu130-x86_64-linux or torch-cpu")
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        raise ValueError(f"{where}: variant folder name {name!r:.80} is not a valid variant; expected {rule}")
    try:
        safe_relpath(name, what=where)
        parse_variant(name)
    except Exception:
        raise ValueError(f"{where}: variant folder name {name!r:.80} is not a valid variant; expected {rule}") from None
    return name


def listed_file(item: object, *, folder: str, where: str) -> ListedFile | None:
    """Validate one entry of a recursive listing of ``folder`` (e.g. 'build/torch-cpu'); None for sub-folders."""
    if not isinstance(item, dict):
        raise ValueError(f"{where}: listing entry {item!r:.80} is not an object")
    kind, path = item.get("type"), item.get("path")
    if not isinstance(path, str) or not path.startswith(folder + "/"):
        raise ValueError(f"{where}: listing entry path {path!r:.120} is not inside {folder}/")
    rel = safe_relpath(path[len(folder) + 1:], what=f"{where}: listing entry {path!r:.120}")
    if kind == "directory":
        return None
    if kind != "file":
        raise ValueError(f"{where}: listing entry {path!r:.120} has type {kind!r:.40}; expected 'file' or 'directory'")
    size, lfs = item.get("size"), item.get("lfs")
    if lfs is not None:
        if not isinstance(lfs, dict):
            raise ValueError(f"{where}: listing entry {path!r:.120} has a malformed lfs field {lfs!r:.80}")
        blob = check_hex_id(lfs.get("oid", lfs.get("sha256")), what=f"{where}: {path!r:.120} (lfs)")
        size = lfs.get("size", size)
    else:
        blob = check_hex_id(item.get("oid"), what=f"{where}: {path!r:.120}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"{where}: listing entry {path!r:.120} has size {size!r:.40}; expected an integer >= 0")
    if lfs is not None and len(blob) != 64:
        raise ValueError(f"{where}: listing entry {path!r:.120}: an lfs oid must be a sha256 (64 hex digits)")
    return ListedFile(rel, size, blob, lfs=lfs is not None)


def plan_variant(listing: dict[str, ListedFile], digest_files: dict[str, str], limits: Limits, *,
                 where: str) -> list[ListedFile]:
    """The files to download for a variant whose metadata.json lists ``digest_files``, or ValueError.

    Refused before any of them is fetched: a listed file the digest does not name, a digest file the listing lacks,
    a file over ``limits.file_bytes``, a total over ``limits.variant_bytes``, more than ``limits.files`` files."""
    names = set(listing) - {"metadata.json"}
    unlisted = sorted(names - set(digest_files))
    if unlisted:
        more = f" (+{len(unlisted) - 3} more)" if len(unlisted) > 3 else ""
        raise ValueError(f"{where}: the Hub lists {len(unlisted)} file(s) that metadata.json's digest does not name, "
                         f"e.g. {', '.join(repr(n) for n in unlisted[:3])}{more}; a variant holds exactly "
                         "metadata.json and the files of its digest")
    missing = sorted(set(digest_files) - names)
    if missing:
        raise ValueError(f"{where}: metadata.json names {len(missing)} file(s) the Hub does not list, e.g. "
                         f"{', '.join(repr(n) for n in missing[:3])}")
    if len(names) > limits.files:
        raise ValueError(f"{where}: {len(names)} files; at most {limits.files} are accepted "
                         "(KERNEL_LOADER_MAX_FILES)")
    files = [listing[n] for n in sorted(names)]
    for f in files:
        if f.size > limits.file_bytes:
            raise ValueError(f"{where}: {f.path!r} is {f.size} bytes; at most {limits.file_bytes} are accepted per "
                             "file (KERNEL_LOADER_MAX_FILE_BYTES)")
    total = sum(f.size for f in files)
    if total > limits.variant_bytes:
        raise ValueError(f"{where}: the variant's files total {total} bytes; at most {limits.variant_bytes} are "
                         "accepted (KERNEL_LOADER_MAX_VARIANT_BYTES)")
    return files


def check_metadata_size(entry: ListedFile | None, limits: Limits, *, where: str) -> ListedFile:
    if entry is None:
        raise ValueError(f"{where}: the Hub lists no metadata.json; every build/<variant>/ needs one")
    if entry.size > limits.metadata_bytes:
        raise ValueError(f"{where}: metadata.json is {entry.size} bytes by the Hub's listing; at most "
                         f"{limits.metadata_bytes} are accepted (refused before download)")
    return entry


def check_inside(path: Path, root: Path, *, what: str) -> Path:
    """``path`` if it resolves (after symlinks of its existing parents) inside ``root``, else ValueError."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if real != real_root and not real.startswith(real_root + os.sep):
        raise ValueError(f"{what}: {path} resolves to {real}, outside the cache folder {real_root}; refused")
    return path
