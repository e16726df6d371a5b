"""Per-backend build plans: which sources to compile, with which flags, and how to link them.

One ``plan_<backend>`` function per backend turns a :class:`BuildConfig`, a :class:`~.targets.Target` (which
variant) and a :class:`~.torchenv.TorchEnv` (which torch to compile against, possibly another interpreter's) into
a :class:`BuildPlan`; the compile step (``compile.py``) only executes plans and knows nothing about backends.
Nothing here imports torch: every torch path comes from the TorchEnv.

CUDA: ``.cu`` sources go through nvcc with one ``-gencode arch=compute_XY,code=sm_XY`` per
``cuda-capabilities`` entry of their section (``+PTX`` adds ``code=compute_XY``), C++ sources of cuda sections
through the host compiler with ``-DUSE_CUDA`` and the CUDA headers; the library links torch_cpu, torch_cuda, c10
and the shared cudart (whose soname torch has already loaded). Stable-ABI targets add
``-DTORCH_TARGET_VERSION=0x<MAJ><MIN>000000000000`` to every unit. metadata.json ``backend.archs`` lists the
capabilities every cuda section was built for.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .config import BuildConfig, KernelSection

CXX_SUFFIXES = (".cpp", ".cc", ".cxx", ".c")
HEADER_SUFFIXES = (".h", ".hh", ".hpp", ".hxx", ".cuh", ".inc")


class BuildError(RuntimeError):
    """A build could not be planned, compiled, linked or installed."""


@dataclass(frozen=True)
class CompileUnit:
    """One source file and the flags that apply to it on top of the plan's common flags."""

    src: str  # relative to the kernel dir
    rule: str  # "cxx" or "cuda" (nvcc)
    flags: tuple[str, ...] = ()
    origin: str = "torch"  # "torch" or the [kernel.<name>] section it came from


@dataclass(frozen=True)
class BuildPlan:
    backend: str  # "cpu" | "cuda"
    ops_id: str  # "_flash_attn2_cpu_<rev>"; op namespace, library stem, TORCH_EXTENSION_NAME
    metadata_backend: dict  # metadata.json "backend" value
    cxx: str = ""
    units: tuple[CompileUnit, ...] = ()  # empty: a package-only (noarch) variant, no library
    cflags: tuple[str, ...] = ()  # common to every C++ unit
    include_dirs: tuple[str, ...] = ()  # -I, absolute; kept apart from flags so build-info.json stays machine-neutral
    system_include_dirs: tuple[str, ...] = ()  # -isystem (torch, Python, CUDA): their warnings are not the kernel's
    ldflags: tuple[str, ...] = ()
    nvcc: str = ""
    cuda_flags: tuple[str, ...] = ()  # common to every .cu unit (per-section -gencode go on the unit)
    abi_policy: dict = field(default_factory=dict)  # what the ABI check enforces (see abicheck.py)
    info: dict = field(default_factory=dict)  # recorded in build-info.json

    @property
    def compiled(self) -> bool:
        return bool(self.units)

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


CUDA_SUFFIXES = (".cu",)
# The glibc floor the ABI check enforces by default. Built on a glibc >= 2.32 host, libstdc++'s inline code in any
# C++ extension references __libc_single_threaded@GLIBC_2.32, and cudart / the stable-ABI headers dlsym@GLIBC_2.34,
# so a kernel repo's own sources fail a 2.28 floor unless it takes care (our kernels do: the CPU variants define
# the symbol themselves, csrc/cpu/glibc_compat.cpp, and the CUDA ones are AOT builds whose launcher dlopens libcuda;
# tests check every variant of ours needs glibc <= 2.28). The default is therefore manylinux_2_34; build-info and
# metadata record the glibc each variant really needs, and KERNEL_LOADER_MANYLINUX=manylinux_2_28 enforces torch's
# own floor (what our CI builds meet).
MANYLINUX_ENV = "KERNEL_LOADER_MANYLINUX"
DEFAULT_MANYLINUX = "manylinux_2_34"
PYTHON_ABI3 = "3.9"  # the .abi3.so suffix promises the Python stable ABI from 3.9 on


