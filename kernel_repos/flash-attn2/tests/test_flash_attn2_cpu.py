"""CPU forward of flash-attn2 against a float64 reference, on both kernel paths."""

import math

import pytest
import torch

ISAS = ["portable", "avx512"]
TOL = {torch.float32: dict(atol=2e-5, rtol=1e-4), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}
LSE_TOL = {torch.float32: dict(atol=2e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-3, rtol=1e-3)}


def reference(q, k, v, scale, causal=False, window=(-1, -1), softcap=0.0):
    """float64 (B, S, H, D) attention -> out (B, Sq, Hq, D), lse (B, Hq, Sq)."""
    sq, hq, sk, hk = q.shape[1], q.shape[2], k.shape[1], k.shape[2]
    qd = q.double()
    kd = k.double().repeat_interleave(hq // hk, dim=2)
    vd = v.double().repeat_interleave(hq // hk, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", qd, kd) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    left, right = window[0], 0 if causal else window[1]
    diag = torch.arange(sq)[:, None] + (sk - sq)
    j = torch.arange(sk)[None, :]
    visible = torch.ones(sq, sk, dtype=torch.bool)
    if left >= 0:
        visible &= j >= diag - left
    if right >= 0:
        visible &= j <= diag + right
    s = s.masked_fill(~visible, -math.inf)
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - torch.where(torch.isinf(lse), 0.0, lse)[..., None])
    return torch.einsum("bhqk,bkhd->bqhd", p, vd), lse


@pytest.fixture(params=ISAS)
def isa(request, monkeypatch, flash_attn2):
    monkeypatch.setenv("FLASH_ATTN2_CPU_ISA", request.param)
    if request.param == "avx512":
        try:
            flash_attn2.cpu_isa(128)
        except RuntimeError as err:
            pytest.skip(f"CPU has no AVX-512 path: {err}")
    return request.param


def rand(*shape, dtype, gen):
    return torch.randn(*shape, generator=gen, dtype=torch.float32).to(dtype)


# (B, Sq, Sk, Hq, Hk, D, causal, window, softcap)
CASES = [
    (2, 70, 70, 4, 4, 64, False, (-1, -1), 0.0),
    (1, 130, 130, 2, 2, 128, True, (-1, -1), 0.0),
    (1, 40, 150, 4, 2, 64, True, (-1, -1), 0.0),     # Sq < Sk, GQA
    (1, 150, 40, 2, 1, 64, True, (-1, -1), 0.0),     # Sq > Sk: first rows see no key; MQA
    (1, 200, 200, 2, 2, 64, False, (50, -1), 0.0),   # left window only
    (1, 200, 200, 2, 2, 64, False, (-1, 30), 0.0),   # right window only
    (1, 160, 190, 3, 1, 32, False, (40, 17), 0.0),   # both, MQA
    (1, 160, 160, 2, 2, 64, True, (70, -1), 0.0),    # causal + left window
    (1, 100, 120, 2, 2, 64, False, (-1, -1), 5.0),   # softcap
    (1, 90, 90, 4, 2, 128, True, (-1, -1), 30.0),    # softcap + causal + GQA
    (1, 33, 47, 2, 2, 24, True, (10, 3), 0.0),       # head dim not a multiple of 16
    (1, 65, 65, 1, 1, 256, False, (-1, -1), 0.0),    # largest head dim
    (1, 1, 300, 4, 1, 64, True, (-1, -1), 0.0),      # decode-like single query
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}-Sq{}-Sk{}-H{}/{}-D{}-c{}-w{}-cap{}".format(*c))
def test_fwd_matches_reference(flash_attn2, isa, dtype, case):
    b, sq, sk, hq, hk, d, causal, window, softcap = case
    gen = torch.Generator().manual_seed(hash(case) % 2**31)
    q, k, v = rand(b, sq, hq, d, dtype=dtype, gen=gen), rand(b, sk, hk, d, dtype=dtype, gen=gen), rand(
        b, sk, hk, d, dtype=dtype, gen=gen)
    scale = d ** -0.5
    out, lse = flash_attn2.flash_attn_func(q, k, v, causal=causal, window_size=window, softcap=softcap,
                                           return_softmax_lse=True)
    ref_out, ref_lse = reference(q, k, v, scale, causal, window, softcap)
    assert out.dtype == dtype and out.shape == q.shape
    assert lse.dtype == torch.float32 and lse.shape == (b, hq, sq)
    torch.testing.assert_close(out.double(), ref_out, **TOL[dtype])
    torch.testing.assert_close(lse.double(), ref_lse, **LSE_TOL[dtype])
    assert flash_attn2.cpu_isa(d) == ("avx512" if isa == "avx512" and d % 16 == 0 else "portable")


def test_rows_without_keys_are_zero_with_minus_inf_lse(flash_attn2, isa):
    q, k, v = torch.randn(1, 10, 2, 64), torch.randn(1, 4, 2, 64), torch.randn(1, 4, 2, 64)
    out, lse = flash_attn2.flash_attn_func(q, k, v, causal=True, return_softmax_lse=True)
    assert torch.all(out[:, :6] == 0)
    assert torch.all(lse[:, :, :6] == -math.inf)
    assert torch.all(torch.isfinite(lse[:, :, 6:]))


def test_explicit_scale_and_return_types(flash_attn2, isa):
    q, k, v = torch.randn(1, 20, 2, 32), torch.randn(1, 20, 2, 32), torch.randn(1, 20, 2, 32)
    out = flash_attn2.flash_attn_func(q, k, v, softmax_scale=0.3)
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out.double(), reference(q, k, v, 0.3)[0], **TOL[torch.float32])


