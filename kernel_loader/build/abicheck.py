"""ABI check of a built library, run by the builder on every .so it produces; violations fail the build.

Three checks, chosen per variant by the plan's ``abi_policy``:

- manylinux (kernel-abi-check ``ObjectFile.check_manylinux``): no glibc/libstdc++ symbol versions newer than the
  policy (``manylinux_2_34`` by default, ``KERNEL_LOADER_MANYLINUX`` to change it; see backends.DEFAULT_MANYLINUX).
  The glibc the library actually needs is recorded in build-info.json and metadata.json either way.
- Python abi3 (``ObjectFile.check_python_abi``): the ``.abi3.so`` name promises only limited-API Python symbols.
- torch stable ABI (variants named ``torch-stable-abi*``): the library must reach torch only through its C shim
  (``aoti_torch_*`` / ``torch_*`` C symbols). An undefined C++ symbol in a torch namespace (``c10::``, ``at::``,
  ``torch::``, ``caffe2::``) ties it to one torch build: it would fail to load on another torch. kernel-abi-check
  0.14's Python API has no torch check, so this one reads the dynamic symbol table with ``nm`` and ``c++filt``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .backends import BuildError

_TORCH_CXX_NAMESPACES = ("c10::", "at::", "torch::", "caffe2::", "pybind11::")
_GLIBC = re.compile(r"GLIBC_(\d+)\.(\d+)")


@dataclass(frozen=True)
class AbiReport:
    library: str
    policy: dict
    glibc_required: str | None  # "2.34": the newest GLIBC_x.y symbol version the library references
    violations: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.violations

    def as_dict(self) -> dict:
        return {"policy": self.policy, "glibc_required": self.glibc_required, "ok": self.ok,
                "violations": list(self.violations)}


def _undefined_symbols(library: Path) -> list[str]:
    nm = shutil.which("nm")
    if nm is None:
        raise BuildError("`nm` (binutils) not found; it is needed for the torch stable-ABI check")
    out = subprocess.run([nm, "-D", "--undefined-only", "--format=posix", str(library)],
                         capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _demangle(symbols: list[str]) -> list[str]:
    if not symbols:
        return []
    cxxfilt = shutil.which("c++filt")
    if cxxfilt is None:
        return symbols
    out = subprocess.run([cxxfilt], input="\n".join(symbols), capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def torch_cxx_symbols(library: Path) -> list[str]:
    """Undefined (imported) C++ symbols from torch namespaces, demangled."""
    syms = [s.split("@")[0] for s in _undefined_symbols(library) if s.startswith("_Z")]
    return [d for d in _demangle(syms) if d.startswith(_TORCH_CXX_NAMESPACES)]


def glibc_required(library: Path) -> str | None:
    versions = {(int(m.group(1)), int(m.group(2))) for s in _undefined_symbols(library) for m in [_GLIBC.search(s)] if m}
    if not versions:
        return None
    major, minor = max(versions)
    return f"{major}.{minor}"


def check_library(library: Path, policy: dict, *, variant: str) -> AbiReport:
    """Run every check ``policy`` asks for; BuildError (naming the variant and the symbols) on any violation."""
    from kernel_abi_check import ObjectFile

    obj = ObjectFile(str(library))
    violations: list[str] = []
    manylinux = policy.get("manylinux")
    if manylinux:
        for v in obj.check_manylinux(manylinux):
            violations.append(f"{manylinux}: {v.name} needs {v.dep} {v.version}")
    abi3 = policy.get("python_abi3")
    if abi3:
        for v in obj.check_python_abi(abi3):
            added = getattr(v, "version_added", None)
            why = f"added in Python {added}" if added else "not in the Python limited API"
            violations.append(f"python abi3 {abi3}: {v.name} ({why})")
    if policy.get("torch_stable_abi"):
        for sym in torch_cxx_symbols(library):
            violations.append(f"torch stable ABI: imports C++ symbol {sym} (use torch/csrc/stable, not ATen/c10)")
    report = AbiReport(library=library.name, policy=dict(policy), glibc_required=glibc_required(library),
                       violations=tuple(violations))
    if violations:
        shown = "\n  ".join(violations[:20])
        more = f"\n  ... and {len(violations) - 20} more" if len(violations) > 20 else ""
        raise BuildError(f"variant {variant}: ABI check failed for {library.name} "
                         f"({len(violations)} violation(s)):\n  {shown}{more}")
    return report