def _torch_common(env, ops_id: str) -> tuple[list[str], list[str], list[str]]:
    """cflags, include dirs and ldflags every torch C++ extension needs, whatever the backend."""
    cflags = [
        "-O3",
        "-std=c++17",
        "-fPIC",
        f"-DTORCH_EXTENSION_NAME={ops_id}",
        f"-D_GLIBCXX_USE_CXX11_ABI={int(env.cxx11_abi)}",
    ]
    libs = ["c10", "torch", "torch_cpu"]
    # torch_python only when a binding uses pybind/THP; --as-needed drops it (and any other unused lib) otherwise.
    if env.has_library("torch_python"):
        libs.append("torch_python")
    # No rpath: torch's libraries are already loaded (by soname) when torch.ops.load_library runs.
    ldflags = ["-shared", "-Wl,--as-needed", *(f"-L{d}" for d in env.library_dirs), *(f"-l{lib}" for lib in libs)]
    return cflags, list(env.include_dirs), ldflags


def _units(config: BuildConfig, backend: str, rules: dict[str, str],
           flags_for=None) -> list[CompileUnit]:
    """Compile units of ``[torch] src`` and the backend's sections. ``rules``: suffix -> rule.
    ``flags_for(section, rule) -> flags`` (section None for [torch]); default: the section's cxx-flags."""
    units: list[CompileUnit] = []
    seen: dict[str, str] = {}

    def default_flags(section: KernelSection | None, rule: str) -> tuple[str, ...]:
        return config.torch.cxx_flags if section is None else section.cxx_flags

    flags_for = flags_for or default_flags

    def add(src: str, section: KernelSection | None) -> None:
        origin = "torch" if section is None else f"kernel.{section.name}"
        suffix = Path(src).suffix
        if suffix in HEADER_SUFFIXES:
            return  # hashed into the revision, compiled through the sources that include it
        if suffix not in rules:
            raise BuildError(
                f"{config.kernel_dir / 'build.toml'}: {origin} lists {src!r}; a {backend} build compiles "
                f"{', '.join(rules)} sources (headers {', '.join(HEADER_SUFFIXES)} are allowed too)"
            )
        if src in seen:
            raise BuildError(f"{config.kernel_dir / 'build.toml'}: {src!r} is listed by both {seen[src]} and {origin}")
        seen[src] = origin
        rule = rules[suffix]
        units.append(CompileUnit(src=src, rule=rule, flags=tuple(flags_for(section, rule)), origin=origin))

    for src in config.torch.src:
        add(src, None)
    for section in config.sections_for(backend):
        for src in section.src:
            add(src, section)
    return units


def _section_includes(config: BuildConfig, backend: str) -> list[str]:
    rel = [*config.torch.include]
    for section in config.sections_for(backend):
        rel.extend(d for d in section.include if d not in rel)
    # The kernel dir itself comes first so sources can include "csrc/..." paths.
    return [str(config.kernel_dir), *(str(config.kernel_dir / d) for d in rel)]


def _stable_abi_flags(target) -> list[str]:
    return [f"-DTORCH_TARGET_VERSION={target.target_version_define}"] if target.kind == "stable-abi" else []


def _abi_policy(target) -> dict:
    return {
        "manylinux": os.environ.get(MANYLINUX_ENV) or DEFAULT_MANYLINUX,
        "python_abi3": PYTHON_ABI3,
        "torch_stable_abi": target.kind == "stable-abi",
    }


