"""The build matrix as data: ``kernel_repos/matrix.toml`` x each kernel's build.toml -> variant names.

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

import json
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

MATRIX_FILE = "matrix.toml"
OS = "linux"  # the only OS CI builds for
_CAPABILITY_RE = re.compile(r"^(\d{1,2})\.(\d)([af]?)(\+PTX)?$")
_MINOR_RE = re.compile(r"^(\d+)\.(\d+)$")
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
    from .build.config import BuildConfigError, load_build_config

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
    from .build.aot import load_aot_config

    aot = load_aot_config(kernel_dir)  # precompiled Triton kernels: the archs their cubins are built for
    if aot is not None:
        caps += [a for a in aot.archs if a not in caps]
    target = raw.get("torch", {}).get("stable-abi")
    if target is not None:
        _minor(f"{path}: torch.stable-abi", target)
    return KernelInfo(name=config.name, dir=config.kernel_dir, version=config.version, backends=config.backends,
                      capabilities=tuple(caps), stable_abi=target)


def _read_noarch(path: Path, raw: dict) -> KernelInfo:
    from kernels._rust import Build

    try:
        Build.open(path.parent)
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


# ---------------------------------------------------------------------------------------------- expansion


def variant_name(abi: str, torch: str, backend: str, cuda: str, arch: str) -> str:
    from kernels.backends import CPU, CUDA
    from kernels.variants import Arch, ArchVariant, Torch, TorchStableAbi
    from kernels.variants import Noarch, NoarchVariant, TorchNoarch
    from packaging.version import Version

    if abi == "noarch":
        return NoarchVariant(framework=TorchNoarch(), arch=Noarch(backend_name=backend)).variant_str
    framework = Torch(Version(torch), cxx11_abi=True) if abi == "exact" else TorchStableAbi(Version(torch))
    be = CPU() if backend == "cpu" else CUDA(version=Version(cuda))
    return ArchVariant(framework=framework, arch=Arch(backend=be, platform=arch, os=OS)).variant_str


def _excluded(entry: MatrixEntry, excludes: tuple[dict, ...]) -> bool:
    values = {"torch": entry.stable_abi or entry.torch, "backend": entry.backend, "cuda": entry.cuda,
              "arch": entry.arch, "abi": entry.abi}
    return any(all(values[k] == v for k, v in ex.items()) for ex in excludes)


def expand(matrix: Matrix, kernels: list[KernelInfo], checkout_root: Path | None = None) -> list[MatrixEntry]:
    """All variants per kernel, in a stable order (kernel, abi, backend, cuda, torch, arch)."""
    out: list[MatrixEntry] = []
    newest = max(matrix.torch_versions, key=lambda v: tuple(map(int, v.split("."))))
    for k in kernels:
        settings = matrix.kernels.get(k.name, KernelSettings())
        target = settings.stable_abi or k.stable_abi
        if target is not None and target not in matrix.stable_abi_targets:
            raise MatrixError(f"{k.dir / 'build.toml'}: torch.stable-abi = {target!r} is not a stable-ABI target of "
                              f"{matrix.path} (torch.stable-abi = {list(matrix.stable_abi_targets)})")
        rel = _relative(k.dir, checkout_root)
        archs = settings.archs or matrix.archs
        if k.noarch:  # pure Python: one variant per backend, assembled on any runner
            for backend in k.backends:
                if backend in matrix.backends:
                    entry = MatrixEntry(kernel=k.name, kernel_dir=rel, backend=backend, arch=matrix.archs[0],
                                        torch=newest, abi="noarch", variant=variant_name("noarch", "", backend, "", ""))
                    if not _excluded(entry, settings.exclude):
                        out.append(entry)
            continue
        for backend in k.backends:
            spec = matrix.backends.get(backend)
            if spec is None:
                continue  # a backend the matrix does not build
            cudas = spec.versions or ("",)
            caps = (k.capabilities or spec.default_capabilities) if backend == "cuda" else ()
            builds = [("exact", t, "") for t in matrix.torch_versions]
            if target is not None and spec.stable_abi:
                builds.insert(0, ("stable", newest, target))
            for abi, torch, stable in builds:
                for cuda in cudas:
                    for arch in archs:
                        entry = MatrixEntry(
                            kernel=k.name, kernel_dir=rel, backend=backend, arch=arch, torch=torch, abi=abi,
                            stable_abi=stable, cuda=cuda, capabilities=caps,
                            variant=variant_name(abi, stable or torch, backend, cuda, arch),
                        )
                        if not _excluded(entry, settings.exclude):
                            out.append(entry)
    return out


def _relative(path: Path, root: Path | None) -> str:
    root = Path(root).resolve() if root is not None else Path(path).resolve().parent.parent
    try:
        return Path(path).resolve().relative_to(root).as_posix()
    except ValueError:
        return Path(path).as_posix()


def github_include(matrix: Matrix, entries: list[MatrixEntry]) -> dict:
    """The ``strategy.matrix`` value of the build job: ``{"include": [...]}``."""
    return {"include": [e.github(matrix) for e in entries]}


# ---------------------------------------------------------------------------------------------- local builds


@dataclass(frozen=True)
class BuildEnv:
    """A Python environment with torch that a build can run in."""

    python: Path
    torch: str  # "2.14.1+cu130"
    cuda: str | None  # torch's CUDA minor ("13.0") or None for a CPU wheel

    @property
    def minor(self) -> str:
        m = re.match(r"(\d+)\.(\d+)", self.torch)
        return f"{m.group(1)}.{m.group(2)}" if m else self.torch


def _torch_in(site: Path) -> tuple[str, str | None] | None:
    version_py = site / "torch" / "version.py"
    if not version_py.is_file():
        return None
    text = version_py.read_text()
    ver = re.search(r"^__version__\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", text, re.M)
    cuda = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", text, re.M)
    if ver is None:
        return None
    return ver.group(1), (".".join(cuda.group(1).split(".")[:2]) if cuda else None)


def find_build_envs(checkout_root: Path) -> list[BuildEnv]:
    """torch installs in ``<root>/.venv`` and ``<root>/.venv-*`` (e.g. .venv-cu130), read from files without
    starting Python (importing torch per venv would take seconds)."""
    envs: list[BuildEnv] = []
    for venv in sorted(Path(checkout_root).glob(".venv*")):
        for site in sorted(venv.glob("lib/python3*/site-packages")):
            found = _torch_in(site)
            python = venv / "bin" / "python"
            if found and python.exists():
                envs.append(BuildEnv(python=python, torch=found[0], cuda=found[1]))
    return envs


def nvcc_version() -> str | None:
    """CUDA minor of the nvcc on PATH (or $CUDA_HOME/bin), e.g. "13.0"; None without nvcc."""
    import os

    nvcc = shutil.which("nvcc")
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if nvcc is None and home and (Path(home) / "bin" / "nvcc").exists():
        nvcc = str(Path(home) / "bin" / "nvcc")
    if nvcc is None:
        return None
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else None


@dataclass(frozen=True)
class LocalBuild:
    entry: MatrixEntry
    env: BuildEnv | None  # where to build it; None when it cannot be built here
    reason: str = ""  # why not


def _ge(a: str, b: str) -> bool:
    return tuple(map(int, a.split("."))) >= tuple(map(int, b.split(".")))


def local_plan(entries: list[MatrixEntry], envs: list[BuildEnv], nvcc: str | None,
               machine: str | None = None) -> list[LocalBuild]:
    """Which entries this machine can build, with the venv to build each in; the rest with the reason."""
    machine = machine or platform.machine()
    have = ", ".join(f"{e.torch} ({e.python.parent.parent.name})" for e in envs) or "none"
    out = []
    for e in entries:
        if e.arch != machine:
            out.append(LocalBuild(e, None, f"needs a {e.arch} machine (this one is {machine})"))
            continue
        if e.abi == "noarch":  # nothing to compile: any torch assembles it
            out.append(LocalBuild(e, envs[0]) if envs else LocalBuild(e, None, "needs torch in .venv or .venv-*"))
            continue
        if e.backend == "cuda" and nvcc != e.cuda:
            out.append(LocalBuild(e, None, f"needs nvcc {e.cuda} (found: {nvcc or 'no nvcc on PATH or CUDA_HOME'})"))
            continue
        if e.abi == "stable":
            fits = [v for v in envs if _ge(v.minor, e.stable_abi) and (e.backend == "cpu" or v.cuda == e.cuda)]
            want = f"torch >= {e.stable_abi}" + (f" built for CUDA {e.cuda}" if e.cuda else "")
        else:
            fits = [v for v in envs if v.minor == e.torch and (e.backend == "cpu" or v.cuda == e.cuda)]
            want = f"torch {e.torch}" + (f" built for CUDA {e.cuda}" if e.cuda else "")
        if not fits:
            hint = f" (e.g. python -m venv .venv-cu{e.cuda.replace('.', '')})" if e.cuda else ""
            out.append(LocalBuild(e, None, f"needs {want} in .venv or a .venv-* build venv{hint}; installed: {have}"))
            continue
        fits.sort(key=lambda v: tuple(int(x) for x in v.minor.split(".")), reverse=True)
        out.append(LocalBuild(e, fits[0]))
    return out


# ---------------------------------------------------------------------------------------------- status


@dataclass
class VariantStatus:
    kernel: str
    variant: str
    in_matrix: bool
    local_bytes: int | None = None
    hub_bytes: int | None = None
    archs: tuple[str, ...] = ()
    backend: str = ""
    version: int | None = None


def _meta_summary(meta: dict) -> tuple[str, tuple[str, ...], int | None]:
    backend = meta.get("backend") or {}
    return backend.get("type", ""), tuple(backend.get("archs") or ()), meta.get("version")


def local_variants(kernel_dir: Path) -> dict[str, tuple[int, dict]]:
    """variant -> (folder size, metadata.json) for ``kernel_dir/build/<variant>/``."""
    out = {}
    builds = Path(kernel_dir) / "build"
    if not builds.is_dir():
        return out
    for d in sorted(builds.iterdir()):
        meta = d / "metadata.json"
        if d.is_dir() and meta.is_file():
            size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
            try:
                out[d.name] = (size, json.loads(meta.read_text()))
            except ValueError:
                out[d.name] = (size, {})
    return out


def hub_variants(repo_id: str, revision: str, *, endpoint: str | None = None) -> dict[str, tuple[int, dict]]:
    """variant -> (size of its files, metadata.json) on branch ``revision`` of a Hub kernel repo."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    api = HfApi(endpoint=endpoint)
    try:
        entries = list(api.list_repo_tree(repo_id, path_in_repo="build", recursive=True, revision=revision,
                                          repo_type="kernel"))
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError):
        return {}
    sizes: dict[str, int] = {}
    for e in entries:
        parts = e.path.split("/")
        if len(parts) >= 3 and hasattr(e, "size"):
            sizes[parts[1]] = sizes.get(parts[1], 0) + int(e.size or 0)
    out = {}
    for variant, size in sorted(sizes.items()):
        try:
            path = hf_hub_download(repo_id, f"build/{variant}/metadata.json", repo_type="kernel", revision=revision,
                                   endpoint=endpoint)
            out[variant] = (size, json.loads(Path(path).read_text()))
        except (EntryNotFoundError, ValueError):
            out[variant] = (size, {})
    return out


