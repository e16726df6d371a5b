"""Which matrix entries this machine can build, and in which Python: the build's own discovery of torch
environments (:mod:`kernel_loader.build.torchenv`) and nvcc (:mod:`kernel_loader.build.backends`)."""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass
from pathlib import Path

from ..build.backends import BuildError, nvcc_path
from ..build.backends import nvcc_version as _nvcc_release
from ..build.torchenv import venv_torches
from .model import MatrixEntry


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


def find_build_envs(checkout_root: Path) -> list[BuildEnv]:
    """torch installs in ``<root>/.venv`` and ``<root>/.venv-*`` (e.g. .venv-cu130), read from files without
    starting Python (importing torch per venv would take seconds)."""
    return [BuildEnv(python=python, torch=version, cuda=cuda) for python, version, cuda in venv_torches(checkout_root)]


def nvcc_version() -> str | None:
    """CUDA minor of the nvcc the build would use ($CUDA_HOME/bin first, then PATH), e.g. "13.0"; None without
    one."""
    try:
        return _nvcc_release(nvcc_path())
    except BuildError:
        return None


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
