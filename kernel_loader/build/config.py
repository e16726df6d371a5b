"""Read a kernel's ``build.toml`` (kernel-builder edition 5) into a :class:`BuildConfig`.

The file is first validated by the ``kernels`` library itself (``kernels._rust.Build.open``), so anything the
stock kernel-builder would reject is rejected here too, with its message. We then read the subset of keys our
builder implements with ``tomllib``. Keys that edition 5 allows but we do not implement are refused by name
rather than silently ignored, because ignoring e.g. ``torch.stable-abi`` would produce a differently-behaving
binary than the author asked for.

Supported keys::

    [general]
    name = "my-kernel"          # required; op namespace and metadata name
    edition = 5                 # required (checked by kernels)
    version = 1                 # required; metadata "version" (the Hub branch is v<version>)
    license = "Apache-2.0"      # required here (metadata carries it)
    backends = ["cpu", "cuda"]  # required
    python-depends = [...]      # optional; copied to metadata "python-depends"
    upstream = "https://..."    # optional; copied to metadata
    source = "https://..."      # optional; copied to metadata

    [torch]
    src = ["torch-ext/torch_binding.h"]  # required, may be empty; compiled for EVERY backend, so keep it to
                                          # files valid for all of them (headers are hashed, not compiled)
    include = ["csrc"]          # optional; extra -I dirs (relative to the kernel dir) for the torch sources
    pyext = ["py", "json"]      # optional; package file extensions copied into the variant (default py, pyi)
    cxx-flags = [...]           # optional; extra flags for the torch sources
    minver = "2.9"              # optional; refuse to build against an older torch
    maxver = "2.14"             # optional; refuse to build against a newer torch (major.minor compared)
    stable-abi = "2.10"         # optional; the sources use torch/csrc/stable only: enables torch-stable-abiXY-*
                                # variants (XY >= this), compiled with -DTORCH_TARGET_VERSION for XY

    [kernel.<section>]
    backend = "cpu" | "cuda"    # required
    depends = ["torch"]         # required; only "torch" is implemented
    src = [...]                 # required; empty only in a capabilities-only cuda section (Triton kernels)
    include = [...]             # optional; -I dirs for this section's sources
    cxx-flags = [...]           # optional; apply to this section's C++ sources only
    cuda-capabilities = [...]   # cuda sections; "8.0", "9.0a", "10.0f", "9.0+PTX" -> -gencode flags and
                                # metadata backend.archs; required when the section has .cu sources
    cuda-flags = [...]          # cuda sections only; extra nvcc flags for this section's .cu sources

Per-backend bindings: ``[torch] src`` is compiled into every backend's library, so a kernel whose op registration
differs per backend (flash-attn2: classic TORCH_LIBRARY for CPU, a torch/csrc/stable binding for CUDA) lists the
binding sources in its ``[kernel.*]`` sections of that backend and keeps only shared headers in ``[torch] src``.

A package-only kernel (Triton or plain torch code, nothing compiled) uses ``[torch-noarch]`` instead of
``[torch]``::

    [torch-noarch]
    pyext = ["py"]                      # optional
    cuda_capabilities = ["9.0"]         # optional; metadata backend.archs of its torch-cuda variant

and builds only noarch variants (``torch-cuda``, ``torch-cpu``).

Not implemented (a clear error names them): ``general.cuda``, ``general.hub``, ``general.kernel-depends``,
``general.neuron``, ``general.tpu``, ``general.xpu``, ``kernel.*.cuda-minver``, the
``[tvm-ffi]`` framework, ``torch-noarch.rocm_archs``, and kernel backends other than cpu and cuda. The kernel directory
itself is always on the include path, so sources may include headers as ``"csrc/cpu/foo.h"``.
"""

from __future__ import annotations

import re
try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
from dataclasses import dataclass
from pathlib import Path

BUILD_FILE = "build.toml"

