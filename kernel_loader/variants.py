"""Build variant names, made and read with the `kernels` library's own classes (so every name we emit is one the
stock client parses and resolves), and the torch device a variant runs on."""

from __future__ import annotations


def variant_name(kind: str, backend: str, *, platform: str, os: str, torch_minor: str | None = None,
                 stable_abi: str | None = None, cuda: str | None = None, cxx11_abi: bool | None = True) -> str:
    """``kind`` "torch" (exact torch X.Y), "stable-abi" (torch >= X.Y) or "noarch"; ``backend`` "cpu" or "cuda"."""
    from kernels.backends import CPU, CUDA
    from kernels.variants import Arch, ArchVariant, Noarch, NoarchVariant, Torch, TorchNoarch, TorchStableAbi
    from packaging.version import Version

    if kind == "noarch":
        return NoarchVariant(framework=TorchNoarch(), arch=Noarch(backend_name=backend)).variant_str
    be = CUDA(version=Version(cuda)) if backend == "cuda" else CPU()
    if kind == "stable-abi":
        framework = TorchStableAbi(version=Version(stable_abi))
    else:
        framework = Torch(version=Version(torch_minor), cxx11_abi=cxx11_abi if os == "linux" else None)
    return ArchVariant(framework=framework, arch=Arch(backend=be, platform=platform, os=os)).variant_str


def parse_variants(names: list[str]) -> tuple[list, list[str]]:
    """(variant objects, invalid names) for listed folder names: a name that is not a variant (or not a safe
    folder name) is returned apart, so resolution can say why nothing fit instead of skipping it silently."""
    from kernels.variants import parse_variant

    out, invalid = [], []
    for n in names:
        if "/" in n or "\\" in n or n in ("", ".", "..") or any(ord(c) < 32 or ord(c) == 127 for c in n):
            invalid.append(n)
            continue
        try:
            out.append(parse_variant(n))
        except Exception:
            invalid.append(n)
    return out, invalid


def backend_name(variant: str) -> str | None:
    """The backend a variant name is built for ("cpu", "cuda", "rocm", ...), None for a name that is not one."""
    from kernels.variants import NoarchVariant, parse_variant

    try:
        v = parse_variant(variant)
    except ValueError:
        return None
    return v.arch.backend_name if isinstance(v, NoarchVariant) else v.arch.backend.name


def device_type(variant: str) -> str:
    """torch device type a variant runs on: 'cpu' for cpu builds, 'cuda' for cuXY/rocm/noarch torch-cuda.
    ValueError for a name that is not a variant."""
    from kernels.variants import NoarchVariant, parse_variant

    v = parse_variant(variant)
    name = v.arch.backend_name if isinstance(v, NoarchVariant) else v.arch.backend.name
    return {"rocm": "cuda", "metal": "mps", "universal": "cpu"}.get(name, name)
