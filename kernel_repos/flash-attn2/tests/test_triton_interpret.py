"""The GPU (Triton) kernels checked on CPU tensors through Triton's interpreter (TRITON_INTERPRET=1) against the
float64 reference: forward, lse, gradients (incl. through lse), varlen with random cu_seqlens, kv cache (contiguous
and paged with random block tables, with append), windows, softcap, GQA/MQA, head dims needing padding.

float16 and float32 only: the interpreter (Triton 3.9) computes bfloat16 dots on raw bits, so bf16 is checked on
the GPU (scripts/bench_attention.py). Skipped when Triton is not installed.
"""

import os
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
from reference import attention_ref  # noqa: E402

pytestmark = pytest.mark.skipif(torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1",
                                reason="interpreter checks need TRITON_INTERPRET=1 from before triton's import (conftest sets it where there is no GPU)")


@pytest.fixture
def fa(flash_attn2, monkeypatch):
    # Set here too, not only in conftest: other suites in the same session may restore a saved environment.
    # The kernel modules are imported on the first Triton call, after this.
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("FLASH_ATTN2_CPU_IMPL", "triton")
    return flash_attn2


def rel(a, b):
    return float((a.detach().double() - b.detach()).norm() / b.detach().norm().clamp_min(1e-12))


def rand(*shape, dtype=torch.float16, grad=False):
    return torch.randn(*shape, dtype=torch.float32).to(dtype).requires_grad_(grad)


TOL = {torch.float16: 2e-3, torch.float32: 1e-5}

# (B, Sq, Sk, Hq, Hk, D, causal, window, softcap, dtype)
DENSE = [
    (2, 70, 70, 4, 2, 32, False, (-1, -1), 0.0, torch.float16),
    (1, 50, 90, 2, 1, 32, True, (-1, -1), 0.0, torch.float16),      # Sq < Sk, MQA
    (1, 90, 40, 2, 2, 16, True, (-1, -1), 0.0, torch.float32),      # Sq > Sk: first rows see nothing
    (1, 90, 90, 2, 2, 32, False, (20, 10), 5.0, torch.float16),     # both windows + softcap
    (1, 100, 100, 4, 1, 32, True, (17, -1), 0.0, torch.float16),    # causal + left window
    (1, 40, 30, 2, 2, 96, True, (-1, -1), 0.0, torch.float16),      # head dim padded to 128
]


@pytest.mark.parametrize("case", DENSE, ids=lambda c: f"b{c[0]}-{c[1]}x{c[2]}-h{c[3]}/{c[4]}-d{c[5]}-c{int(c[6])}"
                                                         f"-w{c[7][0]}.{c[7][1]}-cap{c[8]}-{str(c[9])[6:]}")
def test_dense_forward_and_gradients(fa, case):
    torch.manual_seed(hash(case) % 1000)
    b, sq, sk, hq, hk, d, causal, window, softcap, dt = case
    q, k, v = rand(b, sq, hq, d, dtype=dt, grad=True), rand(b, sk, hk, d, dtype=dt, grad=True), \
        rand(b, sk, hk, d, dtype=dt, grad=True)
    out, lse = fa.flash_attn_func(q, k, v, causal=causal, window_size=window, softcap=softcap,
                                  return_softmax_lse=True)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref, ref_lse = attention_ref(q64, k64, v64, causal=causal, window=window, softcap=softcap)
    assert not out.isnan().any()
    assert rel(out, ref) < TOL[dt]
    seen = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse[seen].double(), ref_lse[seen], atol=1e-4, rtol=1e-4)
    assert (lse[~seen] == float("-inf")).all() and (out.transpose(1, 2)[~seen] == 0).all()
    dout, dlse = torch.randn_like(out), torch.randn_like(lse).masked_fill(~seen, 0)
    grads = torch.autograd.grad((out, lse), (q, k, v), (dout, dlse))
    want = torch.autograd.grad((ref, ref_lse.masked_fill(~seen, 0)), (q64, k64, v64), (dout.double(), dlse.double()))
    for g, w in zip(grads, want):
        assert not g.isnan().any() and rel(g, w) < 2 * TOL[dt]