# Keys we read; everything else that kernels' schema accepts is refused with a "not implemented" error.
_GENERAL_KEYS = {"name", "edition", "version", "license", "backends", "python-depends", "upstream", "source"}
_TORCH_KEYS = {"src", "include", "pyext", "cxx-flags", "minver", "maxver", "stable-abi"}
# Compute capability as kernels.archs parses it: MAJOR.MINOR, optional a/f suffix, optional +PTX.
_CAPABILITY = re.compile(r"^\d+\.\d+[af]?(\+PTX)?\Z")
_KERNEL_KEYS = {
    "cpu": {"backend", "depends", "src", "include", "cxx-flags"},
    "cuda": {"backend", "depends", "src", "include", "cxx-flags", "cuda-capabilities", "cuda-flags"},
}
_TOP_LEVEL = {"general", "torch", "kernel", "torch-noarch"}
_NOARCH_KEYS = {"pyext", "cuda_capabilities"}
_IMPLEMENTED_BACKENDS = ("cpu", "cuda")
_DEFAULT_PYEXT = ("py", "pyi")  # kernel-builder's default


class BuildConfigError(ValueError):
    """build.toml is missing, malformed, or uses something this builder does not implement."""


@dataclass(frozen=True)
class KernelSection:
    """One ``[kernel.<name>]`` table: sources compiled for one backend with their own flags."""

    name: str
    backend: str
    src: tuple[str, ...]
    depends: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    cxx_flags: tuple[str, ...] = ()
    cuda_capabilities: tuple[str, ...] = ()
    cuda_flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class TorchSection:
    src: tuple[str, ...]
    include: tuple[str, ...] = ()
    pyext: tuple[str, ...] = _DEFAULT_PYEXT
    cxx_flags: tuple[str, ...] = ()
    minver: str | None = None
    maxver: str | None = None
    stable_abi: str | None = None  # "2.10"


@dataclass(frozen=True)
class BuildConfig:
    kernel_dir: Path
    name: str  # "flash-attn2"
    version: int
    license: str
    backends: tuple[str, ...]
    torch: TorchSection
    kernels: tuple[KernelSection, ...] = ()
    noarch: bool = False  # [torch-noarch]: package only, noarch variants only
    noarch_cuda_capabilities: tuple[str, ...] = ()  # torch-noarch.cuda_capabilities
    python_depends: tuple[str, ...] = ()
    upstream: str | None = None
    source: str | None = None

    @property
    def python_name(self) -> str:
        """Name of the Python package under torch-ext/ and of the op namespace ("flash_attn2")."""
        return self.name.replace("-", "_")

    @property
    def package_dir(self) -> Path:
        return self.kernel_dir / "torch-ext" / self.python_name

    def sections_for(self, backend: str) -> tuple[KernelSection, ...]:
        return tuple(k for k in self.kernels if k.backend == backend)

    def listed_files(self) -> list[str]:
        """Every source path build.toml names (torch + all kernel sections), relative to the kernel dir."""
        files = list(self.torch.src)
        for k in self.kernels:
            files.extend(k.src)
        return files

    def include_dirs(self) -> list[str]:
        dirs = list(self.torch.include)
        for k in self.kernels:
            dirs.extend(d for d in k.include if d not in dirs)
        return dirs


def load_build_config(kernel_dir: Path) -> BuildConfig:
    """Validate ``kernel_dir/build.toml`` with kernels' own parser, then read the keys we implement."""
    from .. import _kernels

    Build = _kernels.Build

    kernel_dir = Path(kernel_dir).resolve()
    path = kernel_dir / BUILD_FILE
    if not path.is_file():
        raise BuildConfigError(f"{path}: no {BUILD_FILE} here; a kernel directory needs one (kernel-builder edition 5)")
    try:
        Build.open(kernel_dir)
    except ValueError as e:
        detail = " ".join(str(e).split())  # kernels' message spans lines; keep it on one
        # Drop kernels' "Cannot parse ... in <path>:" prefixes; our message names the file once.
        detail = re.sub(r"^Cannot parse build configuration in `[^`]*`: ", "", detail)
        detail = re.sub(r"^Cannot parse TOML in \S+: ", "", detail)
        raise BuildConfigError(f"{path}: rejected by kernels' build.toml validator: {detail}") from None
    with path.open("rb") as f:
        data = tomllib.load(f)
    return _from_toml(kernel_dir, path, data)


