"""``aot.toml``: which kernels of a repo are compiled ahead of time, for which archs, with which tiles."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from ..config import BuildConfigError

AOT_FILE = "aot.toml"
ARCHS_ENV = "KERNEL_LOADER_AOT_ARCHS"  # comma list: build a subset of aot.toml's archs (quick development builds)
_KEYS = {"spec", "tiles", "archs", "exclude", "stable-abi"}
_ARCH = re.compile(r"^\d+\.\d+$")


@dataclass(frozen=True)
class AotConfig:
    kernel_dir: Path
    spec: Path  # absolute
    tiles: Path  # absolute
    archs: tuple[str, ...]  # "8.0", "9.0", ...
    exclude: tuple[str, ...] = ()  # package-relative files kept out of AOT variants
    stable_abi: str | None = None  # "2.10": for a [torch-noarch] repo, the stable ABI its AOT variants target

    @property
    def files(self) -> list[Path]:
        """Everything the cubins depend on besides the kernel package (hashed into the cubin cache key)."""
        return [self.kernel_dir / AOT_FILE, self.spec, self.tiles]


def load_aot_config(kernel_dir: Path) -> AotConfig | None:
    """The repo's aot.toml, validated; None when the repo has none (its CUDA variants are nvcc builds)."""
    kernel_dir = Path(kernel_dir).resolve()
    path = kernel_dir / AOT_FILE
    if not path.is_file():
        return None
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise BuildConfigError(f"{path}: not valid TOML ({e})") from None
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise BuildConfigError(f"{path}: unknown keys {unknown}; valid: {sorted(_KEYS)}")
    for key in ("spec", "tiles", "archs"):
        if key not in data:
            raise BuildConfigError(f"{path}: missing {key!r}")
    archs = tuple(data["archs"])
    bad = [a for a in archs if not isinstance(a, str) or not _ARCH.match(a)]
    if bad or not archs:
        raise BuildConfigError(f"{path}: archs must be a non-empty list like [\"8.0\", \"9.0\"], got {data['archs']!r}")
    subset = os.environ.get(ARCHS_ENV)
    if subset:
        wanted = tuple(a.strip() for a in subset.split(",") if a.strip())
        unknown = [a for a in wanted if a not in archs]
        if unknown or not wanted:
            raise BuildConfigError(f"{ARCHS_ENV}={subset!r}: {unknown or 'empty'} not among {path}'s archs {list(archs)}")
        archs = wanted
    spec, tiles = kernel_dir / data["spec"], kernel_dir / data["tiles"]
    for name, p in (("spec", spec), ("tiles", tiles)):
        if not p.is_file():
            raise BuildConfigError(f"{path}: {name} = {data[name]!r} does not exist")
    stable = data.get("stable-abi")
    if stable is not None and not re.match(r"^\d+\.\d+$", str(stable)):
        raise BuildConfigError(f"{path}: stable-abi must be a torch version like \"2.10\", got {stable!r}")
    return AotConfig(kernel_dir=kernel_dir, spec=spec, tiles=tiles, archs=archs,
                     exclude=tuple(data.get("exclude", ())), stable_abi=stable)
