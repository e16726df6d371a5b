"""sliding-window's ring-cache decode kernel through Triton's interpreter, both ways it ships: the JIT host path
(_triton_impl.ring_decode) and the precompiled dispatch (_aot_dispatch.ring_decode) with each configuration's exact
constexprs, tiles and grid from aot/spec.py + aot/tiles.toml (kernel_loader.build.aot.interpret stands in for the
cubin launch and checks the arguments against what the cubin assumes), against the float64 reference over the whole
history (a window of the last W tokens). fp16 only (the interpreter computes bf16 dots on raw bits)."""

import os
import sys
from pathlib import Path

import pytest
import torch

import sliding_window as sw
from sliding_window import _aot_dispatch

pytest.importorskip("triton")
KERNEL_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(KERNEL_DIR.parents[1]))  # kernel_loader, for the interpreter table
pytestmark = pytest.mark.skipif(torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1",
                                reason="interpreter checks need TRITON_INTERPRET=1 from before triton's import "
                                       "(the root conftest sets it where there is no GPU)")
F16 = torch.float16


def _ref(q, k, v, scale, softcap):
    """float64 attention of q [B, 1, Hq, D] over every slot of k/v [B, N, Hk, D]."""
    g = q.shape[2] // k.shape[2]
    s = torch.einsum("bhd,bnhd->bhn", q[:, 0].double(), k.double().repeat_interleave(g, 2)) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    return torch.einsum("bhn,bnhd->bhd", torch.softmax(s, -1), v.double().repeat_interleave(g, 2))[:, None]


CASES = [  # (b, hq, hk, d, window, tokens, softcap)
    (2, 8, 2, 64, 200, 150, 0.0),      # not yet full: 150 of 200 slots, split over partitions
    (1, 32, 1, 128, 64, 300, 0.0),     # wrapped ring, MQA with 32 heads: 2 head chunks
    (1, 4, 4, 80, 40, 41, 30.0),       # head size 80 (bucket 128), softcap, one partition
    (3, 4, 2, 256, 96, 500, 0.0),
]


@pytest.mark.parametrize("impl", ["jit", "aot"])
@pytest.mark.parametrize("b,hq,hk,d,w,n,cap", CASES)
def test_ring_decode_kernel_matches_reference(impl, b, hq, hk, d, w, n, cap):
    g = torch.Generator().manual_seed(b * 100 + d + w)
    cache = sw.RingKVCache.allocate(b, w, hk, d, dtype=F16)
    k, v = (torch.randn(b, n, hk, d, generator=g).to(F16) for _ in range(2))
    sw.ring_cache_append(cache, k, v)
    q = torch.randn(b, 1, hq, d, generator=g).to(F16)
    scale = d ** -0.5
    filled = cache.filled
    if impl == "jit":
        from sliding_window import _triton_impl

        out = _triton_impl.ring_decode(q, cache.k, cache.v, filled, scale, cap)
    else:
        from kernel_loader.build.aot.interpret import InterpreterTable

        tbl = InterpreterTable(KERNEL_DIR, "sliding_window", arch="9.0")
        out = _aot_dispatch.ring_decode(tbl, q, cache.k, cache.v, filled, scale, cap)
        bucket = 64 if d <= 64 else 128 if d <= 128 else 256
        assert tbl.launched[0] == f"decode/d{bucket}/fp16/{'softcap' if cap else 'nocap'}"
    want = _ref(q, k[:, -filled:], v[:, -filled:], scale, cap)  # the ring holds the last W tokens
    assert out.shape == q.shape and torch.isfinite(out).all()
    assert float((out.double() - want).norm() / want.norm()) < 2e-3


def test_head_sizes_without_a_cubin_are_left_to_the_torch_path():
    from kernel_loader.build.aot.interpret import InterpreterTable

    tbl = InterpreterTable(KERNEL_DIR, "sliding_window", arch="9.0")
    cache = sw.RingKVCache.allocate(1, 8, 1, 72, dtype=F16)
    sw.ring_cache_append(cache, torch.randn(1, 3, 1, 72).half(), torch.randn(1, 3, 1, 72).half())
    assert _aot_dispatch.ring_decode(tbl, torch.randn(1, 1, 2, 72).half(), cache.k, cache.v, 3, 0.1, 0.0) is None
    assert tbl.launched == []
