"""The numeric self-test that travels with each variant (reference.safetensors): written at build time inside
the digest, run by `kernel-loader selftest` and `load(selftest=True)`. A deliberately broken build (softmax
scale 1% off, in a temp copy of flash-attn2) passes the ABI check and the digest, fails the selftest, and
falls back; two versions of one kernel load side by side in one process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tiny_kernels import FLASH_ATTN2_DIR, make_tiny_kernel
from reference import attention_ref

from kernel_loader.selftest import cases as st_cases
from kernel_loader.selftest import check as st_check
from kernel_loader.selftest import write as st_write
from kernel_loader.api import clear_cache, load
from kernel_loader.importer import import_variant
from kernel_loader.cli import main as cli
from kernel_loader.errors import KernelUnavailable
from kernel_loader.publish import publish_local


def test_builtin_cases_match_an_independent_reference():
    cases = st_write.attention_cases()
    assert [c.name for c in cases] == ["dense", "causal", "window_causal", "window_two_sided", "gqa", "varlen"]
    for c in cases:
        if c.function != "flash_attn_func":
            continue
        kw = c.kwargs
        ref, _ = attention_ref(c.inputs["q"], c.inputs["k"], c.inputs["v"], causal=kw.get("causal", False),
                               window=tuple(kw.get("window_size", (-1, -1))))
        torch.testing.assert_close(c.outputs[0], ref, rtol=0, atol=1e-12)
        # Inputs are exact in every run dtype, so the stored reference holds for all of them.
        for t in (c.inputs["q"], c.inputs["k"]):
            assert torch.equal(t.to(torch.float16).float(), t.float())
    varlen = cases[-1]
    cu_q, cu_k = varlen.inputs["cu_seqlens_q"], varlen.inputs["cu_seqlens_k"]
    assert varlen.inputs["cu_seqlens_q"].dtype == torch.int32 and len(cu_q) == 4
    for i in range(3):
        ref, _ = attention_ref(varlen.inputs["q"][cu_q[i]:cu_q[i + 1]][None], varlen.inputs["k"][cu_k[i]:cu_k[i + 1]][None],
                               varlen.inputs["v"][cu_k[i]:cu_k[i + 1]][None], causal=True)
        torch.testing.assert_close(varlen.outputs[0][cu_q[i]:cu_q[i + 1]], ref[0], rtol=0, atol=1e-12)


def test_built_variant_carries_its_reference_in_the_digest(built_flash_attn2):
    from kernels._rust import Digest, DigestAlgorithm, Metadata

    path = built_flash_attn2.path
    ref = path / st_cases.REFERENCE_FILE
    assert ref.is_file() and ref.stat().st_size < 600_000
    meta = Metadata.read_from_file(path / "metadata.json")
    assert st_cases.REFERENCE_FILE in meta.digest.files
    meta.digest.validate(Digest.hash_variant(DigestAlgorithm.SHA256, path))
    info = json.loads((path / "build-info.json").read_text())
    assert set(info["op_schemas"]) >= {"fwd", "varlen_fwd"}
    assert info["op_schemas"]["fwd"].startswith(f"{built_flash_attn2.ops_id}::fwd(Tensor q")

    report = st_check.run_selftest(import_variant(path), path)
    assert report.ok and report.device == "cpu" and report.dtype == "float32", report.summary()
    assert len(report.results) == 6 and report.worst.ratio < 0.05  # < 5% of the float32 allowance
    # bfloat16 run of the same cases: the reference still holds at its tolerance.
    bf16 = st_check.run_cases(import_variant(path), st_cases.read_reference(ref), "cpu", "bfloat16")
    assert bf16.ok, bf16.summary()


def test_kernel_provided_cases(tmp_path):
    """tests/selftest_cases.py in a kernel repo replaces the built-in cases; a wrong result fails by name."""
    kdir = tmp_path / "src"
    (kdir / "tests").mkdir(parents=True)
    (kdir / "tests" / "selftest_cases.py").write_text(
        "import torch\n\n"
        "def cases():\n"
        "    a = torch.arange(6, dtype=torch.float32).reshape(2, 3)\n"
        "    b = torch.full((2, 3), 0.5)\n"
        "    return [{'name': 'add', 'function': 'add', 'inputs': {'a': a, 'b': b}, 'args': ['@a', '@b'],\n"
        "             'outputs': [a.double() + b.double()]}]\n")
    good = make_tiny_kernel(tmp_path / "good", name="cases-kernel", value=11)
    assert st_write.write_reference(good, kdir) == good / st_cases.REFERENCE_FILE
    assert not list(kdir.rglob("__pycache__"))  # nothing written into the kernel's source tree
    report = st_check.run_selftest(import_variant(good), good, "cpu")
    assert report.ok and [r.name for r in report.results] == ["add"]

    bad = make_tiny_kernel(tmp_path / "bad", name="cases-kernel", value=12)
    (bad / "impl.py").write_text("def add(a, b):\n    return a + b * 1.001\n")
    st_write.write_reference(bad, kdir)
    report = st_check.run_selftest(import_variant(bad), bad, "cpu")
    assert not report.ok and "add (add): max abs err 0.0005" in report.summary()

    (kdir / "tests" / "selftest_cases.py").write_text("def cases():\n    return [{'name': 'x', 'fn': 'add'}]\n")
    with pytest.raises(st_cases.SelftestError, match=r"selftest_cases\.py: case 0: .*unexpected keyword argument 'fn'"):
        st_write.write_reference(good, kdir)


def test_missing_or_foreign_reference_is_a_clear_error(tmp_path):
    vdir = make_tiny_kernel(tmp_path / "k", name="noref-kernel")
    with pytest.raises(st_cases.SelftestError, match=r"variant torch-cpu has no reference\.safetensors"):
        st_check.run_selftest(import_variant(vdir), vdir)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(vdir / st_cases.REFERENCE_FILE))
    with pytest.raises(st_cases.SelftestError, match="not a kernel_loader selftest file"):
        st_check.run_selftest(import_variant(vdir), vdir)
    assert st_write.write_reference(vdir, tmp_path / "no-such-src") is None  # no cases, no flash_attn API: no file


@pytest.fixture(scope="session")
def broken_flash_attn2(tmp_path_factory):
    """flash-attn2 built from a temp copy whose Python wrapper scales the softmax by 1.01 (a real build: own
    source hash, own op namespace, ABI-checked and sealed like any other), version 2 in its build.toml."""
    from kernel_loader.build import build_variant

    src = tmp_path_factory.mktemp("fa2-broken") / "flash-attn2"
    shutil.copytree(FLASH_ATTN2_DIR, src, ignore=shutil.ignore_patterns("build", ".build", "__pycache__"))
    iface = src / "torch-ext" / "flash_attn2" / "interface.py"
    text = iface.read_text()
    assert "def _scale(" in text
    iface.write_text(text + "\n\n_exact_scale = _scale\n\n\ndef _scale(q, softmax_scale):  # deliberately 1% off\n"
                            "    return _exact_scale(q, softmax_scale) * 1.01\n")
    toml = src / "build.toml"
    toml.write_text(toml.read_text().replace("version = 1", "version = 2", 1))
    out = src.parent / "out"
    return build_variant(src, out_dir=out / "build", progress=lambda _m: None)


@pytest.mark.slow
def test_broken_build_passes_abi_and_digest_but_fails_selftest(broken_flash_attn2, built_flash_attn2):
    from kernels._rust import Digest, DigestAlgorithm, Metadata

    path = broken_flash_attn2.path
    assert broken_flash_attn2.ops_id != built_flash_attn2.ops_id
    info = json.loads((path / "build-info.json").read_text())
    if info.get("abi_check") is not None:
        assert info["abi_check"]["ok"] and not info["abi_check"]["violations"]
    Metadata.read_from_file(path / "metadata.json").digest.validate(Digest.hash_variant(DigestAlgorithm.SHA256, path))

    report = st_check.run_selftest(import_variant(path), path)
    assert not report.ok
    assert all(not r.ok and not r.error for r in report.results)  # every case runs and is wrong
    assert report.worst.ratio > 10 and report.worst.max_abs_err > 5e-3

    assert cli(["selftest", str(path)]) == 1
    assert cli(["selftest", str(built_flash_attn2.path)]) == 0


@pytest.mark.slow
def test_load_with_selftest_falls_back_and_versions_live_side_by_side(
        local_hub, built_flash_attn2, broken_flash_attn2, session_env_trust, capsys):
    repo = "kernels-community/fa2-selftest"
    publish_local(built_flash_attn2.path.parent.parent, repo, local_hub.root, 1, allow_dirty=True)
    publish_local(broken_flash_attn2.path.parent.parent, repo, local_hub.root, 2, allow_dirty=True)
    clear_cache()

    v1 = load(repo, version=1, selftest=True)
    assert v1.ok and v1.variant == built_flash_attn2.variant

    with pytest.warns(UserWarning, match="selftest FAILED"):
        v2 = load(repo, version=2, selftest=True)
    assert v2.fallback is not None and v2.module is None
    assert "selftest FAILED" in v2.fallback and "worst:" in v2.fallback and "x tolerance" in v2.fallback
    with pytest.raises(KernelUnavailable) as err:
        load(repo, version=2, selftest=True, strict=True)
    assert err.value.stage == "selftest"

    # Without the selftest the broken v2 loads; both versions live in one process, each with its own
    # module (named by its build id) and op namespace, and compute what their code says.
    v2_plain = load(repo, version=2)
    assert v2_plain.ok
    m1, m2 = v1.module, v2_plain.module
    assert m1 is not m2 and m1.__name__ != m2.__name__
    assert m1.__name__ == built_flash_attn2.ops_id and m2.__name__ == broken_flash_attn2.ops_id
    assert hasattr(torch.ops, built_flash_attn2.ops_id) and hasattr(torch.ops, broken_flash_attn2.ops_id)
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, 33, 2, 64, generator=g) for _ in range(3))
    ref, _ = attention_ref(q, k, v, causal=True)
    ref_scaled, _ = attention_ref(q, k, v, causal=True, scale=64 ** -0.5 * 1.01)
    torch.testing.assert_close(m1.flash_attn_func(q, k, v, causal=True).double(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m2.flash_attn_func(q, k, v, causal=True).double(), ref_scaled, atol=1e-5, rtol=1e-5)
    assert (m2.flash_attn_func(q, k, v, causal=True).double() - ref).abs().max() > 1e-3
    clear_cache()


@pytest.mark.slow
def test_package_load_runs_the_selftest(published_flash_attn2):
    """``kernel_loader.load(spec, selftest=True)`` (the README's form) is api.load itself: it takes selftest and
    runs it (once per variant folder)."""
    import kernel_loader

    clear_cache()
    k = kernel_loader.load(published_flash_attn2, selftest=True, strict=True)
    assert k.ok and k.variant and k.module is not None
    assert str(k.path.resolve()) in st_check._passed  # load ran it (a variant folder is tested once)
    summary = st_check.check_loaded(k.module, k.path, "cpu")  # that run's summary, not a new run
    assert summary.startswith(f"selftest passed for {k.variant}"), summary
    import re

    passed = re.search(r"(\d+)/(\d+) cases pass", summary)
    assert passed and passed.group(1) == passed.group(2) and int(passed.group(1)) >= 5, summary
    clear_cache()

