"""The build matrix as data (the model, read and validated): ``kernel_repos/matrix.toml`` x each kernel's build.toml -> variant names.

    matrix = load_matrix(Path("kernel_repos/matrix.toml"))
    kernels = discover_kernels(Path("kernel_repos"))
    entries = expand(matrix, kernels)            # one MatrixEntry per variant CI builds

Variant names are built with kernels' own variant classes (``kernels.variants``), so every name we emit is one
the stock client parses and resolves. A kernel gets the matrix's backends that its ``general.backends`` lists;
stable-ABI variants only when it opts in (``torch.stable-abi = "2.10"`` in build.toml, or ``stable-abi`` under
``[kernel.<name>]`` in matrix.toml) and the backend allows them. ``local_plan`` says which entries this machine
can build (a venv with the right torch, nvcc for CUDA) and why not the others; ``status`` lists what exists
in local build folders and on a Hub repo.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from .. import _kernels

MATRIX_FILE = "matrix.toml"
OS = "linux"  # the only OS CI builds for
_CAPABILITY_RE = re.compile(r"^(\d{1,2})\.(\d)([af]?)(\+PTX)?\Z")
_MINOR_RE = re.compile(r"^(\d+)\.(\d+)\Z")
_ARCHS = ("x86_64", "aarch64")
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
_BACKENDS = ("cpu", "cuda")

# Allowed keys per table; anything else is refused by name (a typo must not silently drop variants).
_TOP = {"torch", "platform", "backend", "kernel"}
_TORCH = {"versions", "stable-abi"}
_PLATFORM = {"archs", "runners"}
_BACKEND = {
    "cpu": {"index-url", "stable-abi"},
    "cuda": {"versions", "toolkits", "index-url", "default-capabilities", "stable-abi"},
}
_KERNEL = {"exclude", "stable-abi", "archs"}
_EXCLUDE = {"torch", "backend", "cuda", "arch", "abi"}


class MatrixError(ValueError):
    """matrix.toml or a kernel's build.toml cannot be expanded into a matrix; the message names the key."""


# ---------------------------------------------------------------------------------------------- the data


@dataclass(frozen=True)
class BackendSpec:
    name: str  # "cpu" | "cuda"
    versions: tuple[str, ...] = ()  # CUDA minors ("12.8", "13.0"); () for cpu
    toolkits: dict = field(default_factory=dict)  # CUDA minor -> toolkit release CI installs
    index_url: str = ""  # pip index for torch wheels; "{cuda_nodot}" is filled in
    default_capabilities: tuple[str, ...] = ()
    stable_abi: bool = False


@dataclass(frozen=True)
class KernelSettings:
    exclude: tuple[dict, ...] = ()
    stable_abi: str | None = None
    archs: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Matrix:
    path: Path
    torch_versions: tuple[str, ...]
    stable_abi_targets: tuple[str, ...]
    archs: tuple[str, ...]
    runners: dict
    backends: dict  # name -> BackendSpec
    kernels: dict  # kernel name -> KernelSettings


@dataclass(frozen=True)
class KernelInfo:
    """What the matrix needs from one kernel's build.toml."""

    name: str
    dir: Path
    version: int
    backends: tuple[str, ...]
    capabilities: tuple[str, ...]  # union of its cuda sections' cuda-capabilities
    stable_abi: str | None  # torch.stable-abi target, if it opts in
    noarch: bool = False  # [torch-noarch]: one pure-Python variant per backend (torch-cpu, torch-cuda)


@dataclass(frozen=True)
class MatrixEntry:
    """One variant CI builds."""

    kernel: str
    kernel_dir: str  # relative to the checkout root, posix
    variant: str
    backend: str  # "cpu" | "cuda"
    arch: str
    torch: str  # torch minor the build runs under ("2.14"); for stable ABI the newest in the matrix
    abi: str  # "exact" | "stable" | "noarch"
    stable_abi: str = ""  # target minor for abi == "stable"
    cuda: str = ""  # CUDA minor, "" for cpu
    capabilities: tuple[str, ...] = ()

    def github(self, matrix: Matrix) -> dict:
        spec = matrix.backends[self.backend]
        if self.abi == "noarch":  # pure Python: assembled with a CPU torch whatever the backend
            spec = matrix.backends.get("cpu", BackendSpec("cpu", index_url=CPU_INDEX))
        return {
            "kernel": self.kernel,
            "kernel-dir": self.kernel_dir,
            "variant": self.variant,
            "backend": self.backend,
            "arch": self.arch,
            "runner": matrix.runners.get(self.arch, "ubuntu-latest"),
            "torch": self.torch,
            "torch-index": spec.index_url.format(cuda_nodot=self.cuda.replace(".", "")),
            "abi": self.abi,
            "stable-abi": self.stable_abi,
            "cuda": self.cuda,
            "cuda-toolkit": spec.toolkits.get(self.cuda, "") if self.cuda else "",
            "capabilities": ";".join(self.capabilities),
            "cpu-tests": self.backend == "cpu",
        }


