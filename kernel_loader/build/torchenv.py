"""The torch a variant is compiled against, which need not be the torch running the builder.

A variant named ``torch214-cxx11-cu130-...`` must be compiled against torch 2.14 built for CUDA 13.0. The builder
runs in one Python (say torch 2.13 CPU) and finds the others as separate interpreters, each with its own torch:
:class:`TorchEnv` is what one of them reports (version, CUDA, C++ ABI, header and library dirs), obtained by running
a short probe in that interpreter. Compiles and the post-build load check then use that interpreter's paths and
executable; nothing of the other torch is imported into the builder's process.

Where the builder looks, in order: ``--python`` paths, ``KERNEL_LOADER_BUILD_PYTHONS`` (os.pathsep-separated
interpreter paths), the running interpreter, then ``.venv*/bin/python`` in the current directory and in the kernel
directory and its parents up to the enclosing git checkout (so a ``.venv-cu130/`` next to ``.venv/`` is found).
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from .backends import BuildError

PYTHONS_ENV = "KERNEL_LOADER_BUILD_PYTHONS"

_PROBE = r"""
import json, sysconfig, torch
from torch.utils import cpp_extension
print(json.dumps({
    "torch_version": torch.__version__,
    "cuda": torch.version.cuda,
    "cxx11_abi": bool(torch.compiled_with_cxx11_abi()),
    "include_dirs": [*cpp_extension.include_paths(), sysconfig.get_paths()["include"]],
    "library_dirs": cpp_extension.library_paths(),
}))
"""


@dataclass(frozen=True)
class TorchEnv:
    """One Python interpreter with torch, as seen by the builder."""

    python: str  # interpreter path (not resolved: a venv's python is a symlink to the base interpreter)
    torch_version: str  # "2.14.1+cu130"
    cuda: str | None  # "13.0", or None for a CPU build of torch
    cxx11_abi: bool
    include_dirs: tuple[str, ...]  # torch's and Python's headers
    library_dirs: tuple[str, ...]  # torch/lib

    @property
    def minor(self) -> str:
        """"2.14" """
        from packaging.version import Version

        v = Version(self.torch_version)
        return f"{v.major}.{v.minor}"

    def has_library(self, name: str) -> bool:
        return any((Path(d) / f"lib{name}.so").exists() for d in self.library_dirs)

    def describe(self) -> str:
        return f"{self.python} (torch {self.torch_version}{'' if self.cuda else ', no CUDA'})"


def _from_dict(python: str, d: dict) -> TorchEnv:
    return TorchEnv(
        python=python,
        torch_version=d["torch_version"],
        cuda=d["cuda"],
        cxx11_abi=d["cxx11_abi"],
        include_dirs=tuple(d["include_dirs"]),
        library_dirs=tuple(d["library_dirs"]),
    )


def running_env() -> TorchEnv:
    """The builder's own torch, read in-process (no subprocess: it is already imported)."""
    import torch
    from torch.utils import cpp_extension

    return TorchEnv(
        python=sys.executable,
        torch_version=torch.__version__,
        cuda=torch.version.cuda,
        cxx11_abi=bool(torch.compiled_with_cxx11_abi()),
        include_dirs=(*cpp_extension.include_paths(), sysconfig.get_paths()["include"]),
        library_dirs=tuple(cpp_extension.library_paths()),
    )


@functools.lru_cache(maxsize=None)
def probe(python: str) -> TorchEnv | str:
    """TorchEnv of ``python``, or a one-line reason it has none (not found, no torch, ...)."""
    if os.path.abspath(python) == os.path.abspath(sys.executable):
        return running_env()
    if not os.access(python, os.X_OK):
        return f"{python}: not an executable"
    try:
        proc = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{python}: {e}"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        return f"{python}: {last}"
    try:
        return _from_dict(python, json.loads(proc.stdout.strip().splitlines()[-1]))
    except (ValueError, KeyError, IndexError) as e:
        return f"{python}: unreadable probe output ({e})"


def candidate_pythons(kernel_dir: Path, explicit: tuple[str, ...] = ()) -> list[str]:
    """Interpreters the builder considers, in order of preference, without duplicates."""
    found: list[str] = [str(p) for p in explicit]
    found += [p for p in os.environ.get(PYTHONS_ENV, "").split(os.pathsep) if p]
    found.append(sys.executable)
    dirs = [Path.cwd()]
    d = Path(kernel_dir).resolve()
    while True:
        dirs.append(d)
        if (d / ".git").exists() or d.parent == d:
            break
        d = d.parent
    for base in dirs:
        found += [str(p) for p in venv_pythons(base) if p.is_file()]
    out: list[str] = []
    seen: set[str] = set()
    for p in found:
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def venv_pythons(base: Path) -> list[Path]:
    """``base/.venv*/bin/python`` (e.g. .venv and .venv-cu130 next to it), sorted: where build venvs live."""
    return sorted(Path(base).glob(".venv*/bin/python"))


def installed_torch(site: Path) -> tuple[str, str | None] | None:
    """(torch version, its CUDA minor or None) of the torch installed in a site-packages folder, read from
    torch/version.py without starting Python; None when there is none."""
    version_py = site / "torch" / "version.py"
    if not version_py.is_file():
        return None
    text = version_py.read_text()
    ver = re.search(r"^__version__\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", text, re.M)
    cuda = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", text, re.M)
    if ver is None:
        return None
    return ver.group(1), (".".join(cuda.group(1).split(".")[:2]) if cuda else None)


def venv_torches(base: Path) -> list[tuple[Path, str, str | None]]:
    """(python, torch version, CUDA minor) for each build venv under ``base`` with torch installed (read from
    files: importing torch per venv would take seconds)."""
    out = []
    for python in venv_pythons(base):
        venv = python.parent.parent
        for site in sorted(venv.glob("lib/python3*/site-packages")):
            found = installed_torch(site)
            if found and python.exists():
                out.append((python, found[0], found[1]))
    return out


def find_env(kernel_dir: Path, want, explain: str, explicit: tuple[str, ...] = ()) -> TorchEnv:
    """First candidate whose TorchEnv satisfies ``want(env) -> bool``; BuildError listing what was seen otherwise.

    ``explain`` says what is needed ("variant X needs torch 2.14 built for CUDA 13.0"). An explicit ``--python`` that does not fit
    is an error even if another candidate would: the caller asked for that one.
    """
    seen: list[str] = []
    for python in (list(explicit) or candidate_pythons(kernel_dir)):
        env = probe(python)
        if isinstance(env, str):
            seen.append(env)
            continue
        if want(env):
            return env
        seen.append(env.describe())
    where = "the --python given" if explicit else f"--python, ${PYTHONS_ENV}, this Python and .venv*/ folders"
    raise BuildError(
        f"{explain}, which is not installed in any Python the builder looked at ({where}): "
        f"{'; '.join(seen) or 'none found'}. Install it in a separate venv (e.g. `python -m venv .venv-cu130 && "
        f".venv-cu130/bin/pip install torch==<version>`) and pass `--python .venv-cu130/bin/python`"
    )
