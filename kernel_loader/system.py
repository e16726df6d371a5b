"""What this machine is, in the terms build variants are named by.

The backend detection is the `kernels` library's own (its private ``_backend``, reached through
:mod:`kernel_loader._kernels`) so that our view of the
machine and the stock client's never disagree; we only add what it does not report (GPU capability and name,
CPU features, glibc) for ``doctor`` and for error messages.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import asdict, dataclass, field

from . import _kernels


@dataclass(frozen=True)
class SystemInfo:
    torch_version: str  # "2.13" (major.minor; patch and local tags dropped)
    torch_full_version: str  # "2.13.0+cpu"
    cxx11_abi: bool | None
    backend: str  # variant backend tag: "cpu", "cu130", "rocm64", ...
    platform: str  # "x86_64", "aarch64"
    os: str  # "linux", "darwin", "windows"
    cuda_version: str | None = None  # CUDA torch was built with
    gpu_name: str | None = None
    gpu_capability: str | None = None  # "9.0"
    cpu_features: tuple[str, ...] = field(default_factory=tuple)  # avx512f, avx512_bf16, amx_bf16 ...
    glibc: str | None = None
    python: str = platform.python_version()

    @property
    def torch_tag(self) -> str:
        major, minor = self.torch_version.split(".")[:2]
        return f"torch{major}{minor}"

    @property
    def variant(self) -> str:
        """The exact-torch variant name this machine would build, e.g. torch213-cxx11-cpu-x86_64-linux."""
        abi = "" if self.cxx11_abi is None else ("-cxx11" if self.cxx11_abi else "-cxx98")
        return f"{self.torch_tag}{abi}-{self.backend}-{self.platform}-{self.os}"

    def as_dict(self) -> dict:
        d = asdict(self)
        d["variant"] = self.variant
        return d


_CPU_FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_vnni",
                          "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve")


def _cpu_features() -> tuple[str, ...]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    have = set(line.split(":", 1)[1].split())
                    return tuple(flag for flag in _CPU_FLAGS_OF_INTEREST if flag in have)
    except OSError:
        pass
    return ()


@functools.lru_cache(maxsize=1)
def detect() -> SystemInfo:
    """Detect once per process; the answer cannot change while torch is loaded."""
    import torch

    machine, os_name = _kernels.platform().split("-", 1)
    ver = torch.__version__.split("+")[0].split(".")
    gpu_name = gpu_cap = None
    if torch.cuda.is_available():
        gpu_name = torch.cuda.get_device_name()
        major, minor = torch.cuda.get_device_capability()
        gpu_cap = f"{major}.{minor}"
    libc, libc_ver = platform.libc_ver()
    return SystemInfo(
        torch_version=f"{ver[0]}.{ver[1]}",
        torch_full_version=torch.__version__,
        cxx11_abi=torch.compiled_with_cxx11_abi() if os_name == "linux" else None,
        backend=_kernels.backend().variant_str,
        platform=machine,
        os=os_name,
        cuda_version=torch.version.cuda,
        gpu_name=gpu_name,
        gpu_capability=gpu_cap,
        cpu_features=_cpu_features(),
        glibc=libc_ver if libc == "glibc" else None,
    )
