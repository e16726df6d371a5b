"""sliding-window on CPU: prefill and ring-buffer decode against a float64 reference."""

import resource

import pytest
import torch

import sliding_window as sw
from sliding_window import _torch_impl


def ref(q, k, v, left, right, softcap=0.0, scale=None):
    """float64, flash layout, bottom-right aligned window [i - left, i + right] (-1 = unbounded)."""
    q, k, v = q.double(), k.double(), v.double()
    b, sq, hq, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    scale = d ** -0.5 if scale is None else scale
    k, v = k.repeat_interleave(hq // hk, 2), v.repeat_interleave(hq // hk, 2)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    i = torch.arange(sq)[:, None] + sk - sq
    j = torch.arange(sk)[None, :]
    ok = torch.ones(sq, sk, dtype=torch.bool)
    if left >= 0:
        ok &= j >= i - left
    if right >= 0:
        ok &= j <= i + right
    s = s.masked_fill(~ok, float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return torch.einsum("bhqk,bkhd->bqhd", p, v)


@pytest.mark.parametrize("sq,sk", [(300, 300), (1, 257), (40, 300)])
@pytest.mark.parametrize("window,causal,lr", [(64, True, (63, 0)), ((20, 5), False, (20, 5)), (-1, True, (-1, 0)),
                                              ((16, -1), False, (16, -1))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prefill_matches_reference(sq, sk, window, causal, lr, dtype):
    g = torch.Generator().manual_seed(sq + sk)
    q = torch.randn(2, sq, 8, 64, generator=g).to(dtype)
    k = torch.randn(2, sk, 2, 64, generator=g).to(dtype)
    v = torch.randn(2, sk, 2, 64, generator=g).to(dtype)
    out = sw.sliding_window_attn_func(q, k, v, window_size=window, causal=causal)
    tol = 2e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.double(), ref(q, k, v, *lr), atol=tol, rtol=tol)


def test_softcap_and_scale():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 150, 4, 32, generator=g) * 3 for _ in range(3))
    out = sw.sliding_window_attn_func(q, k, v, window_size=33, causal=True, softcap=5.0, softmax_scale=0.3)
    torch.testing.assert_close(out.double(), ref(q, k, v, 32, 0, softcap=5.0, scale=0.3), atol=2e-5, rtol=2e-5)


def test_flash_attn_func_signature_is_the_adapters():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 50, 2, 16, generator=g) for _ in range(3))
    out = sw.flash_attn_func(q, k, v, softmax_scale=0.25, causal=True, window_size=(9, 0), softcap=0.0)
    torch.testing.assert_close(out.double(), ref(q, k, v, 9, 0, scale=0.25), atol=2e-5, rtol=2e-5)


def test_work_grows_with_s_times_w(monkeypatch):
    """The torch path only ever scores keys inside the window's reach: total (query x key) pairs <= S*(W+BLOCK_Q)."""
    pairs = []
    real = torch.nn.functional.scaled_dot_product_attention

    def counting(qb, kb, vb, **kw):
        pairs.append(qb.shape[-2] * kb.shape[-2])
        return real(qb, kb, vb, **kw)

    monkeypatch.setattr(_torch_impl.F, "scaled_dot_product_attention", counting)
    s, w = 2048, 64
    x = torch.randn(1, s, 2, 16)
    sw.sliding_window_attn_func(x, x, x, window_size=w, causal=True)
    assert sum(pairs) <= s * (w + _torch_impl.BLOCK_Q)
    assert sum(pairs) < s * s / 8  # vs full attention's S^2


def test_ring_decode_matches_windowed_attention_over_the_whole_history():
    g = torch.Generator().manual_seed(4)
    b, hq, hk, d, w, steps = 2, 8, 2, 32, 16, 50
    ks = torch.randn(b, steps, hk, d, generator=g)
    vs = torch.randn(b, steps, hk, d, generator=g)
    qs = torch.randn(b, steps, hq, d, generator=g)
    cache = sw.RingKVCache.allocate(b, w, hk, d, dtype=torch.float32)
    sw.ring_cache_append(cache, ks[:, :5], vs[:, :5])  # a 5-token prompt first
    full = ref(qs[:, :steps], ks, vs, w - 1, 0)  # causal window over the whole history
    for t in range(5, steps):
        sw.ring_cache_append(cache, ks[:, t:t + 1], vs[:, t:t + 1])
        out = sw.sliding_window_decode(qs[:, t:t + 1], cache)
        torch.testing.assert_close(out.double(), full[:, t:t + 1], atol=2e-5, rtol=2e-5)
    assert cache.length == steps and cache.filled == w


def test_long_prompt_keeps_only_the_window():
    cache = sw.RingKVCache.allocate(1, 8, 1, 4, dtype=torch.float32)
    x = torch.arange(20, dtype=torch.float32).view(1, 20, 1, 1).expand(1, 20, 1, 4).contiguous()
    sw.ring_cache_append(cache, x, x)
    assert sorted(cache.k[0, :, 0, 0].tolist()) == list(range(12, 20))


def test_ring_decode_memory_is_flat_over_many_tokens():
    """20k generated tokens at W=64: the cache never reallocates and the process does not grow."""
    b, hq, hk, d, w = 2, 4, 2, 32, 64
    cache = sw.RingKVCache.allocate(b, w, hk, d, dtype=torch.float32)
    ptrs = (cache.k.data_ptr(), cache.v.data_ptr())
    kv = torch.randn(b, 1, hk, d)
    q = torch.randn(b, 1, hq, d)
    for _ in range(200):  # warm the allocator
        sw.ring_cache_append(cache, kv, kv)
        sw.sliding_window_decode(q, cache)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(20_000):
        sw.ring_cache_append(cache, kv, kv)
        sw.sliding_window_decode(q, cache)
    grew_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
    assert (cache.k.data_ptr(), cache.v.data_ptr()) == ptrs and cache.nbytes() == 2 * b * w * hk * d * 4
    assert grew_kb < 8 * 1024, f"RSS grew by {grew_kb} KiB over 20k tokens"


def test_bad_input():
    x = torch.randn(1, 10, 2, 16)
    with pytest.raises(ValueError, match="window_size 0 must be >= 1"):
        sw.sliding_window_attn_func(x, x, x, window_size=0)
    with pytest.raises(ValueError, match="Hq a multiple of Hk"):
        sw.sliding_window_attn_func(torch.randn(1, 10, 3, 16), x, x, window_size=4)
    with pytest.raises(ValueError, match="dtypes"):
        sw.sliding_window_attn_func(x, x.half(), x.half(), window_size=4)
    cache = sw.RingKVCache.allocate(1, 4, 2, 16, dtype=torch.float32)
    with pytest.raises(ValueError, match="cache is empty"):
        sw.sliding_window_decode(torch.randn(1, 1, 2, 16), cache)
    with pytest.raises(ValueError, match=r"k/v must be \[batch=1, T, kv_heads=2, head_dim=16\]"):
        sw.ring_cache_append(cache, torch.randn(1, 1, 3, 16), torch.randn(1, 1, 3, 16))
