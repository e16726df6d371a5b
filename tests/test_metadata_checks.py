"""Load-time metadata checks (kernels_minver, python-depends, dirty builds): on a variant folder, and end to end
through the local Hub (the load falls back to sdpa with the reason in one line; strict raises)."""

from __future__ import annotations

import json
import warnings

import pytest

from kernel_loader.fallback import KernelUnavailable
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
    try:
        import einops  # noqa: F401
        pytest.skip("einops is installed here")
    except ImportError:
        pass
    vdir = _with_metadata(make_tiny_kernel(tmp_path), **{"python-depends": ["einops"]})
    with pytest.raises(KernelUnavailable, match="requires Python dependency `einops`.*pip install einops"):
        check_variant_metadata(vdir, label="org/tiny", variant="torch-cpu")


def test_unknown_python_dependency_is_named(tmp_path):
    vdir = _with_metadata(make_tiny_kernel(tmp_path), **{"python-depends": ["left-pad"]})
    with pytest.raises(KernelUnavailable, match="unsupported kernel dependency: left-pad"):
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
