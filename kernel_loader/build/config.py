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
    src = ["torch-ext/torch_binding.cpp", "torch-ext/torch_binding.h"]  # required; headers are hashed, not compiled
    include = ["csrc"]          # optional; extra -I dirs (relative to the kernel dir) for the torch sources
    pyext = ["py", "json"]      # optional; package file extensions copied into the variant (default py, pyi)
    cxx-flags = [...]           # optional; extra flags for the torch sources
    minver = "2.9"              # optional; refuse to build against an older torch
    maxver = "2.14"             # optional; refuse to build against a newer torch (major.minor compared)

    [kernel.<section>]
    backend = "cpu" | "cuda"    # required
    depends = ["torch"]         # required; only "torch" is implemented
    src = [...]                 # required
    include = [...]             # optional; -I dirs for this section's sources
    cxx-flags = [...]           # optional; apply to this section's C++ sources only
    cuda-capabilities = [...]   # cuda sections only (read now, used by the CUDA backend)
    cuda-flags = [...]          # cuda sections only

Not implemented (a clear error names them): ``general.cuda``, ``general.hub``, ``general.kernel-depends``,
``general.neuron``, ``general.tpu``, ``general.xpu``, ``torch.stable-abi``, ``kernel.*.cuda-minver``, the
``[tvm-ffi]`` / ``[torch-noarch]`` frameworks, and kernel backends other than cpu and cuda. The kernel directory
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
_TORCH_KEYS = {"src", "include", "pyext", "cxx-flags", "minver", "maxver"}
_KERNEL_KEYS = {
    "cpu": {"backend", "depends", "src", "include", "cxx-flags"},
    "cuda": {"backend", "depends", "src", "include", "cxx-flags", "cuda-capabilities", "cuda-flags"},
}
_TOP_LEVEL = {"general", "torch", "kernel"}
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


@dataclass(frozen=True)
class BuildConfig:
    kernel_dir: Path
    name: str  # "flash-attn2"
    version: int
    license: str
    backends: tuple[str, ...]
    torch: TorchSection
    kernels: tuple[KernelSection, ...] = ()
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
    from kernels._rust import Build

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
    if "torch" not in data:
        raise BuildConfigError(f"{path}: missing [torch] table (with src = [...]); it is the only framework implemented")
    torch = data["torch"]
    _refuse_unimplemented(path, "torch.", torch, _TORCH_KEYS)
    if not torch.get("src"):
        raise BuildConfigError(f"{path}: missing required key torch.src (the op registration sources)")

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
        if not sec.get("src"):
            raise BuildConfigError(f"{path}: {where}.src is missing or empty")
        sections.append(
            KernelSection(
                name=sec_name,
                backend=backend,
                src=tuple(sec["src"]),
                depends=depends,
                include=tuple(sec.get("include", ())),
                cxx_flags=tuple(sec.get("cxx-flags", ())),
                cuda_capabilities=tuple(sec.get("cuda-capabilities", ())),
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
        ),
        kernels=tuple(sections),
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
