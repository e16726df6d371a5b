"""A verified variant's bytecode: written once under <cache>/.kernel-loader/pycache (never beside the verified
files), reused by the next import, and never run when the source it came from has changed."""

from __future__ import annotations

import os
import sys

from tiny_kernels import make_tiny_kernel

from kernel_loader.importer import import_variant


def _forget(module) -> None:
    for name in [n for n in sys.modules if n == module.__name__ or n.startswith(module.__name__ + ".")]:
        del sys.modules[name]


def test_bytecode_lives_in_the_cache_state_dir_and_is_checked_against_the_source(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("KERNELS_CACHE", str(cache))
    vdir = make_tiny_kernel(tmp_path / "k", name="bytecode-kernel", value=3, module_id="_bytecode_kernel_cpu_v1")
    mod = import_variant(vdir)
    assert mod.value() == 3 and mod.add(2, 5) == 7
    assert not list(vdir.rglob("__pycache__")) and not list(vdir.rglob("*.pyc"))  # nothing beside verified files
    pycs = sorted(p.name for p in (cache / ".kernel-loader" / "pycache").rglob("*.pyc"))
    assert pycs and any(n.startswith("__init__.") for n in pycs) and any(n.startswith("impl.") for n in pycs)
    # The hash check, not the timestamp: same size, same mtime, other bytes -> the new source runs.
    init = vdir / "__init__.py"
    stat = init.stat()
    text = init.read_text().replace("VALUE = 3", "VALUE = 4")
    assert len(text) == stat.st_size
    init.write_text(text)
    os.utime(init, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    _forget(mod)
    try:
        assert import_variant(vdir).value() == 4
    finally:
        _forget(mod)
    assert sys.pycache_prefix is None and sys.dont_write_bytecode is False or sys.flags.dont_write_bytecode


def test_a_cache_that_cannot_hold_bytecode_still_imports(tmp_path, monkeypatch):
    state = tmp_path / "cache" / ".kernel-loader"
    state.mkdir(parents=True)
    (state / "pycache").write_text("not a folder")  # every bytecode write fails
    monkeypatch.setenv("KERNELS_CACHE", str(tmp_path / "cache"))
    vdir = make_tiny_kernel(tmp_path / "k", name="bytecode-ro", value=5, module_id="_bytecode_ro_cpu_v1")
    mod = import_variant(vdir)
    try:
        assert mod.value() == 5 and not list(vdir.rglob("__pycache__"))
    finally:
        _forget(mod)
