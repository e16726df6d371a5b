"""Matrix expansion: matrix.toml x each kernel's build.toml -> one :class:`MatrixEntry` per variant CI builds,
named with :func:`kernel_loader.variants.variant_name` (kernels' own classes)."""

from __future__ import annotations

from pathlib import Path

from ..variants import variant_name as _variant_name
from .model import OS, KernelInfo, KernelSettings, Matrix, MatrixEntry, MatrixError


def variant_name(abi: str, torch: str, backend: str, cuda: str, arch: str) -> str:
    kind = {"exact": "torch", "stable": "stable-abi"}.get(abi, abi)
    return _variant_name(kind, backend, platform=arch, os=OS, torch_minor=torch, stable_abi=torch,
                         cuda=cuda or None)


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
