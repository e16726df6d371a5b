"""What a build folder must be before anything of it is published; each check names the variant or file.

The digest check is the loader's own (:func:`kernel_loader.fetch.verify_variant`): what load would refuse,
publish refuses (a variant without digests included).
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import _kernels
from ..errors import KernelUnavailable
from ..fetch import verify_variant

NEVER_PUBLISH = ("__pycache__", "*.pyc", "*.pyo")


class PublishRefused(ValueError):
    """The publish would break a rule (dirty tree, API change without a version bump); nothing was written."""


def variant_dirs(build_dir: Path, only: list[str] | None) -> list[Path]:
    from kernels.variants import parse_variant

    builds = build_dir / "build"
    if not builds.is_dir():
        raise ValueError(
            f"build_dir {build_dir} has no build/ folder; expected build/<variant>/metadata.json "
            "(e.g. build/torch213-cxx11-cpu-x86_64-linux/metadata.json)"
        )
    dirs = sorted(p for p in builds.iterdir() if p.is_dir() and p.name not in NEVER_PUBLISH)
    if only is not None:
        have = {p.name for p in dirs}
        missing = [v for v in only if v not in have]
        if missing:
            raise ValueError(f"variants {missing} not found in {builds}; have: {sorted(have) or 'none'}")
        dirs = [p for p in dirs if p.name in set(only)]
    if not dirs:
        raise ValueError(f"{builds} contains no variant folders; expected build/<variant>/metadata.json")
    for d in dirs:
        try:
            parse_variant(d.name)
        except Exception as e:  # kernels raises ValueError or its own parse errors
            raise ValueError(
                f"{d} is not a valid build variant name ({e}); expected names like "
                "torch213-cxx11-cpu-x86_64-linux, torch-stable-abi210-cu130-x86_64-linux or torch-cpu"
            ) from None
        meta = d / "metadata.json"
        if not meta.is_file():
            raise ValueError(f"variant {d} has no metadata.json; every build/<variant>/ needs one")
        try:
            _kernels.Metadata.from_bytes(meta.read_bytes())
        except Exception as e:
            raise ValueError(f"{meta} is not valid kernel metadata: {e}") from None
    return dirs


def check_digest(variant: Path) -> None:
    """Refuse to publish files that load would refuse: no digest, or files that do not match it."""
    if _kernels.Metadata.read_from_file(variant / "metadata.json").digest is None:
        raise ValueError(f"{variant}: metadata.json has no digest, so clients cannot verify its files (and load "
                         "refuses it); rebuild the variant")
    try:
        verify_variant(variant)
    except KernelUnavailable as e:
        raise ValueError(f"files of {variant} do not match the digest in its metadata.json: {e.reason}") from None


def check_version(version) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version must be a positive int (it becomes branch v<version>), got {version!r}")
    return version


def metadata_version(dirs: list[Path]) -> int:
    """The version every variant's metadata.json carries (they must agree)."""
    versions = {d.name: json.loads((d / "metadata.json").read_text()).get("version") for d in dirs}
    distinct = set(versions.values())
    if len(distinct) != 1 or not isinstance(next(iter(distinct)), int):
        raise ValueError(f"variants disagree on metadata.json version: {versions}; rebuild them from one build.toml")
    return distinct.pop()


def dirty_reasons(dirs: list[Path], kernel_dir: Path | None) -> list[str]:
    from ..build.variant import git_status

    out = []
    for d in dirs:
        meta = json.loads((d / "metadata.json").read_text())
        kernel = (meta.get("provenance") or {}).get("kernel") or {}
        if kernel.get("dirty"):
            out.append(f"variant {d.name} was built from a dirty tree (metadata.json provenance.kernel.dirty, "
                       f"commit {str(kernel.get('commit', '?'))[:12]})")
    if kernel_dir is not None and (Path(kernel_dir) / "build.toml").is_file():
        state = git_status(Path(kernel_dir))
        if state is not None and state["dirty"]:
            out.append(f"{kernel_dir} has uncommitted changes (git status)")
    return out