def _from_toml(kernel_dir: Path, path: Path, data: dict) -> BuildConfig:
    _refuse_unimplemented(path, "", data, _TOP_LEVEL, hint="frameworks other than [torch] are not implemented")
    general = data.get("general", {})
    _refuse_unimplemented(path, "general.", general, _GENERAL_KEYS)
    for key in ("name", "version", "license", "backends"):
        if key not in general:
            raise BuildConfigError(f"{path}: missing required key general.{key}")
    backends = tuple(general["backends"])
    for b in backends:
        if b not in _IMPLEMENTED_BACKENDS:
            raise BuildConfigError(
                f"{path}: general.backends has {b!r}; this builder implements {', '.join(_IMPLEMENTED_BACKENDS)}"
            )
    if "torch-noarch" in data:
        return _noarch_config(kernel_dir, path, data, general, backends)
    if "torch" not in data:
        raise BuildConfigError(f"{path}: missing [torch] table (with src = [...]); it is the only framework implemented")
    torch = data["torch"]
    _refuse_unimplemented(path, "torch.", torch, _TORCH_KEYS)
    if "src" not in torch:
        raise BuildConfigError(f"{path}: missing required key torch.src (sources compiled for every backend; "
                               f"may be empty)")
    stable_abi = torch.get("stable-abi")
    if stable_abi is not None and not re.fullmatch(r"2\.\d+", str(stable_abi)):
        raise BuildConfigError(f"{path}: torch.stable-abi = {stable_abi!r}; write the oldest torch the stable-ABI "
                               f"variants target as a string like \"2.10\"")

    sections = []
    for sec_name, sec in data.get("kernel", {}).items():
        where = f"kernel.{sec_name}"
        backend = sec.get("backend")
        if backend not in _KERNEL_KEYS:
            raise BuildConfigError(
                f"{path}: {where}.backend = {backend!r}; this builder implements {', '.join(_KERNEL_KEYS)}"
            )
        if backend not in backends:
            raise BuildConfigError(
                f"{path}: {where} has backend {backend!r}, which is not in general.backends {list(backends)}"
            )
        _refuse_unimplemented(path, f"{where}.", sec, _KERNEL_KEYS[backend])
        depends = tuple(sec.get("depends", ()))
        extra = [d for d in depends if d != "torch"]
        if extra:
            raise BuildConfigError(f"{path}: {where}.depends has {extra}; only 'torch' is implemented")
        caps = _check_capabilities(path, f"{where}.cuda-capabilities", sec.get("cuda-capabilities", ()))
        if "src" not in sec or (not sec["src"] and not caps):
            raise BuildConfigError(f"{path}: {where}.src is missing or empty (only a cuda section with "
                                   f"cuda-capabilities may have no sources: it declares archs for Triton code)")
        if any(str(s).endswith(".cu") for s in sec["src"]) and not caps:
            raise BuildConfigError(f"{path}: {where} compiles .cu sources but has no cuda-capabilities "
                                   f"(e.g. cuda-capabilities = [\"8.0\", \"9.0\"])")
        sections.append(
            KernelSection(
                name=sec_name,
                backend=backend,
                src=tuple(sec["src"]),
                depends=depends,
                include=tuple(sec.get("include", ())),
                cxx_flags=tuple(sec.get("cxx-flags", ())),
                cuda_capabilities=caps,
                cuda_flags=tuple(sec.get("cuda-flags", ())),
            )
        )

    config = BuildConfig(
        kernel_dir=kernel_dir,
        name=general["name"],
        version=int(general["version"]),
        license=general["license"],
        backends=backends,
        torch=TorchSection(
            src=tuple(torch["src"]),
            include=tuple(torch.get("include", ())),
            pyext=tuple(torch.get("pyext", _DEFAULT_PYEXT)),
            cxx_flags=tuple(torch.get("cxx-flags", ())),
            minver=torch.get("minver"),
            maxver=torch.get("maxver"),
            stable_abi=stable_abi,
        ),
        kernels=tuple(sections),
        python_depends=tuple(general.get("python-depends", ())),
        upstream=general.get("upstream"),
        source=general.get("source"),
    )
    _check_paths(path, config)
    return config