def test_varlen_random_cu_seqlens(fa):
    torch.manual_seed(7)
    lens_q = torch.randint(1, 40, (4,))
    lens_k = lens_q + torch.randint(0, 20, (4,))
    cu_q = torch.nn.functional.pad(lens_q.cumsum(0), (1, 0)).to(torch.int32)
    cu_k = torch.nn.functional.pad(lens_k.cumsum(0), (1, 0)).to(torch.int32)
    q = rand(int(cu_q[-1]) + 3, 4, 32, grad=True)  # 3 packed rows after the last sequence
    k, v = rand(int(cu_k[-1]), 2, 32, grad=True), rand(int(cu_k[-1]), 2, 32, grad=True)
    out, lse = fa.flash_attn_varlen_func(q, k, v, cu_q, cu_k, int(lens_q.max()), int(lens_k.max()), causal=True,
                                         window_size=(9, -1), return_softmax_lse=True)
    dout = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
    for i in range(4):
        sq_, sk_ = slice(int(cu_q[i]), int(cu_q[i + 1])), slice(int(cu_k[i]), int(cu_k[i + 1]))
        q64, k64, v64 = (t.detach()[s][None].double().requires_grad_() for t, s in ((q, sq_), (k, sk_), (v, sk_)))
        ref, ref_lse = attention_ref(q64, k64, v64, causal=True, window=(9, -1))
        assert rel(out[sq_][None], ref) < 2e-3
        torch.testing.assert_close(lse[:, sq_].double(), ref_lse[0], atol=1e-4, rtol=1e-4)
        want = torch.autograd.grad(ref, (q64, k64, v64), dout[sq_][None].double())
        for got, w in ((dq[sq_], want[0]), (dk[sk_], want[1]), (dv[sk_], want[2])):
            assert rel(got[None], w) < 4e-3
    tail = slice(int(cu_q[-1]), None)
    assert (out[tail] == 0).all() and (lse[:, tail] == float("-inf")).all() and (dq[tail] == 0).all()


