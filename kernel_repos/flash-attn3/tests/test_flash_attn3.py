"""flash-attn3: FA3 API surface on the shared Triton kernels (checked through Triton's interpreter on CPU)."""

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FA2 = ROOT.parent / "flash-attn2" / "torch-ext" / "flash_attn2"
SHARED = ["_triton_fwd.py", "_triton_bwd.py", "_triton_launch.py", "_checks.py", "_kvcache.py", "_custom_ops.py",
          "_reference.py", "_aot_dispatch.py", "_aot_keys.py"]
sys.path.insert(0, str(ROOT.parents[1] / "tests"))
from reference import attention_ref  # noqa: E402


def test_shared_sources_are_flash_attn2s():
    """The shared kernel modules are symlinks to flash-attn2's sources (one copy to maintain); the builder copies
    their content, so each published variant is self-contained (relative imports only)."""
    for name in SHARED:
        ours = ROOT / "torch-ext" / "flash_attn3" / name
        assert ours.is_symlink() and ours.resolve() == (FA2 / name).resolve(), f"{name} must link to flash-attn2's"


def test_build_toml_is_noarch_cuda_for_sm90():
    import tomllib

    cfg = tomllib.loads((ROOT / "build.toml").read_text())
    assert cfg["general"]["backends"] == ["cuda"] and cfg["torch-noarch"]["cuda_capabilities"] == ["9.0"]


def test_api_and_refusals(flash_attn3, monkeypatch):
    assert set(flash_attn3.__all__) >= {"flash_attn_func", "flash_attn_varlen_func", "flash_attn_with_kvcache"}
    q = torch.randn(1, 8, 2, 64, dtype=torch.float16)
    monkeypatch.delenv("FLASH_ATTN2_CPU_IMPL", raising=False)
    with pytest.raises(ValueError, match="runs on CUDA \\(sm90\\) tensors only"):
        flash_attn3.flash_attn_func(q, q, q)
    monkeypatch.setenv("FLASH_ATTN2_CPU_IMPL", "triton")
    with pytest.raises(NotImplementedError, match="q_descale"):
        flash_attn3.flash_attn_func(q, q, q, q_descale=torch.ones(1))
    with pytest.raises(NotImplementedError, match="attention_chunk=128"):
        flash_attn3.flash_attn_func(q, q, q, attention_chunk=128)
    with pytest.raises(NotImplementedError, match="cache_leftpad"):
        flash_attn3.flash_attn_with_kvcache(q, q, q, cache_leftpad=torch.zeros(1, dtype=torch.int32))


@pytest.mark.skipif(torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1",
                                reason="interpreter checks need TRITON_INTERPRET=1 from before triton's import (conftest sets it where there is no GPU)")
def test_forward_backward_and_paged_cache_through_interpreter(flash_attn3, monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("FLASH_ATTN2_CPU_IMPL", "triton")
    torch.manual_seed(0)
    q = torch.randn(1, 60, 4, 32, dtype=torch.float16, requires_grad=True)
    k = torch.randn(1, 75, 2, 32, dtype=torch.float16, requires_grad=True)
    v = torch.randn(1, 75, 2, 32, dtype=torch.float16, requires_grad=True)
    out, lse = flash_attn3.flash_attn_func(q, k, v, causal=True, window_size=(30, -1), softcap=8.0,
                                           return_attn_probs=True)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref, ref_lse = attention_ref(q64, k64, v64, causal=True, window=(30, -1), softcap=8.0)
    assert float((out.double() - ref).norm() / ref.norm()) < 2e-3
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-4, rtol=1e-4)
    dout = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), dout)
    want = torch.autograd.grad(ref, (q64, k64, v64), dout.double())
    for g, w in zip(got, want):
        assert float((g.double() - w).norm() / w.norm()) < 4e-3

    kc = torch.randn(8, 16, 2, 32, dtype=torch.float16)
    vc = torch.randn_like(kc)
    page_table = torch.randperm(8)[:6].view(2, 3).to(torch.int32)
    seqlens = torch.tensor([5, 30], dtype=torch.int32)
    qd = torch.randn(2, 1, 4, 32, dtype=torch.float16)
    out = flash_attn3.flash_attn_with_kvcache(qd, kc, vc, cache_seqlens=seqlens, page_table=page_table, causal=True)
    for i in range(2):
        j = torch.arange(int(seqlens[i]))
        pages, slots = page_table[i].long()[j // 16], j % 16
        ref, _ = attention_ref(qd[i:i + 1], kc[pages, slots][None], vc[pages, slots][None], causal=True)
        assert float((out[i:i + 1].double() - ref).norm() / ref.norm()) < 2e-3
