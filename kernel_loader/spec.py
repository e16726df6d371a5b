"""Parse and validate kernel spec strings.

Grammar (the same strings transformers accepts as ``attn_implementation``)::

    [paged|]ORG/NAME[@REVISION][:FUNCTION]

- ``paged|`` asks for the paged-attention (continuous batching) entry point.
- ``@REVISION`` is a branch, tag or commit; ``@vN`` is the same as ``version=N``.
- ``:FUNCTION`` picks a function of the kernel module instead of its default.

A version can also be given as a keyword (``load(spec, version=2)``), which maps to the Hub branch ``v2``.
Without a revision or version the newest ``vN`` branch of the repo is used.

This module is the only place that spells the Hub's names: repo ids (:func:`parse_spec`, and the stricter
publishing rule :func:`validate_repo_id`), version branches ``vN`` (:func:`version_of_branch`,
:func:`branch_of_version`) and commits (:func:`is_commit`). ``:FUNCTION`` must be a public identifier: a
dunder or ``_private`` name is refused here, before anything touches the network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Hub repo ids: two parts of letters, digits, '-', '_', '.', not starting with '.' or '-', no '--' or '..'.
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_RE = re.compile(rf"^{_PART}/{_PART}\Z")
# Git ref names: no whitespace, no '..', no leading '-', no control or glob characters.
_REV_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/+-]{0,254}\Z")
_FN_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
_VERSION_BRANCH_RE = re.compile(r"^v([1-9][0-9]{0,5})\Z")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}\Z")

PAGED_PREFIX = "paged|"


@dataclass(frozen=True)
class KernelSpec:
    """A validated kernel reference."""

    repo_id: str
    revision: str | None = None  # branch, tag or commit; None = newest vN branch
    version: int | None = None  # set when the revision is a vN branch
    function: str | None = None
    paged: bool = False

    @property
    def org(self) -> str:
        return self.repo_id.split("/", 1)[0]

    def __str__(self) -> str:
        s = (PAGED_PREFIX if self.paged else "") + self.repo_id
        if self.revision is not None:
            s += f"@{self.revision}"
        if self.function is not None:
            s += f":{self.function}"
        return s


def looks_like_spec(value: object) -> bool:
    """True for strings that name a Hub kernel (as opposed to 'sdpa', 'eager', ...)."""
    if not isinstance(value, str):
        return False
    body = value[len(PAGED_PREFIX):] if value.startswith(PAGED_PREFIX) else value
    return "/" in body.split("@", 1)[0].split(":", 1)[0]


def parse_spec(text: str | KernelSpec, *, version: int | None = None) -> KernelSpec:
    """Parse ``text`` into a :class:`KernelSpec`; raise ``ValueError`` naming the bad part."""
    if isinstance(text, KernelSpec):
        spec = text
        if version is not None:
            return _with_version(spec, version, str(text))
        return spec
    if not isinstance(text, str):
        raise ValueError(f"kernel spec must be a string like 'org/name@v1:fn', got {type(text).__name__} {text!r}")
    raw = text
    s = text.strip()
    if not s:
        raise ValueError("kernel spec is empty; expected 'org/name', 'org/name@REVISION' or 'org/name:FUNCTION'")

    paged = s.startswith(PAGED_PREFIX)
    if paged:
        s = s[len(PAGED_PREFIX):]
    elif "|" in s:
        raise ValueError(f"kernel spec {raw!r}: unknown prefix {s.split('|', 1)[0]!r}; the only prefix is 'paged|'")

    function = None
    if ":" in s:
        s, function = s.rsplit(":", 1)
        if not _FN_RE.match(function):
            raise ValueError(f"kernel spec {raw!r}: function {function!r} is not a Python identifier")
        if function.startswith("_"):
            raise ValueError(f"kernel spec {raw!r}: function {function!r} is private (starts with '_'); name a "
                             "public function of the kernel, e.g. 'flash_attn_func'")
    revision = None
    if "@" in s:
        s, revision = s.split("@", 1)
        if not _REV_RE.match(revision) or ".." in revision or revision.endswith((".lock", "/", ".")):
            raise ValueError(
                f"kernel spec {raw!r}: revision {revision!r} is not a valid branch, tag or commit "
                "(letters, digits, '._/+-', no '..')"
            )
    if not _REPO_RE.match(s) or "--" in s or ".." in s:
        raise ValueError(
            f"kernel spec {raw!r}: repo id {s!r} must be 'org/name' (letters, digits, '-', '_', '.'; "
            "e.g. 'kernels-community/flash-attn2')"
        )

    spec_version = version_of_branch(revision) if revision is not None else None
    spec = KernelSpec(repo_id=s, revision=revision, version=spec_version, function=function, paged=paged)
    if version is not None:
        spec = _with_version(spec, version, raw)
    return spec


def _with_version(spec: KernelSpec, version: int, raw: str) -> KernelSpec:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version for {raw!r} must be a positive integer (Hub branch vN), got {version!r}")
    if spec.revision is not None and spec.version != version:
        raise ValueError(
            f"kernel spec {raw!r} names revision {spec.revision!r} and version={version}; give only one"
        )
    return KernelSpec(spec.repo_id, branch_of_version(version), version, spec.function, spec.paged)


def version_of_branch(name: str) -> int | None:
    """N for a version branch ``vN`` (N >= 1, no leading zero), else None."""
    m = _VERSION_BRANCH_RE.match(name) if isinstance(name, str) else None
    return int(m.group(1)) if m else None


def branch_of_version(version: int) -> str:
    return f"v{version}"


def version_branches(branches) -> dict[int, str]:
    """{N: commit} from (branch name, target commit) pairs, keeping version branches with a valid commit."""
    out = {}
    for name, commit in branches:
        n = version_of_branch(name)
        if n is not None and is_commit(commit):
            out[n] = commit
    return out


def is_commit(value: object) -> bool:
    """A full commit id: 40 lowercase hex digits."""
    return isinstance(value, str) and COMMIT_RE.match(value) is not None


# Publishing is stricter than parsing: what we create must also be a name the Hub accepts (<= 96 characters in
# all, no '.git' suffix).
_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?\Z")


def validate_repo_id(repo_id: str) -> tuple[str, str]:
    """Return ``(org, name)`` or raise ``ValueError`` saying what a valid Hub repo id looks like."""
    rule = ("expected 'org/name' where each part has letters, digits, '-', '_' or '.', starts and ends with a "
            "letter or digit, has no '--' or '..', and the whole id is at most 96 characters")
    if not isinstance(repo_id, str):
        raise ValueError(f"repo_id must be a string, got {type(repo_id).__name__}: {repo_id!r}; {rule}")
    parts = repo_id.split("/")
    if (len(parts) != 2 or len(repo_id) > 96
            or any(not _NAME_RE.match(p) or "--" in p or ".." in p for p in parts)
            or parts[1].endswith(".git")):
        raise ValueError(f"invalid repo_id {repo_id!r}: {rule}")
    return parts[0], parts[1]
