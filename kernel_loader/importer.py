"""Import a verified variant folder as a Python package, and say which torch device it runs on.

Both :func:`kernel_loader.load` and the selftest (``kernel-loader selftest``, ``load(selftest=True)``) go through
here, so a folder is imported, named and mapped to a device one way.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import py_compile
import sys
from pathlib import Path
from types import ModuleType

from . import _kernels
from .cache import STATE_DIR, cache_dir
from .errors import KernelUnavailable
from .variants import device_type


def import_variant(path: Path) -> ModuleType:
    """Import a verified variant folder as a package named by its build id (unique per build, so two versions
    of one kernel live side by side)."""
    from .integrity import check_build_id

    meta = _kernels.Metadata.read_from_file(path / "metadata.json")
    name = meta.id
    try:
        check_build_id(name, where=f"variant {path.name}")  # also for local folders that no fetch checked
    except ValueError as e:
        raise KernelUnavailable(str(e), stage="import") from None
    if name in sys.modules:
        # Only reuse a module imported from this very folder: a metadata id such as 'os' or another kernel's id
        # must not hand back an unrelated module.
        existing = sys.modules[name]
        where = getattr(existing, "__file__", None)
        if where is not None and _same_build(Path(where).parent, path):
            return existing
        raise KernelUnavailable(f"variant {path.name}: its build id {name!r} is already taken by the module "
                                f"imported from {where or 'a built-in'}", stage="import")
    init = path / "__init__.py"
    if not init.is_file():
        raise KernelUnavailable(f"variant {path.name} has no __init__.py", stage="import")
    module_spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(path)])
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        with _bytecode_outside(path):
            module_spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(name, None)
        first = str(e).splitlines()[0] if str(e) else ""
        raise KernelUnavailable(f"import of variant {path.name} failed: {type(e).__name__}: {first}",
                                stage="import") from e
    return module


@contextlib.contextmanager
def _bytecode_outside(folder: Path):
    """Import with the folder's bytecode kept under ``<cache>/.kernel-loader/pycache`` -- never a file next to
    the verified ones -- so a warm load does not recompile the kernel's Python (most of its cost). The bytecode is
    written once, hash-checked (``CHECKED_HASH``): every import compares it with the source's hash, so a source
    that changed is compiled afresh and stale bytecode never runs. A cache we cannot write just costs the compile."""
    saved = sys.pycache_prefix, sys.dont_write_bytecode
    sys.pycache_prefix = str(Path(cache_dir()) / STATE_DIR / "pycache")
    sys.dont_write_bytecode = True  # the import system writes nothing; py_compile below writes hash-checked files
    try:
        for source in folder.rglob("*.py"):
            target = importlib.util.cache_from_source(str(source))
            if not Path(target).exists():
                try:
                    py_compile.compile(str(source), cfile=target, doraise=True,
                                       invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
                except (OSError, py_compile.PyCompileError):
                    pass  # read-only cache or a syntax error: the import itself reports the latter
        yield
    finally:
        sys.pycache_prefix, sys.dont_write_bytecode = saved


def _same_build(a: Path, b: Path) -> bool:
    """Two variant folders hold the same build when their (verified) metadata.json bytes are identical."""
    try:
        return a.resolve() == b.resolve() or (a / "metadata.json").read_bytes() == (b / "metadata.json").read_bytes()
    except OSError:
        return False


def folder_device(variant_dir: Path) -> str:
    """torch device type of a variant folder: from its name when it is a variant name, else metadata.json."""
    try:
        return device_type(variant_dir.name)
    except ValueError:
        meta = json.loads((variant_dir / "metadata.json").read_text())
        kind = (meta.get("backend") or {}).get("type", "cpu")
        return {"rocm": "cuda", "metal": "mps"}.get(kind, kind)