def random_cu_seqlens(gen, batch, max_len, allow_empty=True):
    lens = torch.randint(0 if allow_empty else 1, max_len + 1, (batch,), generator=gen)
    return torch.cat([torch.zeros(1, dtype=torch.int32), lens.cumsum(0).to(torch.int32)]), lens


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("causal,window,softcap,hq,hk", [
    (False, (-1, -1), 0.0, 4, 4), (True, (-1, -1), 0.0, 4, 2), (False, (20, 5), 0.0, 2, 1),
    (True, (-1, -1), 10.0, 2, 2)])
def test_varlen_matches_reference(flash_attn2, isa, dtype, causal, window, softcap, hq, hk):
    gen = torch.Generator().manual_seed(7 + hq + int(causal))
    cu_q, lens_q = random_cu_seqlens(gen, 4, 100)
    cu_k, lens_k = random_cu_seqlens(gen, 4, 100)
    d = 64
    q = rand(int(cu_q[-1]), hq, d, dtype=dtype, gen=gen)
    k = rand(int(cu_k[-1]), hk, d, dtype=dtype, gen=gen)
    v = rand(int(cu_k[-1]), hk, d, dtype=dtype, gen=gen)
    out, lse = flash_attn2.flash_attn_varlen_func(
        q, k, v, cu_q, cu_k, int(lens_q.max()), int(lens_k.max()), causal=causal, window_size=window,
        softcap=softcap, return_softmax_lse=True)
    assert out.shape == q.shape and lse.shape == (hq, q.shape[0])
    for b in range(4):
        q0, q1, k0, k1 = int(cu_q[b]), int(cu_q[b + 1]), int(cu_k[b]), int(cu_k[b + 1])
        ref_out, ref_lse = reference(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], d ** -0.5, causal,
                                     window, softcap)
        torch.testing.assert_close(out[q0:q1].double(), ref_out[0], **TOL[dtype])
        torch.testing.assert_close(lse[:, q0:q1].double(), ref_lse[0], **LSE_TOL[dtype])


def test_both_paths_agree_on_a_larger_causal_bf16_call(flash_attn2, monkeypatch):
    gen = torch.Generator().manual_seed(3)
    q, k, v = (rand(1, 300, 4, 128, dtype=torch.bfloat16, gen=gen) for _ in range(3))
    outs = {}
    for isa in ISAS:
        monkeypatch.setenv("FLASH_ATTN2_CPU_ISA", isa)
        try:
            outs[isa] = flash_attn2.flash_attn_func(q, k, v, causal=True)
        except RuntimeError:
            pytest.skip("no AVX-512 path on this CPU")
    torch.testing.assert_close(outs["portable"].float(), outs["avx512"].float(), atol=2e-2, rtol=2e-2)


def test_backward_uses_reference_gradients(flash_attn2):
    gen = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(1, 37, h, 32, generator=gen, dtype=torch.float64).float().requires_grad_()
               for h in (4, 2, 2))
    out, lse = flash_attn2.flash_attn_func(q, k, v, causal=True, window_size=(9, -1), softcap=4.0,
                                           return_softmax_lse=True)
    assert out.grad_fn is not None
    (out.square().sum() + lse.sum()).backward()
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref_out, ref_lse = reference(q64, k64, v64, 32 ** -0.5, True, (9, -1), 4.0)
    (ref_out.square().sum() + ref_lse.sum()).backward()
    for got, want in ((q.grad, q64.grad), (k.grad, k64.grad), (v.grad, v64.grad)):
        torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4)


