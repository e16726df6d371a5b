"""Builds the CPU variant from build.toml for tests and benchmarks, and imports the package.

Every source listed in build.toml is compiled with torch.utils.cpp_extension.load under an op
namespace unique to the source contents, with the flags the builder uses (-O3 -std=c++17 -fopenmp,
include dirs: the repo root and [torch] include, plus each section's cxx-flags). A generated `_ops.py` (the
builder generates the real one) points the package at that namespace.
"""

import hashlib
import importlib.util
import shutil
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import torch
from torch.utils import cpp_extension

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "torch-ext" / "flash_attn2"


def _sources_and_flags():
    cfg = tomllib.loads((ROOT / "build.toml").read_text())
    sources = list(cfg["torch"]["src"])
    includes = [ROOT] + [ROOT / d for d in cfg["torch"].get("include", [])]
    flags = None
    for name, kernel in cfg.get("kernel", {}).items():
        if kernel.get("backend") != "cpu":
            continue
        sources += kernel["src"]
        section_flags = list(kernel.get("cxx-flags", []))
        if flags is not None and section_flags != flags:
            raise RuntimeError(
                f"build.toml: cpu kernel sections use different cxx-flags ({flags} vs {section_flags} in "
                f"[kernel.{name}]); cpu_ext.py compiles them in one go and needs them equal")
        flags = section_flags
    return [ROOT / s for s in sources], flags or [], includes


def build(build_dir: Path) -> str:
    """Compiles (or reuses) the extension; returns its op namespace."""
    sources, flags, includes = _sources_and_flags()
    digest = hashlib.sha256()
    for path in sorted(sources):
        digest.update(path.read_bytes())
    digest.update(" ".join(flags).encode())
    name = f"_flash_attn2_cpu_test_{digest.hexdigest()[:10]}"
    build_dir = build_dir / name
    build_dir.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(
        name=name,
        sources=[str(s) for s in sources if s.suffix == ".cpp"],
        extra_cflags=["-O3", "-std=c++17", "-fopenmp", *flags],
        extra_ldflags=["-fopenmp"],
        extra_include_paths=[str(d) for d in includes],
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=False,
    )
    return name


def import_package(namespace: str, pkg_dir: Path) -> ModuleType:
    """Copies the Python package next to a generated _ops.py and imports it like `kernels` does."""
    if pkg_dir.exists():
        shutil.rmtree(pkg_dir)
    shutil.copytree(PACKAGE, pkg_dir, ignore=shutil.ignore_patterns("__pycache__", "_ops.py"))
    (pkg_dir / "_ops.py").write_text(
        "import torch\n"
        f"ops = torch.ops.{namespace}\n\n\n"
        "def add_op_namespace_prefix(op_name: str) -> str:\n"
        f"    return f\"{namespace}::{{op_name}}\"\n")
    spec = importlib.util.spec_from_file_location(namespace, pkg_dir / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[namespace] = module
    spec.loader.exec_module(module)
    return module


def load(cache_dir: Path) -> ModuleType:
    namespace = build(cache_dir / "build")
    return import_package(namespace, cache_dir / "pkg" / namespace)
