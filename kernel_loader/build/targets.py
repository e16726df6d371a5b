"""What a variant name asks the builder for: :class:`Target`.

Three kinds of variant are built:

- ``torchXY-cxx11-<backend>-<arch>-<os>`` (kind "torch"): compiled against exactly torch X.Y; for CUDA
  (``cu130``) against a torch built for that CUDA, with the nvcc of that CUDA.
- ``torch-stable-abiXY-<backend>-<arch>-<os>`` (kind "stable-abi"): sources written against torch/csrc/stable,
  compiled with ``-DTORCH_TARGET_VERSION`` for X.Y against any torch >= X.Y (of the same CUDA); loads on every
  torch >= X.Y. build.toml must declare ``torch.stable-abi``.
- ``torch-<backend>`` (kind "noarch", e.g. ``torch-cuda``): the Python package only (Triton or pure torch code),
  no library; ``_ops.ops`` is None.

Arch variants are built for this machine's CPU architecture and OS only (no cross-compiling).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

from ..variants import variant_name as _variant_name
from .backends import BuildError
from .config import BuildConfig


@dataclass(frozen=True)
class Target:
    variant: str  # the full variant name
    kind: str  # "torch" | "stable-abi" | "noarch"
    backend: str  # "cpu" | "cuda"
    torch_minor: str | None = None  # kind "torch": "2.14"
    stable_abi: str | None = None  # kind "stable-abi": "2.10"
    cuda: str | None = None  # cuda arch variants: "13.0"
    cxx11_abi: bool | None = None

    @property
    def compiled(self) -> bool:
        return self.kind != "noarch"

    @property
    def target_version_define(self) -> str | None:
        """``-DTORCH_TARGET_VERSION=...`` value for stable-ABI builds: MAJOR<<56 | MINOR<<48, as torch encodes it."""
        if self.stable_abi is None:
            return None
        major, minor = (int(x) for x in self.stable_abi.split("."))
        return f"0x{(major << 56) | (minor << 48):016x}"

    def needs(self) -> str:
        """What torch this target compiles against, in words (for errors)."""
        cuda = f" built for CUDA {self.cuda}" if self.cuda else ""
        if self.kind == "stable-abi":
            return f"variant {self.variant} needs torch >= {self.stable_abi}{cuda}"
        return f"variant {self.variant} needs torch {self.torch_minor}{cuda}"

    def accepts(self, env) -> bool:
        """Can ``env`` (a TorchEnv) compile this target?"""
        from packaging.version import Version

        if env.cuda != self.cuda:  # cpu variants are compiled against a CPU build of torch
            return False
        if self.kind == "torch":
            return env.minor == self.torch_minor and (self.cxx11_abi is None or env.cxx11_abi == self.cxx11_abi)
        if self.kind == "stable-abi":
            return Version(env.minor) >= Version(self.stable_abi)
        return True


def machine() -> tuple[str, str]:
    """(cpu architecture, os) as kernels spells them in variant names."""
    system = platform.system().lower()
    cpu = platform.machine()
    if system == "windows" and cpu == "AMD64":
        cpu = "x86_64"
    if system == "darwin" and cpu == "arm64":
        cpu = "aarch64"
    return cpu, system


def cuda_tag(version: str) -> str:
    """"13.0" -> "cu130" """
    major, minor = version.split(".")[:2]
    return f"cu{major}{minor}"


def variant_name(kind: str, backend: str, *, torch_minor: str | None = None, stable_abi: str | None = None,
                 cuda: str | None = None, cxx11_abi: bool | None = True) -> str:
    """Variant string for this machine's CPU architecture and OS (:func:`kernel_loader.variants.variant_name`)."""
    cpu, system = machine()
    return _variant_name(kind, backend, platform=cpu, os=system, torch_minor=torch_minor, stable_abi=stable_abi,
                         cuda=cuda, cxx11_abi=cxx11_abi)


def parse_target(requested: str, config: BuildConfig) -> Target:
    """Validate a variant name against build.toml and this machine; BuildError naming the variant otherwise."""
    from kernels.variants import ArchVariant, NoarchVariant, Torch, TorchStableAbi, parse_variant

    where = config.kernel_dir / "build.toml"
    example = variant_name("torch", "cpu", torch_minor="2.13")
    try:
        parsed = parse_variant(requested)
    except ValueError as e:
        raise BuildError(f"variant {requested!r} is not a variant name ({e}); example: {example}") from None
    if isinstance(parsed, NoarchVariant):
        backend = parsed.arch.backend_name
        if backend not in config.backends:
            raise BuildError(f"variant {requested!r} is for backend {backend!r}; {where} declares "
                             f"general.backends = {list(config.backends)}")
        return Target(variant=requested, kind="noarch", backend=backend)
    assert isinstance(parsed, ArchVariant)
    be = parsed.arch.backend
    backend = be.name
    if backend not in ("cpu", "cuda"):
        raise BuildError(f"variant {requested!r}: backend {backend!r} is not built here (cpu and cuda are)")
    if backend not in config.backends:
        raise BuildError(f"variant {requested!r} is for backend {backend!r}; {where} declares "
                         f"general.backends = {list(config.backends)}")
    cpu, system = machine()
    if (parsed.arch.platform, parsed.arch.os) != (cpu, system):
        raise BuildError(f"variant {requested!r} is for {parsed.arch.platform}-{parsed.arch.os}; this machine "
                         f"builds {cpu}-{system} only (no cross-compiling)")
    cuda = f"{be.version.major}.{be.version.minor}" if backend == "cuda" else None
    fw = parsed.framework
    if isinstance(fw, TorchStableAbi):
        declared = config.torch.stable_abi
        if declared is None:
            raise BuildError(f"variant {requested!r} is a stable-ABI variant but {where} does not declare "
                             f"torch.stable-abi (the sources must be written against torch/csrc/stable)")
        from packaging.version import Version

        version = f"{fw.version.major}.{fw.version.minor}"
        if Version(version) < Version(declared):
            raise BuildError(f"variant {requested!r} targets stable ABI {version}, older than torch.stable-abi = "
                             f"{declared!r} in {where}")
        target = Target(variant=requested, kind="stable-abi", backend=backend, stable_abi=version, cuda=cuda)
    elif isinstance(fw, Torch):
        target = Target(variant=requested, kind="torch", backend=backend,
                        torch_minor=f"{fw.version.major}.{fw.version.minor}", cuda=cuda, cxx11_abi=fw.cxx11_abi)
    else:
        raise BuildError(f"variant {requested!r}: tvm-ffi variants are not implemented")
    canonical = target_name(target)
    if canonical != requested:
        raise BuildError(f"variant {requested!r} is not in canonical form; did you mean {canonical!r}?")
    return target


def target_name(t: Target) -> str:
    return variant_name(t.kind, t.backend, torch_minor=t.torch_minor, stable_abi=t.stable_abi, cuda=t.cuda,
                        cxx11_abi=t.cxx11_abi)