def test_varlen_backward(flash_attn2):
    cu = torch.tensor([0, 5, 12], dtype=torch.int32)
    q, k, v = (torch.randn(12, 2, 16).requires_grad_() for _ in range(3))
    flash_attn2.flash_attn_varlen_func(q, k, v, cu, cu, 7, 7, causal=True).sum().backward()
    assert q.grad.shape == q.shape and torch.isfinite(k.grad).all() and v.grad.abs().sum() > 0


def test_no_grad_outputs_do_not_require_grad(flash_attn2):
    q = torch.randn(1, 8, 2, 16, requires_grad=True)
    with torch.no_grad():
        out = flash_attn2.flash_attn_func(q, q, q)
    assert not out.requires_grad


@pytest.mark.parametrize("kwargs,match", [
    (dict(dropout_p=0.1), "dropout_p"),
    (dict(alibi_slopes=torch.ones(2)), "alibi_slopes"),
    (dict(return_attn_probs=True), "return_attn_probs"),
])
def test_unsupported_features_raise(flash_attn2, kwargs, match):
    q = torch.randn(1, 8, 2, 16)
    with pytest.raises(NotImplementedError, match=match):
        flash_attn2.flash_attn_func(q, q, q, **kwargs)
    cu = torch.tensor([0, 8], dtype=torch.int32)
    with pytest.raises(NotImplementedError, match=match):
        flash_attn2.flash_attn_varlen_func(q[0], q[0], q[0], cu, cu, 8, 8, **kwargs)


def _qkv(shape=(1, 8, 2, 16), dtype=torch.float32):
    return tuple(torch.randn(*shape).to(dtype) for _ in range(3))


@pytest.mark.parametrize("make,match", [
    (lambda: _qkv(dtype=torch.float16), "q has dtype torch.float16; supported on cpu"),
    (lambda: _qkv(shape=(1, 8, 2, 12)), "head dim 12 is not supported on cpu"),
    (lambda: _qkv(shape=(1, 8, 2, 264)), "head dim 264 is not supported on cpu"),
    (lambda: (torch.randn(1, 8, 3, 16), torch.randn(1, 8, 2, 16), torch.randn(1, 8, 2, 16)),
     "query heads \\(3\\) must be a multiple of key/value heads \\(2\\)"),
    (lambda: (torch.randn(1, 8, 2, 16), torch.randn(1, 8, 2, 32)[..., ::2], torch.randn(1, 8, 2, 16)),
     "k must be contiguous in its last"),
    (lambda: (torch.randn(1, 8, 2, 16), torch.randn(1, 8, 2, 16), torch.randn(1, 9, 2, 16)),
     "k \\(1, 8, 2, 16\\) and v \\(1, 9, 2, 16\\) must have the same"),
    (lambda: (torch.randn(1, 8, 2, 16), torch.randn(1, 8, 2, 16).bfloat16(), torch.randn(1, 8, 2, 16)),
     "must share one dtype"),
    (lambda: (torch.randn(8, 2, 16),) * 3, "q must be 4-D"),
    (lambda: (torch.randn(1, 8, 2, 16), torch.randn(2, 8, 2, 16), torch.randn(2, 8, 2, 16)),
     "batch sizes differ: q 1, k 2"),
])
def test_bad_inputs_name_the_argument(flash_attn2, make, match):
    with pytest.raises(ValueError, match=match):
        flash_attn2.flash_attn_func(*make())


def test_bad_softcap_and_window(flash_attn2):
    q = torch.randn(1, 8, 2, 16)
    with pytest.raises(ValueError, match="softcap must be >= 0"):
        flash_attn2.flash_attn_func(q, q, q, softcap=-1.0)
    with pytest.raises(ValueError, match="window_size must be a pair"):
        flash_attn2.flash_attn_func(q, q, q, window_size=3)


@pytest.mark.parametrize("cu_q,cu_k,match", [
    (torch.tensor([0, 4, 8], dtype=torch.int64), None, "cu_seqlens_q must be a 1-D int32 tensor"),
    (torch.tensor([0, 6, 4], dtype=torch.int32), None, "cu_seqlens_q must start at 0 and never decrease, got \\[0, 6, 4\\]"),
    (torch.tensor([1, 4, 8], dtype=torch.int32), None, "cu_seqlens_q must start at 0 and never decrease, got \\[1, 4, 8\\]"),
    (torch.tensor([0, 4, 9], dtype=torch.int32), None, "cu_seqlens_q ends at 9 but the packed tensor has 8 tokens"),
    (None, torch.tensor([0, 8], dtype=torch.int32), "cu_seqlens_q has 3 entries but cu_seqlens_k has 2"),
    (torch.tensor([0, 1, 8], dtype=torch.int32), None, "a sequence of 7 tokens but max_seqlen_q=6"),
])
def test_bad_cu_seqlens(flash_attn2, cu_q, cu_k, match):
    q = torch.randn(8, 2, 16)
    default = torch.tensor([0, 4, 8], dtype=torch.int32)
    cu_q = default if cu_q is None else cu_q
    cu_k = default if cu_k is None else cu_k
    with pytest.raises(ValueError, match=match):
        flash_attn2.flash_attn_varlen_func(q, q, q, cu_q, cu_k, 6, 6)


