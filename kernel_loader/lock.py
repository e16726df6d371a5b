"""``kernel-loader lock`` and ``download --lock``: make a lock file from the Hub, and prefetch what one pins.

``kernel-loader lock [PROJECT_DIR]`` reads ``[tool.kernels.dependencies]`` from pyproject.toml (the table `kernels`
users already write: ``"org/name" = 1``) and locks every variant, or only ``--variant`` ones. The file format
(``kernels.lock`` + ``kernels.lock.digests``) is :mod:`kernel_loader.lockfile`. Both go through
:func:`kernel_loader.pipeline.acquire`, so trust, the per-repo lock and the offline trusted-commit rule are
load's.
"""

from __future__ import annotations

from pathlib import Path

from .errors import KernelUnavailable
from .integrity import check_metadata, sha256_b64
from .lockfile import LockedKernel, LockedVariant, LockFile, digests_path, repo_id_of
from .pipeline import acquire
from .spec import parse_spec


def project_dependencies(project_dir: str | Path) -> dict[str, int]:
    """``[tool.kernels.dependencies]`` of PROJECT_DIR/pyproject.toml: repo id -> version."""
    from kernels.compat import tomllib

    pyproject = Path(project_dir) / "pyproject.toml"
    try:
        data = tomllib.loads(pyproject.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"cannot read {pyproject}: {e}") from None
    deps = data.get("tool", {}).get("kernels", {}).get("dependencies")
    example = '[tool.kernels.dependencies]\n"kernels-community/flash-attn2" = 1'
    if not isinstance(deps, dict) or not deps:
        raise ValueError(f"{pyproject} has no [tool.kernels.dependencies] table; add one, e.g.\n{example}")
    out = {}
    for repo, version in deps.items():
        repo_id_of(repo, f"{pyproject} [tool.kernels.dependencies]")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"{pyproject}: version of {repo!r} is {version!r}; expected a positive integer "
                             f"(the Hub branch vN), e.g.\n{example}")
        out[repo] = version
    return out


def lock_kernels(deps: dict[str, int], *, variants: list[str] | None = None, trust=None) -> LockFile:
    """Ask the Hub for the commit of each ``repo: version`` and the digests of every (or each chosen) variant."""
    kernels: dict[str, LockedKernel] = {}
    for repo_id, version in sorted(deps.items()):
        spec = parse_spec(repo_id, version=version)
        locked = {}
        got = acquire(spec, trust=trust, variants=variants, metadata_only=True)
        for item in got:
            raw = item.metadata
            meta = check_metadata(raw, where=f"{repo_id}@{item.resolution.commit[:12]} build/{item.variant}")
            if meta.digest is None or not str(meta.digest.algorithm).lower().endswith("256"):
                raise KernelUnavailable(f"{repo_id} build/{item.variant}/metadata.json has no sha256 digest; cannot "
                                        "lock it", stage="verify")
            locked[item.variant] = LockedVariant(item.variant, sha256_b64(raw), dict(meta.digest.files))
        kernels[repo_id] = LockedKernel(repo_id, got[0].resolution.commit, version, None, locked)
    return LockFile(kernels)


def download_locked(lock: LockFile, *, all_variants: bool = False, trust=None) -> list[tuple[str, str, Path]]:
    """Prefetch what ``lock`` pins: this machine's variant of each kernel, or every locked variant. Each is
    downloaded at the locked commit and verified against the lock. Returns (repo_id, variant, folder) rows."""
    done = []
    for entry in sorted(lock.kernels.values(), key=lambda e: e.repo_id):
        names = None
        if all_variants:
            if not entry.variants:
                where = lock.path or Path("kernels.lock")
                raise ValueError(f"{where} has no digests file ({digests_path(where)}), so its variants are "
                                 "unknown; write one with `kernel-loader lock`")
            names = sorted(entry.variants)
        spec = parse_spec(f"{entry.repo_id}@{entry.commit}")
        done += [(entry.repo_id, got.variant, got.path)
                 for got in acquire(spec, trust=trust, entry=entry, variants=names)]
    return done