@pytest.mark.parametrize("scale", [None, -0.2], ids=["scale+", "scale-"])
def test_forward_exact_with_growing_row_max(fa, scale):
    """Scores whose row max grows across key blocks (by more than 8 in base 2 and by less), causal+window and not,
    a negative softmax scale too: the online softmax rescales exactly."""
    torch.manual_seed(5)
    sq, sk = 70, 90
    q = torch.randn(1, sq, 2, 32) * 2
    k = torch.randn(1, sk, 2, 32) * torch.linspace(0.2, 3.0, sk)[None, :, None, None]  # later keys score higher
    v = torch.randn(1, sk, 2, 32)
    for dt in (torch.float32, torch.float16):
        for causal, window in ((False, (-1, -1)), (True, (25, -1))):
            args = [t.to(dt) for t in (q, k, v)]
            out, lse = fa.flash_attn_func(*args, softmax_scale=scale, causal=causal, window_size=window,
                                          return_softmax_lse=True)
            ref, ref_lse = attention_ref(*args, causal=causal, window=window, scale=scale)
            assert not out.isnan().any() and rel(out, ref) < TOL[dt], (dt, causal)
            torch.testing.assert_close(lse.double(), ref_lse, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("paged", [False, True], ids=["contiguous", "paged"])
def test_kvcache_append_and_attend(fa, paged):
    torch.manual_seed(11)
    b, sq, hq, hk, d, page = 3, 4, 4, 2, 32, 16
    seqlens = torch.tensor([10, 37, 0], dtype=torch.int32)
    if paged:
        kc = rand(12, page, hk, d)
        block_table = torch.randperm(12)[: b * 4].view(b, 4).to(torch.int32)
    else:
        kc, block_table = rand(b, 64, hk, d), None
    vc = torch.randn_like(kc)
    kc0, vc0 = kc.clone(), vc.clone()
    q, kn, vn = rand(b, sq, hq, d), rand(b, sq, hk, d), rand(b, sq, hk, d)
    out, lse = fa.flash_attn_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=seqlens, block_table=block_table,
                                          causal=True, window_size=(20, -1), return_softmax_lse=True)
    for i in range(b):
        n = int(seqlens[i]) + sq
        j = torch.arange(n)
        rows, slots = (block_table[i].long()[j // page], j % page) if paged else (torch.full_like(j, i), j)
        k_ref, v_ref = kc0[rows, slots].clone(), vc0[rows, slots].clone()
        k_ref[-sq:], v_ref[-sq:] = kn[i], vn[i]
        assert torch.equal(kc[rows, slots], k_ref) and torch.equal(vc[rows, slots], v_ref)  # appended in place
        ref, ref_lse = attention_ref(q[i:i + 1], k_ref[None], v_ref[None], causal=True, window=(20, -1))
        assert rel(out[i:i + 1], ref) < 2e-3
        torch.testing.assert_close(lse[i].double(), ref_lse[0], atol=1e-4, rtol=1e-4)


def test_kvcache_bad_block_table_and_overflow_are_clear_errors(fa):
    q, kc = rand(2, 1, 2, 32), rand(4, 16, 2, 32)
    bt = torch.tensor([[0, 1], [2, 9]], dtype=torch.int32)
    with pytest.raises(ValueError, match="block_table names pages outside k_cache's 4 pages"):
        fa.flash_attn_with_kvcache(q, kc, kc.clone(), cache_seqlens=torch.tensor([3, 20], dtype=torch.int32),
                                   block_table=bt)
    bt[1, 1] = 3
    with pytest.raises(ValueError, match="does not fit the cache of 32 tokens"):
        fa.flash_attn_with_kvcache(q, kc, kc.clone(), rand(2, 1, 2, 32), rand(2, 1, 2, 32),
                                   cache_seqlens=torch.tensor([3, 32], dtype=torch.int32), block_table=bt)
    with pytest.raises(ValueError, match="block_table must be int32"):
        fa.flash_attn_with_kvcache(q, kc, kc.clone(), cache_seqlens=1, block_table=bt.long())
    with pytest.raises(ValueError, match="needs cache_seqlens"):
        fa.flash_attn_with_kvcache(q, kc, kc.clone(), rand(2, 1, 2, 32), rand(2, 1, 2, 32), block_table=bt)


def test_gpu_path_bad_inputs(fa):
    q = rand(1, 8, 2, 48)
    with pytest.raises(ValueError, match="head dim 48 is not supported"):
        fa.flash_attn_func(q, q, q)
    q = rand(1, 8, 2, 32)
    with pytest.raises(ValueError, match="q has dtype torch.int32"):
        fa.flash_attn_func(q.int(), q.int(), q.int())
    cu = torch.tensor([0, 8], dtype=torch.int32)
    with pytest.raises(ValueError, match="cu_seqlens_k ends at 9 but the packed tensor has 8 tokens"):
        fa.flash_attn_varlen_func(q[0], q[0], q[0], cu, torch.tensor([0, 9], dtype=torch.int32), 8, 9)


def test_torch_compile_fullgraph_forward_and_backward(flash_attn2):
    """Custom ops + fake impls + autograd: dynamo traces the whole call without graph breaks (CPU kernel)."""
    def f(q, k, v):
        out, lse = flash_attn2.flash_attn_func(q, k, v, causal=True, window_size=(7, -1), return_softmax_lse=True)
        return out.float().square().sum() + lse.sum()

    torch.manual_seed(2)
    q, k, v = (torch.randn(1, 33, h, 32, requires_grad=True) for h in (4, 2, 2))
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    loss = compiled(q, k, v)
    grads = torch.autograd.grad(loss, (q, k, v))
    want_loss = f(q, k, v)
    want = torch.autograd.grad(want_loss, (q, k, v))
    torch.testing.assert_close(loss, want_loss)
    for g, w in zip(grads, want):
        torch.testing.assert_close(g, w)
