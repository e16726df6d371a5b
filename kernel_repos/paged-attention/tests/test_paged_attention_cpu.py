"""paged-attention on CPU (the torch path) against a float64 gather-then-softmax reference."""

import math

import pytest
import torch

import paged_attention as pa
from paged_ref import decode_ref, flash_caches, fp8_round, make_scenario, tokens_in_slot_order, vllm_caches

TOL = {torch.float32: 2e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}


def _fill(sc, kc, vc, dtype, layout, kv="auto", ks=1.0, vs=1.0):
    k, v = tokens_in_slot_order(sc)
    write = pa.reshape_and_cache if layout == "vllm" else pa.reshape_and_cache_flash
    write(k.to(dtype), v.to(dtype), kc, vc, sc.slot_mapping, kv, ks, vs)


def _case(seed, seq_lens, hq, hk, d, bs, dtype, layout="vllm", shared_prefix=0, fp8=False):
    g = torch.Generator().manual_seed(seed)
    sc = make_scenario(seq_lens, hk, d, bs, shared_prefix=shared_prefix, generator=g)
    caches = vllm_caches if layout == "vllm" else flash_caches
    kc, vc = caches(sc, bs, dtype, fp8=fp8)
    q = torch.randn(len(seq_lens), hq, d, generator=g).to(dtype)
    return sc, kc, vc, q