# ---------------------------------------------------------------------------------------------- reading


def _refuse_unknown(where: str, table, allowed: set[str]) -> None:
    if not isinstance(table, dict):
        raise MatrixError(f"{where} must be a table, got {type(table).__name__} {table!r}")
    unknown = sorted(set(table) - allowed)
    if unknown:
        prefix = where.split(": ", 1)[1] + "." if ": " in where else ""
        raise MatrixError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(prefix + k for k in unknown)}; valid: {', '.join(sorted(allowed))}")


def _minor(where: str, value) -> str:
    if not isinstance(value, str) or not _MINOR_RE.match(value):
        raise MatrixError(f"{where} = {value!r} is not a MAJOR.MINOR version string such as \"2.13\"")
    return value


def _minors(where: str, value, *, min_major: int = 0) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise MatrixError(f"{where} must be a non-empty list of \"MAJOR.MINOR\" strings, got {value!r}")
    out = tuple(_minor(f"{where}[{i}]", v) for i, v in enumerate(value))
    low = [v for v in out if int(v.split(".")[0]) < min_major]
    if low:
        raise MatrixError(f"{where} has {low}; versions below {min_major}.0 are not supported")
    if len(set(out)) != len(out):
        raise MatrixError(f"{where} lists a version twice: {list(out)}")
    return out


def check_capability(where: str, value) -> str:
    """A CUDA capability as kernel-builder writes it: MAJOR.MINOR with an optional a/f suffix (9.0a, 10.0f)."""
    m = _CAPABILITY_RE.match(value) if isinstance(value, str) else None
    if m is None or int(m.group(1)) < 5:
        raise MatrixError(f"{where} = {value!r} is not a CUDA capability; expected MAJOR.MINOR (>= 5.0) with an "
                          "optional 'a' or 'f' suffix or +PTX, e.g. \"8.0\", \"9.0a\", \"10.0f\", \"9.0+PTX\"")
    return value


def _capabilities(where: str, value) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise MatrixError(f"{where} must be a list of CUDA capabilities, got {value!r}")
    return tuple(check_capability(f"{where}[{i}]", v) for i, v in enumerate(value))


def load_matrix(path: Path) -> Matrix:
    path = Path(path)
    if not path.is_file():
        raise MatrixError(f"{path}: no matrix file here (expected kernel_repos/{MATRIX_FILE})")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise MatrixError(f"{path}: not valid TOML: {e}") from None
    _refuse_unknown(str(path), data, _TOP)
    for key in ("torch", "platform", "backend"):
        if key not in data:
            raise MatrixError(f"{path}: missing required table [{key}]")
    torch = data["torch"]
    _refuse_unknown(f"{path}: torch", torch, _TORCH)
    if "versions" not in torch:
        raise MatrixError(f"{path}: missing required key torch.versions")
    versions = _minors(f"{path}: torch.versions", torch["versions"], min_major=2)
    stable = _minors(f"{path}: torch.stable-abi", torch["stable-abi"], min_major=2) if "stable-abi" in torch else ()

    plat = data["platform"]
    _refuse_unknown(f"{path}: platform", plat, _PLATFORM)
    archs = plat.get("archs")
    if not isinstance(archs, list) or not archs:
        raise MatrixError(f"{path}: platform.archs must be a non-empty list of {list(_ARCHS)}, got {archs!r}")
    for i, a in enumerate(archs):
        if a not in _ARCHS:
            raise MatrixError(f"{path}: platform.archs[{i}] = {a!r}; valid archs: {', '.join(_ARCHS)}")
    runners = plat.get("runners", {})
    _refuse_unknown(f"{path}: platform.runners", runners, set(_ARCHS))

    backends = {}
    _refuse_unknown(f"{path}: backend", data["backend"], set(_BACKENDS))
    for name, table in data["backend"].items():
        where = f"{path}: backend.{name}"
        _refuse_unknown(where, table, _BACKEND[name])
        cuda_versions: tuple[str, ...] = ()
        if name == "cuda":
            if "versions" not in table:
                raise MatrixError(f"{path}: missing required key backend.cuda.versions (e.g. [\"12.8\", \"13.0\"])")
            cuda_versions = _minors(f"{where}.versions", table["versions"])
            toolkits = table.get("toolkits", {})
            _refuse_unknown(f"{where}.toolkits", toolkits, set(cuda_versions))
        stable_abi = table.get("stable-abi", False)
        if not isinstance(stable_abi, bool):
            raise MatrixError(f"{where}.stable-abi = {stable_abi!r}; expected true or false")
        backends[name] = BackendSpec(
            name=name,
            versions=cuda_versions,
            toolkits=dict(table.get("toolkits", {})),
            index_url=str(table.get("index-url", "")),
            default_capabilities=_capabilities(f"{where}.default-capabilities", table.get("default-capabilities", [])),
            stable_abi=stable_abi,
        )

    kernels = {}
    for name, table in data.get("kernel", {}).items():
        where = f"{path}: kernel.{name}"
        _refuse_unknown(where, table, _KERNEL)
        excludes = table.get("exclude", [])
        if not isinstance(excludes, list):
            raise MatrixError(f"{where}.exclude must be a list of tables like {{ backend = \"cpu\", arch = \"aarch64\" }}")
        for i, ex in enumerate(excludes):
            _refuse_unknown(f"{where}.exclude[{i}]", ex, _EXCLUDE)
        target = table.get("stable-abi")
        if target is not None:
            _minor(f"{where}.stable-abi", target)
            if target not in stable:
                raise MatrixError(f"{where}.stable-abi = {target!r} is not one of torch.stable-abi {list(stable)}")
        k_archs = table.get("archs")
        if k_archs is not None:
            bad = [a for a in k_archs if a not in archs]
            if bad:
                raise MatrixError(f"{where}.archs has {bad}; platform.archs is {archs}")
        kernels[name] = KernelSettings(exclude=tuple(excludes), stable_abi=target,
                                       archs=tuple(k_archs) if k_archs is not None else None)
    return Matrix(path=path, torch_versions=versions, stable_abi_targets=stable, archs=tuple(archs),
                  runners=dict(runners), backends=backends, kernels=kernels)