def plan_cpu(config: BuildConfig, target, env, ops_id: str) -> BuildPlan:
    """CPU: OpenMP C++17 build linked against torch's CPU libraries.

    No -march=native: a published variant must run on any x86_64/aarch64 host of its name, so ISA-specific
    code (AVX-512, AMX) belongs behind runtime dispatch or in a section's own cxx-flags.
    """
    cxx = compiler()
    cflags, torch_includes, ldflags = _torch_common(env, ops_id)
    cflags += ["-fopenmp", *_stable_abi_flags(target)]
    ldflags.insert(1, "-fopenmp")
    units = _units(config, "cpu", {s: "cxx" for s in CXX_SUFFIXES})
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
        abi_policy=_abi_policy(target),
        info={"compiler": compiler_version(cxx)},
    )


# ---------------------------------------------------------------- CUDA


def nvcc_path() -> str:
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    found = shutil.which("nvcc")
    if found is None:
        raise BuildError("nvcc not found; a CUDA variant needs the CUDA toolkit (put nvcc on PATH or set CUDA_HOME)")
    return found


def nvcc_version(nvcc: str) -> str:
    """"13.0" from `nvcc --version` ("Cuda compilation tools, release 13.0, V13.0.88")."""
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise BuildError(f"{nvcc} --version failed: {e}") from None
    m = re.search(r"release (\d+)\.(\d+)", out)
    if not m:
        raise BuildError(f"cannot read the CUDA version from `{nvcc} --version`: {out.strip()[-200:]}")
    return f"{m.group(1)}.{m.group(2)}"


def gencode_flags(capabilities: tuple[str, ...]) -> list[str]:
    """ "8.0" -> -gencode arch=compute_80,code=sm_80; "9.0a" -> ..._90a; "9.0+PTX" adds code=compute_90 too."""
    flags: list[str] = []
    for cap in capabilities:
        ptx = cap.endswith("+PTX")
        base = cap[: -len("+PTX")] if ptx else cap
        num = base.replace(".", "")
        flags += ["-gencode", f"arch=compute_{num},code=sm_{num}"]
        if ptx:
            flags += ["-gencode", f"arch=compute_{num},code=compute_{num}"]
    return flags


def cuda_archs(config: BuildConfig) -> list[str]:
    """metadata backend.archs: capabilities every capability-declaring cuda section was built for (a GPU must
    run all of the library's code), in build.toml order."""
    if config.noarch:
        return list(config.noarch_cuda_capabilities)
    declared = [s.cuda_capabilities for s in config.sections_for("cuda") if s.cuda_capabilities]
    if not declared:
        return []
    common = [c for c in declared[0] if all(c in d for d in declared[1:])]
    if not common:
        raise BuildError(f"{config.kernel_dir / 'build.toml'}: the cuda sections' cuda-capabilities have no "
                         f"capability in common ({[list(d) for d in declared]}); no GPU could run the library")
    return common