@pytest.mark.parametrize("bs", [8, 16, 32])
@pytest.mark.parametrize("hq,hk,d", [(8, 2, 64), (4, 4, 128), (8, 1, 256), (6, 2, 80)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_v1_matches_float64_reference(bs, hq, hk, d, dtype):
    sc, kc, vc, q = _case(bs * 7 + d + hq, [1, 37, bs * 3, 100], hq, hk, d, bs, dtype, shared_prefix=2)
    _fill(sc, kc, vc, dtype, "vllm")
    out = torch.full_like(q, float("nan"))
    scale = d ** -0.5
    pa.paged_attention_v1(out, q, kc, vc, hk, scale, sc.block_tables, sc.seq_lens, bs, int(sc.seq_lens.max()),
                          None, "auto", 1.0, 1.0)
    rd = lambda x: x.to(dtype).double()  # noqa: E731  the cache holds dtype-rounded K/V
    ref = decode_ref(q, sc, scale, kv_round=(rd, rd))
    torch.testing.assert_close(out.double(), ref, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("layout", ["vllm", "flash"])
def test_v2_long_context_partitions_and_alibi(layout):
    """Contexts over several 512-token partitions, ALiBi, GQA 4:1; v2 fills the partials and merges them."""
    hq, hk, d, bs = 8, 2, 64, 16
    lens = [1300, 5, 512, 1025]
    sc, kc, vc, q = _case(3, lens, hq, hk, d, bs, torch.float32, layout=layout, shared_prefix=3)
    _fill(sc, kc, vc, torch.float32, layout)
    alibi = torch.linspace(0.01, 0.3, hq)
    scale = 0.11
    ref = decode_ref(q, sc, scale, alibi=alibi)
    if layout == "vllm":
        parts = math.ceil(max(lens) / pa.PARTITION_SIZE)
        out = torch.empty_like(q)
        es = torch.empty(4, hq, parts)
        ml = torch.empty(4, hq, parts)
        tmp = torch.empty(4, hq, parts, d)
        pa.paged_attention_v2(out, es, ml, tmp, q, kc, vc, hk, scale, sc.block_tables, sc.seq_lens, bs, max(lens),
                              alibi, "auto", 1.0, 1.0)
        torch.testing.assert_close(out.double(), ref, atol=2e-4, rtol=2e-4)
        # partition 1 of sequence 0 covers tokens 512..1023: its normalised partial is attention over just those
        s0 = sc.keys[0][512:1024].double().repeat_interleave(4, 1)
        logits = torch.einsum("hd,nhd->hn", q[0].double(), s0) * scale
        logits += alibi.double()[:, None] * (torch.arange(512, 1024) - 1300 + 1).double()
        torch.testing.assert_close(ml[0, :, 1].double(), logits.max(-1).values, atol=1e-4, rtol=1e-4)
        v0 = sc.values[0][512:1024].double().repeat_interleave(4, 1)
        torch.testing.assert_close(tmp[0, :, 1].double(), torch.einsum("hn,nhd->hd", torch.softmax(logits, -1), v0),
                                   atol=2e-4, rtol=2e-4)
    else:
        out = torch.empty_like(q)
        pa.paged_attention_flash(out, q, kc, vc, sc.block_tables, sc.seq_lens, scale, alibi_slopes=alibi)
        torch.testing.assert_close(out.double(), ref, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("layout", ["vllm", "flash"])
@pytest.mark.parametrize("storage", [torch.uint8, torch.float8_e4m3fn])
def test_fp8_cache_with_scales(layout, storage):
    hq, hk, d, bs = 8, 2, 128, 16
    sc, kc, vc, q = _case(11, [33, 70], hq, hk, d, bs, torch.bfloat16, layout=layout, fp8=True)
    kc, vc = kc.view(storage), vc.view(storage)
    ks, vs = 0.05, torch.tensor([0.02])
    _fill(sc, kc, vc, torch.bfloat16, layout, "fp8", ks, vs)
    out = torch.empty_like(q)
    if layout == "vllm":
        pa.paged_attention_v1(out, q, kc, vc, hk, d ** -0.5, sc.block_tables, sc.seq_lens, bs, 70, None, "fp8", ks, vs)
    else:
        pa.paged_attention_flash(out, q, kc, vc, sc.block_tables, sc.seq_lens, d ** -0.5, kv_cache_dtype="fp8",
                                 k_scale=ks, v_scale=vs)
    kr = lambda x: fp8_round(x.to(torch.bfloat16).double(), 0.05)  # noqa: E731
    vr = lambda x: fp8_round(x.to(torch.bfloat16).double(), 0.02)  # noqa: E731
    ref = decode_ref(q, sc, d ** -0.5, kv_round=(kr, vr))
    torch.testing.assert_close(out.double(), ref, atol=3e-2, rtol=3e-2)
    # and fp8 really quantised: the reference without rounding differs by more than bf16 noise
    assert (decode_ref(q, sc, d ** -0.5) - ref).abs().max() > 1e-3


def test_zero_length_sequence_gives_zeros_and_v1_equals_v2():
    hq, hk, d, bs = 4, 2, 64, 8
    sc, kc, vc, q = _case(5, [0, 9, 600], hq, hk, d, bs, torch.float32)
    _fill(sc, kc, vc, torch.float32, "vllm")
    o1 = torch.empty_like(q)
    pa.paged_attention_v1(o1, q, kc, vc, hk, 0.125, sc.block_tables, sc.seq_lens, bs, 600, None, "auto", 1.0, 1.0)
    o2 = torch.empty_like(q)
    es, ml, tmp = torch.empty(3, hq, 2), torch.empty(3, hq, 2), torch.empty(3, hq, 2, d)
    pa.paged_attention_v2(o2, es, ml, tmp, q, kc, vc, hk, 0.125, sc.block_tables, sc.seq_lens, bs, 600, None, "auto",
                          1.0, 1.0)
    assert torch.equal(o1[0], torch.zeros_like(o1[0]))
    torch.testing.assert_close(o1, o2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(o1.double(), decode_ref(q, sc, 0.125), atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("window_left", [-1, 20])
def test_varlen_prefill_chunks_causal(window_left):
    """Sequences with several new query tokens each (chunked prefill): bottom-right causal over the paged KV."""
    hq, hk, d, bs = 6, 3, 64, 16
    lens = [50, 17, 33]
    q_lens = [50, 1, 7]
    sc, kc, vc, _ = _case(21, lens, hq, hk, d, bs, torch.float32, layout="flash", shared_prefix=1)
    _fill(sc, kc, vc, torch.float32, "flash")
    g = torch.Generator().manual_seed(2)
    q = torch.randn(sum(q_lens), hq, d, generator=g)
    cu = torch.tensor([0, 50, 51, 58], dtype=torch.int32)
    out = torch.empty_like(q)
    pa.paged_attention_varlen(out, q, kc, vc, cu, sc.seq_lens, sc.block_tables, 0.2, causal=True,
                              window_left=window_left)
    for i, (n, m) in enumerate(zip(lens, q_lens)):
        k = sc.keys[i].double().repeat_interleave(2, 1)
        v = sc.values[i].double().repeat_interleave(2, 1)
        qi = q[cu[i]:cu[i + 1]].double()
        s = torch.einsum("qhd,khd->hqk", qi, k) * 0.2
        row = torch.arange(m)[:, None] + n - m
        col = torch.arange(n)[None, :]
        allowed = col <= row
        if window_left >= 0:
            allowed &= col >= row - window_left
        s = s.masked_fill(~allowed, float("-inf"))
        ref = torch.einsum("hqk,khd->qhd", torch.softmax(s, -1), v)
        torch.testing.assert_close(out[cu[i]:cu[i + 1]].double(), ref, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("layout", ["vllm", "flash"])
def test_reshape_and_cache_writes_exactly_the_given_slots(layout):
    """Poisoned cache: after the write, the given slots hold the tokens (bit-exact) and every other byte is still
    poison; negative slots (padding) write nothing."""
    hk, d, bs, nblocks = 2, 64, 16, 9
    g = torch.Generator().manual_seed(7)
    ntok = 40
    key = torch.randn(ntok, hk, d, generator=g).to(torch.bfloat16)
    value = torch.randn(ntok, hk, d, generator=g).to(torch.bfloat16)
    slots = torch.randperm(nblocks * bs, generator=g)[:ntok].long()
    slots[[3, 17]] = -1
    if layout == "vllm":
        kc = torch.full((nblocks, hk, d // 8, bs, 8), float("nan"), dtype=torch.bfloat16)
        vc = torch.full((nblocks, hk, d, bs), float("nan"), dtype=torch.bfloat16)
        pa.reshape_and_cache(key, value, kc, vc, slots, "auto", 1.0, 1.0)
        k_tok = lambda b, o: kc[b, :, :, o, :].reshape(hk, d)  # noqa: E731
        v_tok = lambda b, o: vc[b, :, :, o]  # noqa: E731
    else:
        kc = torch.full((nblocks, bs, hk, d), float("nan"), dtype=torch.bfloat16)
        vc = torch.full_like(kc, float("nan"))
        pa.reshape_and_cache_flash(key, value, kc, vc, slots, "auto", 1.0, 1.0)
        k_tok = lambda b, o: kc[b, o]  # noqa: E731
        v_tok = lambda b, o: vc[b, o]  # noqa: E731
    written = set()
    for i, s in enumerate(slots.tolist()):
        if s < 0:
            continue
        written.add(s)
        assert torch.equal(k_tok(s // bs, s % bs), key[i]) and torch.equal(v_tok(s // bs, s % bs), value[i])
    for s in range(nblocks * bs):
        if s not in written:
            assert k_tok(s // bs, s % bs).isnan().all() and v_tok(s // bs, s % bs).isnan().all(), f"slot {s}"


def test_copy_and_swap_blocks():
    g = torch.Generator().manual_seed(3)
    caches_k = [torch.randn(6, 2, 8, 16, 8, generator=g) for _ in range(2)]
    caches_v = [torch.randn(6, 2, 64, 16, generator=g) for _ in range(2)]
    before_k = [c.clone() for c in caches_k]
    before_v = [c.clone() for c in caches_v]
    mapping = torch.tensor([[0, 3], [3, 5], [1, 1]])  # 3 is both read and written: sources are read first
    pa.copy_blocks(caches_k, caches_v, mapping)
    for before, after in zip(before_k + before_v, caches_k + caches_v):
        assert torch.equal(after[3], before[0]) and torch.equal(after[5], before[3])
        for b in (0, 1, 2, 4):
            assert torch.equal(after[b], before[b])
    src = torch.randn(4, 16, 2, 64, generator=g)
    dst = torch.zeros(5, 16, 2, 64)
    pa.swap_blocks(src, dst, torch.tensor([[2, 0], [0, 4]]))
    assert torch.equal(dst[0], src[2]) and torch.equal(dst[4], src[0]) and dst[1:4].abs().sum() == 0