def read_kernel(kernel_dir: Path) -> KernelInfo:
    """build.toml -> KernelInfo. Validation (unknown keys, missing fields) is the builder's for [torch] kernels
    and kernels' own parser for [torch-noarch] ones; we add the CUDA capability check, naming the section."""
    from ..build.aot.config import load_aot_config
    from ..build.config import BuildConfigError, load_build_config

    path = Path(kernel_dir).resolve() / "build.toml"
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise MatrixError(f"{path}: cannot read it as TOML: {e}") from None
    if "torch-noarch" in raw:
        return _read_noarch(path, raw)
    try:
        config = load_build_config(kernel_dir)
    except BuildConfigError as e:
        raise MatrixError(str(e)) from None
    caps: list[str] = []
    for section in config.kernels:
        for i, cap in enumerate(section.cuda_capabilities):
            check_capability(f"{path}: kernel.{section.name}.cuda-capabilities[{i}]", cap)
            if cap not in caps:
                caps.append(cap)
    aot = load_aot_config(kernel_dir)  # precompiled Triton kernels: the archs their cubins are built for
    if aot is not None:
        caps += [a for a in aot.archs if a not in caps]
    target = raw.get("torch", {}).get("stable-abi")
    if target is not None:
        _minor(f"{path}: torch.stable-abi", target)
    return KernelInfo(name=config.name, dir=config.kernel_dir, version=config.version, backends=config.backends,
                      capabilities=tuple(caps), stable_abi=target)


def _read_noarch(path: Path, raw: dict) -> KernelInfo:
    try:
        _kernels.Build.open(path.parent)
    except ValueError as e:
        detail = re.sub(r"^Cannot parse .*?: (Cannot parse TOML in \S+: )?", "", " ".join(str(e).split()))
        raise MatrixError(f"{path}: rejected by kernels' build.toml validator: {detail}") from None
    general = raw.get("general", {})
    for key in ("name", "version", "backends"):
        if key not in general:
            raise MatrixError(f"{path}: missing required key general.{key}")
    return KernelInfo(name=general["name"], dir=path.parent, version=int(general["version"]),
                      backends=tuple(general["backends"]), capabilities=(), stable_abi=None, noarch=True)


def discover_kernels(root: Path) -> list[KernelInfo]:
    """Every directory directly under ``root`` holding a build.toml, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise MatrixError(f"{root}: not a directory (expected the kernel_repos folder)")
    return [read_kernel(d) for d in sorted(root.iterdir()) if (d / "build.toml").is_file()]


def default_root() -> Path:
    """kernel_repos/ of the current directory, else of the checkout holding this package."""
    here = Path.cwd() / "kernel_repos"
    return here if here.is_dir() else Path(__file__).resolve().parents[2] / "kernel_repos"