def _cuda_home(nvcc: str) -> Path:
    """Toolkit root (include/cuda_runtime.h, lib64/libcudart.so). nvcc may be a wrapper script elsewhere on PATH
    (e.g. /usr/local/bin/nvcc exec-ing /usr/local/cuda-13.0/bin/nvcc), so ask nvcc itself when CUDA_HOME is unset."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), str(Path(nvcc).resolve().parent.parent)]
    try:
        out = subprocess.run([nvcc, "--dryrun", "--version"], capture_output=True, text=True).stderr
        m = re.search(r"^#\$ TOP=(.+)$", out, re.M)
        if m:
            candidates.append(str(Path(m.group(1).strip()).resolve()))
    except OSError:
        pass
    candidates.append("/usr/local/cuda")
    for c in candidates:
        if c and (Path(c) / "include" / "cuda_runtime.h").is_file():
            return Path(c)
    raise BuildError(f"cannot find the CUDA toolkit of {nvcc} (no include/cuda_runtime.h); set CUDA_HOME")


def plan_cuda(config: BuildConfig, target, env, ops_id: str) -> BuildPlan:
    """CUDA: nvcc for .cu sources, the host compiler for C++ (with -DUSE_CUDA), linked against torch's CUDA libs."""
    cxx = compiler()
    nvcc = nvcc_path()
    have = nvcc_version(nvcc)
    if have != target.cuda:
        raise BuildError(f"variant {target.variant} needs nvcc for CUDA {target.cuda}; {nvcc} is CUDA {have} "
                         f"(set CUDA_HOME to a CUDA {target.cuda} toolkit)")
    if env.cuda != target.cuda:
        raise BuildError(f"variant {target.variant} needs a torch built for CUDA {target.cuda}; "
                         f"{env.describe()} is not")
    cuda_home = _cuda_home(nvcc)
    cflags, torch_includes, ldflags = _torch_common(env, ops_id)
    stable = _stable_abi_flags(target)
    cflags += ["-DUSE_CUDA", *stable]
    cuda_includes = [str(cuda_home / "include")]
    cuda_flags = [
        "-O3",
        "-std=c++17",
        "-Xcompiler", "-fPIC",
        f"-DTORCH_EXTENSION_NAME={ops_id}",
        f"-D_GLIBCXX_USE_CXX11_ABI={int(env.cxx11_abi)}",
        "-DUSE_CUDA",
        *stable,
        "--expt-relaxed-constexpr",
        f"-ccbin={cxx}" if os.path.sep in cxx else f"-ccbin={shutil.which(cxx) or cxx}",
    ]

    def flags_for(section: KernelSection | None, rule: str) -> tuple[str, ...]:
        if section is None:
            return config.torch.cxx_flags
        if rule == "cuda":
            return (*gencode_flags(section.cuda_capabilities), *section.cuda_flags)
        return section.cxx_flags

    units = _units(config, "cuda", {**{s: "cxx" for s in CXX_SUFFIXES}, **{s: "cuda" for s in CUDA_SUFFIXES}},
                   flags_for)
    if not units:
        raise BuildError(f"{config.kernel_dir / 'build.toml'}: nothing to compile for cuda (no .cu or C++ sources "
                         f"listed); build the noarch variant torch-cuda for Triton-only kernels")
    libs = [f"-l{lib}" for lib in ("torch_cuda", "c10_cuda") if env.has_library(lib)]
    cudart_dirs = [d for d in (cuda_home / "lib64", cuda_home / "lib") if (d / "libcudart.so").exists()]
    ldflags += [*libs, *(f"-L{d}" for d in cudart_dirs), "-lcudart"]
    archs = cuda_archs(config)
    info = {"compiler": compiler_version(cxx), "nvcc": f"CUDA {have}", "cuda_capabilities": archs}
    if target.kind == "stable-abi":
        info["torch_target_version"] = target.stable_abi
    return BuildPlan(
        backend="cuda",
        ops_id=ops_id,
        cxx=cxx,
        units=tuple(units),
        cflags=tuple(cflags),
        include_dirs=tuple(_section_includes(config, "cuda")),
        system_include_dirs=(*torch_includes, *cuda_includes),
        ldflags=tuple(ldflags),
        nvcc=nvcc,
        cuda_flags=tuple(cuda_flags),
        metadata_backend={"type": "cuda", "archs": archs} if archs else {"type": "cuda"},
        abi_policy=_abi_policy(target),
        info=info,
    )


def plan_noarch(config: BuildConfig, target, ops_id: str) -> BuildPlan:
    """Package-only variant (``torch-cuda``, ``torch-cpu``): no compile, no library; archs still travel in
    metadata so the loader refuses a Triton kernel on GPUs it was not written for."""
    backend: dict = {"type": target.backend}
    if target.backend == "cuda":
        archs = cuda_archs(config)
        if archs:
            backend["archs"] = archs
    return BuildPlan(backend=target.backend, ops_id=ops_id, metadata_backend=backend, info={"noarch": True})


# backend name (as in build.toml) -> planner of its compiled variants.
PLANNERS = {"cpu": plan_cpu, "cuda": plan_cuda}