def status(entries: list[MatrixEntry], kernels: list[KernelInfo], *,
           hub: dict[str, tuple[str, str]] | None = None, endpoint: str | None = None) -> list[VariantStatus]:
    """One row per variant that is in the matrix, built locally, or on the Hub (``hub``: kernel -> (repo, rev))."""
    rows: list[VariantStatus] = []
    for k in kernels:
        wanted = [e.variant for e in entries if e.kernel == k.name]
        local = local_variants(k.dir)
        remote = hub_variants(*hub[k.name], endpoint=endpoint) if hub and k.name in hub else {}
        names = wanted + sorted((set(local) | set(remote)) - set(wanted))
        for v in names:
            row = VariantStatus(kernel=k.name, variant=v, in_matrix=v in wanted)
            for source, attr in ((local, "local_bytes"), (remote, "hub_bytes")):
                if v in source:
                    size, meta = source[v]
                    setattr(row, attr, size)
                    backend, archs, version = _meta_summary(meta)
                    row.backend, row.archs, row.version = backend or row.backend, archs or row.archs, version
            rows.append(row)
    return rows


def format_status(rows: list[VariantStatus], hub: bool) -> str:
    def size(n):
        return "-" if n is None else f"{n / 1e6:.2f} MB"

    header = ["kernel", "variant", "matrix", "local", *(["hub"] if hub else []), "version", "archs"]
    table = [header]
    for r in rows:
        table.append([r.kernel, r.variant, "yes" if r.in_matrix else "no", size(r.local_bytes),
                      *([size(r.hub_bytes)] if hub else []), "-" if r.version is None else str(r.version),
                      ",".join(r.archs) or ("-" if r.backend != "cpu" else "any")])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    built = sum(r.local_bytes is not None for r in rows)
    lines.append(f"{len(rows)} variants, {sum(r.in_matrix for r in rows)} in the matrix, {built} built locally"
                 + (f", {sum(r.hub_bytes is not None for r in rows)} on the Hub" if hub else ""))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- workflow file