def test_isa_env_var_is_validated(flash_attn2, monkeypatch):
    monkeypatch.setenv("FLASH_ATTN2_CPU_ISA", "sse9")
    with pytest.raises(RuntimeError, match="FLASH_ATTN2_CPU_ISA must be one of auto, portable, avx512"):
        flash_attn2.cpu_isa(64)
    monkeypatch.setenv("FLASH_ATTN2_CPU_ISA", "portable")
    assert flash_attn2.cpu_isa(64) == "portable"


def test_supported_and_public_api(flash_attn2):
    assert set(flash_attn2.__all__) >= {"flash_attn_func", "flash_attn_varlen_func"}
    assert "flash_attn_with_kvcache" in flash_attn2.__all__
    assert flash_attn2.SUPPORTED["dtypes_by_device"]["cpu"] == (torch.float32, torch.bfloat16)
    assert flash_attn2.SUPPORTED["dtypes_by_device"]["cuda"] == (torch.float16, torch.bfloat16)
    assert set(flash_attn2.SUPPORTED["dtypes"]) >= {torch.float32, torch.bfloat16}
    assert "cpu" in flash_attn2.SUPPORTED["devices"] and flash_attn2.SUPPORTED["backward"] is True
    assert 128 in flash_attn2.SUPPORTED["head_dims"] and 12 not in flash_attn2.SUPPORTED["head_dims"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_strided_inputs_from_bhsd_layout(flash_attn2, isa, dtype):
    """(B, H, S, D) tensors viewed as (B, S, H, D) by transpose: only the last dim is contiguous."""
    gen = torch.Generator().manual_seed(5)
    qh, kh, vh = (rand(2, 4, 90, 64, dtype=dtype, gen=gen) for _ in range(3))
    q, k, v = (t.transpose(1, 2) for t in (qh, kh, vh))
    out = flash_attn2.flash_attn_func(q, k, v, causal=True)
    assert out.is_contiguous()
    torch.testing.assert_close(out.double(), reference(q, k, v, 64 ** -0.5, True)[0], **TOL[dtype])


def test_empty_shapes(flash_attn2, isa):
    q = torch.randn(1, 5, 2, 64)
    out, lse = flash_attn2.flash_attn_func(q, q[:, :0], q[:, :0], return_softmax_lse=True)  # no keys
    assert torch.all(out == 0) and torch.all(lse == -math.inf)
    out, lse = flash_attn2.flash_attn_func(q[:, :0], q, q, return_softmax_lse=True)  # no queries
    assert out.shape == (1, 0, 2, 64) and lse.shape == (1, 2, 0)
    cu = torch.tensor([0], dtype=torch.int32)
    out, lse = flash_attn2.flash_attn_varlen_func(q[0, :0], q[0, :0], q[0, :0], cu, cu, 0, 0,
                                                  return_softmax_lse=True)
    assert out.shape == (0, 2, 64) and lse.shape == (2, 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_large_scores_stay_stable(flash_attn2, isa, dtype):
    gen = torch.Generator().manual_seed(9)
    q, k = (rand(1, 150, 2, 64, dtype=torch.float32, gen=gen).mul(30).to(dtype) for _ in range(2))
    v = rand(1, 150, 2, 64, dtype=dtype, gen=gen)
    out, lse = flash_attn2.flash_attn_func(q, k, v, causal=True, return_softmax_lse=True)
    ref_out, ref_lse = reference(q, k, v, 64 ** -0.5, True)
    torch.testing.assert_close(out.double(), ref_out, atol=1e-4 if dtype == torch.float32 else 2e-2, rtol=1e-3)
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-2, rtol=1e-5)


def test_non_cpu_tensors_are_refused_by_name(flash_attn2):
    q = torch.randn(1, 8, 2, 16)
    with pytest.raises(ValueError, match="all tensors must be on one device; q is on cpu, k on meta"):
        flash_attn2.flash_attn_func(q, q.to("meta"), q)
    cu = torch.tensor([0, 8], dtype=torch.int32)
    with pytest.raises(ValueError, match="q is on cpu, cu_seqlens_k on meta"):
        flash_attn2.flash_attn_varlen_func(q[0], q[0], q[0], cu, cu.to("meta"), 8, 8)
