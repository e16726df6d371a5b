"""Per-backend build plans: which sources to compile, with which flags, and how to link them.

One ``plan_<backend>`` function per backend turns a :class:`BuildConfig` into a :class:`BuildPlan`; the compile
step (``compile.py``) only executes plans and knows nothing about backends. Adding CUDA means writing
``plan_cuda`` (nvcc rule, ``-gencode`` from ``cuda-capabilities``, ``backend.archs`` in metadata) and
registering it in ``PLANNERS``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from .config import BuildConfig

CXX_SUFFIXES = (".cpp", ".cc", ".cxx", ".c")
HEADER_SUFFIXES = (".h", ".hh", ".hpp", ".hxx", ".cuh", ".inc")


class BuildError(RuntimeError):
    """A build could not be planned, compiled, linked or installed."""


@dataclass(frozen=True)
class CompileUnit:
    """One source file and the flags that apply to it on top of the plan's common flags."""

    src: str  # relative to the kernel dir
    rule: str  # "cxx" (a future CUDA plan adds "cuda")
    flags: tuple[str, ...] = ()
    origin: str = "torch"  # "torch" or the [kernel.<name>] section it came from


@dataclass(frozen=True)
class BuildPlan:
    backend: str  # "cpu"
    ops_id: str  # "_flash_attn2_cpu_<rev>"; op namespace, library stem, TORCH_EXTENSION_NAME
    cxx: str
    units: tuple[CompileUnit, ...]
    cflags: tuple[str, ...]  # common to every C++ unit
    include_dirs: tuple[str, ...]  # -I, absolute; kept apart from flags so build-info.json stays machine-neutral
    system_include_dirs: tuple[str, ...]  # -isystem (torch, Python): their warnings are not the kernel's
    ldflags: tuple[str, ...]
    metadata_backend: dict  # metadata.json "backend" value
    info: dict = field(default_factory=dict)  # recorded in build-info.json

    @property
    def library_name(self) -> str:
        return f"{self.ops_id}.abi3.so"


def compiler() -> str:
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        raise BuildError(f"C++ compiler {cxx!r} not found; install g++ or set CXX to a compiler on PATH")
    return cxx


def compiler_version(cxx: str) -> str:
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout
        return out.splitlines()[0].strip()
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "unknown"


def _torch_common(ops_id: str) -> tuple[list[str], list[str], list[str]]:
    """cflags, include dirs and ldflags every torch C++ extension needs, whatever the backend."""
    import torch
    from torch.utils import cpp_extension

    cflags = [
        "-O3",
        "-std=c++17",
        "-fPIC",
        f"-DTORCH_EXTENSION_NAME={ops_id}",
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
    ]
    includes = [*cpp_extension.include_paths(), sysconfig.get_paths()["include"]]
    libdirs = cpp_extension.library_paths()
    libs = ["c10", "torch", "torch_cpu"]
    # torch_python only when a binding uses pybind/THP; --as-needed drops it (and any other unused lib) otherwise.
    if any((Path(d) / "libtorch_python.so").exists() for d in libdirs):
        libs.append("torch_python")
    # No rpath: torch's libraries are already loaded (by soname) when torch.ops.load_library runs.
    ldflags = ["-shared", "-Wl,--as-needed", *(f"-L{d}" for d in libdirs), *(f"-l{lib}" for lib in libs)]
    return cflags, includes, ldflags


def _units(config: BuildConfig, backend: str, suffixes: tuple[str, ...]) -> list[CompileUnit]:
    units: list[CompileUnit] = []
    seen: dict[str, str] = {}

    def add(src: str, flags: tuple[str, ...], origin: str) -> None:
        suffix = Path(src).suffix
        if suffix in HEADER_SUFFIXES:
            return  # hashed into the revision, compiled through the sources that include it
        if suffix not in suffixes:
            raise BuildError(
                f"{config.kernel_dir / 'build.toml'}: {origin} lists {src!r}; a {backend} build compiles "
                f"{', '.join(suffixes)} sources (headers {', '.join(HEADER_SUFFIXES)} are allowed too)"
            )
        if src in seen:
            raise BuildError(f"{config.kernel_dir / 'build.toml'}: {src!r} is listed by both {seen[src]} and {origin}")
        seen[src] = origin
        units.append(CompileUnit(src=src, rule="cxx", flags=flags, origin=origin))

    for src in config.torch.src:
        add(src, config.torch.cxx_flags, "torch")
    for section in config.sections_for(backend):
        for src in section.src:
            add(src, section.cxx_flags, f"kernel.{section.name}")
    return units


def _section_includes(config: BuildConfig, backend: str) -> list[str]:
    rel = [*config.torch.include]
    for section in config.sections_for(backend):
        rel.extend(d for d in section.include if d not in rel)
    # The kernel dir itself comes first so sources can include "csrc/..." paths.
    return [str(config.kernel_dir), *(str(config.kernel_dir / d) for d in rel)]


def plan_cpu(config: BuildConfig, ops_id: str) -> BuildPlan:
    """CPU: OpenMP C++17 build linked against torch's CPU libraries.

    No -march=native: a published variant must run on any x86_64/aarch64 host of its name, so ISA-specific
    code (AVX-512, AMX) belongs behind runtime dispatch or in a section's own cxx-flags.
    """
    cxx = compiler()
    cflags, torch_includes, ldflags = _torch_common(ops_id)
    cflags.append("-fopenmp")
    ldflags.insert(1, "-fopenmp")
    units = _units(config, "cpu", CXX_SUFFIXES)
    if not units:
        raise BuildError(f"{config.kernel_dir / 'build.toml'}: nothing to compile for cpu (no C++ sources listed)")
    return BuildPlan(
        backend="cpu",
        ops_id=ops_id,
        cxx=cxx,
        units=tuple(units),
        cflags=tuple(cflags),
        include_dirs=tuple(_section_includes(config, "cpu")),
        system_include_dirs=tuple(torch_includes),
        ldflags=tuple(ldflags),
        metadata_backend={"type": "cpu"},
        info={"compiler": compiler_version(cxx)},
    )


# backend name (as in build.toml) -> planner. CUDA comes with its own issue.
PLANNERS = {"cpu": plan_cpu}