def _check_capabilities(path: Path, where: str, caps) -> tuple[str, ...]:
    for cap in caps:
        if not isinstance(cap, str) or not _CAPABILITY.match(cap):
            raise BuildConfigError(
                f"{path}: {where} has {cap!r}; write compute capabilities as MAJOR.MINOR "
                f"with an optional a/f suffix or +PTX, e.g. \"8.0\", \"9.0a\", \"10.0f\", \"9.0+PTX\" "
                f"(not \"sm_90\")"
            )
    return tuple(caps)


def _noarch_config(kernel_dir: Path, path: Path, data: dict, general: dict, backends: tuple[str, ...]) -> BuildConfig:
    if "torch" in data:
        raise BuildConfigError(f"{path}: has both [torch] and [torch-noarch]; a kernel is either compiled or not")
    if data.get("kernel"):
        raise BuildConfigError(f"{path}: [torch-noarch] kernels compile nothing, so [kernel.*] sections are not "
                               f"allowed; declare GPU archs with torch-noarch.cuda_capabilities")
    noarch = data["torch-noarch"]
    _refuse_unimplemented(path, "torch-noarch.", noarch, _NOARCH_KEYS)
    caps = _check_capabilities(path, "torch-noarch.cuda_capabilities", noarch.get("cuda_capabilities", ()))
    config = BuildConfig(
        kernel_dir=kernel_dir,
        name=general["name"],
        version=int(general["version"]),
        license=general["license"],
        backends=backends,
        torch=TorchSection(src=(), pyext=tuple(noarch.get("pyext", _DEFAULT_PYEXT))),
        noarch=True,
        noarch_cuda_capabilities=caps,
        python_depends=tuple(general.get("python-depends", ())),
        upstream=general.get("upstream"),
        source=general.get("source"),
    )
    _check_paths(path, config)
    return config


def _refuse_unimplemented(path: Path, prefix: str, table: dict, allowed: set[str], hint: str = "") -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        names = ", ".join(prefix + k for k in unknown)
        raise BuildConfigError(
            f"{path}: {names} {'is' if len(unknown) == 1 else 'are'} valid kernel-builder keys but not implemented by "
            f"kernel_loader's builder{'; ' + hint if hint else ''} (supported {prefix or 'tables'}: "
            f"{', '.join(sorted(allowed))})"
        )


def _check_paths(path: Path, config: BuildConfig) -> None:
    root = config.kernel_dir
    for rel in config.listed_files():
        p = (root / rel).resolve()
        if not p.is_relative_to(root):
            raise BuildConfigError(f"{path}: source {rel!r} points outside the kernel directory")
        if not p.is_file():
            raise BuildConfigError(f"{path}: source {rel!r} listed in build.toml does not exist")
    for rel in config.include_dirs():
        if not (root / rel).is_dir():
            raise BuildConfigError(f"{path}: include dir {rel!r} listed in build.toml does not exist")
    if not config.package_dir.is_dir():
        raise BuildConfigError(
            f"{path}: the Python package torch-ext/{config.python_name}/ is missing (name {config.name!r} maps to it)"
        )