WORKFLOW_BEGIN = "# BEGIN MATRIX (generated by `kernel-loader matrix --github --update-workflow`; do not edit)"
WORKFLOW_END = "# END MATRIX"


def update_workflow(path: Path, include: dict) -> bool:
    """Rewrite the include list between the marker comments of a workflow file; True if it changed."""
    path = Path(path)
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    try:
        begin = next(i for i, line in enumerate(lines) if line.strip() == WORKFLOW_BEGIN)
        end = next(i for i, line in enumerate(lines) if i > begin and line.strip() == WORKFLOW_END)
    except StopIteration:
        raise MatrixError(f"{path}: no '{WORKFLOW_BEGIN}' ... '{WORKFLOW_END}' block to rewrite") from None
    indent = lines[begin][: len(lines[begin]) - len(lines[begin].lstrip())]
    body = [f"{indent}include:\n"] + [f"{indent}  - {json.dumps(e, separators=(', ', ': '))}\n"
                                       for e in include["include"]]
    new = "".join(lines[: begin + 1] + body + lines[end:])
    if new != text:
        path.write_text(new)
        return True
    return False


def default_root() -> Path:
    """kernel_repos/ of the current directory, else of the checkout holding this package."""
    here = Path.cwd() / "kernel_repos"
    return here if here.is_dir() else Path(__file__).resolve().parents[1] / "kernel_repos"


def print_err(msg: str) -> None:
    print(msg, file=sys.stderr)
