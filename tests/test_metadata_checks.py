"""Load-time metadata checks (kernels_minver, python-depends, dirty builds): on a variant folder, and end to end
through the local Hub (the load falls back to sdpa with the reason in one line; strict raises)."""

from __future__ import annotations

import json
import warnings

import pytest

from kernel_loader.errors import KernelUnavailable
from kernel_loader.metadata_checks import DirtyBuildWarning, check_variant_metadata
from tiny_kernels import make_tiny_kernel


def _with_metadata(vdir, **extra):
    path = vdir / "metadata.json"
    meta = json.loads(path.read_text())
    meta.update(extra)
    path.write_text(json.dumps(meta, indent=2, sort_keys=True))
    return vdir


def test_higher_kernels_minver_is_refused(tmp_path):
    import kernels

    vdir = _with_metadata(make_tiny_kernel(tmp_path), **{"kernels-minver": "99.0.0"})
    with pytest.raises(KernelUnavailable, match=rf"requires kernels>=99\.0\.0, but version {kernels.__version__}"):
        check_variant_metadata(vdir, label="org/tiny", variant="torch-cpu")


def test_missing_python_dependency_is_named(tmp_path):
    # einops is in kernels' dependency table and is no dependency of ours: missing here unless someone installed it
    try:
        import einops  # noqa: F401
        pytest.skip("einops is installed here")
    except ImportError:
        pass
    vdir = _with_metadata(make_tiny_kernel(tmp_path), **{"python-depends": ["einops"]})
    with pytest.raises(KernelUnavailable, match="requires Python dependency `einops`.*pip install einops"):
        check_variant_metadata(vdir, label="org/tiny", variant="torch-cpu")


def test_dependency_outside_kernels_table_is_checked_by_import(tmp_path):
    vdir = _with_metadata(make_tiny_kernel(tmp_path), **{"python-depends": ["left-pad"]})
    with pytest.raises(KernelUnavailable, match="requires Python package `left-pad`: pip install left-pad"):
        check_variant_metadata(vdir, label="org/tiny", variant="torch-cpu")
    # numpy is not in kernels' table (stock kernels 0.17.2 refuses it) but is installed: the variant loads
    _with_metadata(vdir, **{"python-depends": ["numpy"]})
    check_variant_metadata(vdir, label="org/tiny", variant="torch-cpu")


def test_dirty_build_warns_once(tmp_path):
    prov = {"kernel-builder": {"version": "0.1.0"}, "kernel": {"commit": "ab" * 20, "dirty": True}}
    vdir = _with_metadata(make_tiny_kernel(tmp_path), provenance=prov)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_variant_metadata(vdir, label="org/tiny", variant="torch-cpu")
        check_variant_metadata(vdir, label="org/tiny", variant="torch-cpu")
    dirty = [w for w in caught if issubclass(w.category, DirtyBuildWarning)]
    assert len(dirty) == 1 and "kernel source at abababababab" in str(dirty[0].message)


def test_clean_build_passes_silently(tmp_path):
    prov = {"kernel-builder": {"version": "0.1.0"}, "kernel": {"commit": "cd" * 20, "dirty": False}}
    vdir = _with_metadata(make_tiny_kernel(tmp_path), provenance=prov, **{"kernels-minver": "0.1.0"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_variant_metadata(vdir, label="org/tiny", variant="torch-cpu")


# ------------------------------------------------------------------ end to end: load() through the local Hub


@pytest.fixture
def trusted(monkeypatch):
    from kernel_loader import api

    api.clear_cache()
    monkeypatch.setenv("KERNEL_LOADER_TRUST", "kernels-test")
    monkeypatch.delenv("KERNEL_LOADER_STRICT", raising=False)
    yield
    api.clear_cache()


@pytest.mark.slow
def test_load_refuses_a_higher_kernels_minver_and_falls_back(hub_publish, fresh_caches, trusted, tmp_path):
    import kernel_loader

    vdir = _with_metadata(make_tiny_kernel(tmp_path / "b", name="minver-kernel"), **{"kernels-minver": "99.0.0"})
    hub_publish(vdir.parent.parent, "kernels-test/minver-kernel", 1)
    with pytest.warns(Warning, match="requires kernels>=99.0.0"):
        loaded = kernel_loader.load("kernels-test/minver-kernel")
    assert loaded.module is None and "requires kernels>=99.0.0" in loaded.fallback
    assert "\n" not in loaded.fallback  # one line
    with pytest.raises(KernelUnavailable, match="requires kernels>=99.0.0"):
        kernel_loader.load("kernels-test/minver-kernel", strict=True)


@pytest.mark.slow
def test_pinned_version_without_a_build_names_the_version_that_has_one(hub_publish, fresh_caches, trusted,
                                                                       tmp_path):
    import kernel_loader

    repo = "kernels-test/versioned-kernel"
    v1 = make_tiny_kernel(tmp_path / "v1", name="versioned-kernel", variant="torch213-cxx11-cu130-x86_64-linux",
                          backend="cuda")
    hub_publish(v1.parent.parent, repo, 1)
    v3 = make_tiny_kernel(tmp_path / "v3", name="versioned-kernel", version=3)
    hub_publish(v3.parent.parent, repo, 3)
    with pytest.warns(Warning, match="v3 has torch-cpu: use @v3"):
        loaded = kernel_loader.load(f"{repo}@v1")
    assert loaded.module is None
    assert f"no variant of {repo}@v1" in loaded.fallback and loaded.fallback.endswith("v3 has torch-cpu: use @v3")
    suggested = kernel_loader.load(f"{repo}@v3:value")  # the tiny kernel has no attention: name a function
    assert suggested.variant == "torch-cpu" and suggested.module.value() == 1
