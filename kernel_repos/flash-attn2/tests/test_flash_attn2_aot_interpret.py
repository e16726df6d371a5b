"""The precompiled-kernel dispatch (_aot_dispatch.forward/backward) checked on CPU through Triton's interpreter.

What the GPU runs is a cubin compiled from the same Triton kernel with one configuration's constexprs (aot/spec.py:
both window edges on, run-time page size, ...) and launched with the arguments _aot_dispatch builds, by name,
on the grid of the configuration's rule. Without a GPU, the one piece replaced here is the cubin launch: the
table (kernel_loader.build.aot.interpret) runs the same kernel in the interpreter with exactly the spec's
constexprs and grid rule, after checking every argument against the specialisations the cubin would assume
(16-byte aligned pointers, strides that are multiples of 16, pointer dtypes). Everything else -- keys, strides, window widening, page size, lse
layout, backward delta/dK/dV/dQ -- is the real code, compared with the float64 reference.

Small interpreter tiles (32x16) replace the committed GPU tiles: tile sizes change no argument. Every test runs
for flash-attn2 (first arch: sm_80 constexprs) and flash-attn3 (sm_90: its tiles say ``tma``, so the dense forward
runs the kernel that builds TMA descriptors on the device, which the interpreter emulates, zero-fill included).
Each package's modules are imported as a bare namespace (no __init__, no compiled CPU kernel needed).
"""

import importlib
import os
import sys
import types
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
from reference import attention_ref  # noqa: E402

pytestmark = pytest.mark.skipif(torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1",
                                reason="interpreter checks need TRITON_INTERPRET=1 from before triton's import")

KERNEL_DIR = Path(__file__).resolve().parents[1]
REPOS = ("flash-attn2", "flash-attn3")


def _bare_package(kernel_dir: Path) -> str:
    """The repo's kernel package imported as a namespace (its __init__ does not run); returns the import name."""
    name = f"_aot_interpret_{kernel_dir.name.replace('-', '_')}"
    if name not in sys.modules:
        folder = kernel_dir / "torch-ext" / kernel_dir.name.replace("-", "_")
        pkg = types.ModuleType(name)
        pkg.__path__, pkg.__file__ = [str(folder)], str(folder / "__init__.py")
        sys.modules[name] = pkg
    return name


def _interpreter_tiles(kernel_dir: Path) -> dict:
    """Small tiles for every (kernel, arch, family), keeping the repo's ``tma`` switch of each forward tile."""
    import tomllib

    from kernel_loader.build.aot import load_aot_config
    from kernel_loader.build.aot.interpret import small_tiles

    aot = load_aot_config(kernel_dir)
    real = tomllib.loads(aot.tiles.read_text())
    tiles = small_tiles(("fwd", "fwd_short", "bwd_delta", "bwd_dkdv", "bwd_dq"), aot.archs)
    for kernel in ("fwd", "fwd_short"):
        for arch, fams in tiles[kernel].items():
            for fam, tile in fams.items():
                tile["tma"] = bool(real[kernel][arch].get(fam, {}).get("tma"))
    return tiles


@pytest.fixture(params=REPOS)
def aot(request, monkeypatch):
    from kernel_loader.build.aot.interpret import InterpreterTable

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    kernel_dir = KERNEL_DIR.parent / request.param
    package = _bare_package(kernel_dir)
    dispatch = importlib.import_module(f"{package}._aot_dispatch")
    return dispatch, InterpreterTable(kernel_dir, package, _interpreter_tiles(kernel_dir))


def rel(a, b):
    return float((a.detach().double() - b.detach()).norm() / b.detach().norm().clamp_min(1e-12))


def rand(*shape, grad=False):
    return torch.randn(*shape).half().requires_grad_(grad)


@pytest.mark.parametrize("case", [
    (2, 70, 70, 4, 2, 64, True, (-1, -1), 0.0),
    (1, 50, 90, 2, 1, 64, False, (-1, -1), 0.0),
    (1, 90, 40, 2, 2, 64, True, (-1, -1), 0.0),      # Sq > Sk: first rows see nothing
    (1, 90, 90, 2, 2, 96, False, (20, 10), 5.0),     # both windows + softcap, padded head dim
    (1, 60, 60, 4, 1, 64, True, (17, -1), 0.0),      # causal + left window, MQA
], ids=lambda c: f"b{c[0]}-{c[1]}x{c[2]}-h{c[3]}/{c[4]}-d{c[5]}-c{int(c[6])}-w{c[7][0]}.{c[7][1]}-cap{c[8]}")
def test_dense_forward_and_backward(aot, case):
    dispatch, tbl = aot
    torch.manual_seed(hash(case) % 1000)
    b, sq, sk, hq, hk, d, causal, window, softcap = case
    q, k, v = rand(b, sq, hq, d), rand(b, sk, hk, d), rand(b, sk, hk, d)
    scale = d ** -0.5
    out, lse = dispatch.forward(tbl, q, k, v, scale=scale, causal=causal, window=window, softcap=softcap)
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    ref, ref_lse = attention_ref(q64, k64, v64, causal=causal, window=window, softcap=softcap)
    assert rel(out, ref) < 2e-3
    seen = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse[seen].double(), ref_lse[seen].detach(), atol=1e-4, rtol=1e-4)
    assert (lse[~seen] == float("-inf")).all()
    dout = torch.randn_like(out)
    grads = dispatch.backward(tbl, dout, q, k, v, out, lse, scale=scale, causal=causal, window=window,
                              softcap=softcap)
    want = torch.autograd.grad(ref, (q64, k64, v64), dout.double())
    for g, w in zip(grads, want):
        assert not g.isnan().any() and rel(g, w) < 4e-3
    cap = "softcap" if softcap else "nocap"
    assert tbl.launched == [f"fwd/dense/d{d}/fp16/{cap}", f"bwd_delta/dense/d{d}/fp16",
                            f"bwd_dkdv/dense/d{d}/fp16/{cap}", f"bwd_dq/dense/d{d}/fp16/{cap}"]
    # flash-attn3's dense forward is the TMA-descriptor kernel, flash-attn2's the pointer one
    assert tbl.configs[tbl.launched[0]]["constexprs"]["USE_TMA"] == (tbl.kernel_dir.name == "flash-attn3")


@pytest.mark.parametrize("case", [
    (3, 1, 70, 8, 2, 64, True, (-1, -1), 0.0),       # decode, group 4
    (2, 16, 40, 6, 2, 96, True, (9, -1), 5.0),       # 16 rows (the last short size), window + softcap, group 3
    (1, 17, 40, 4, 1, 64, True, (-1, -1), 0.0),      # 17 rows: the prefill tiles again
    (2, 5, 3, 4, 4, 64, False, (2, 1), 0.0),         # Sq > Sk with both windows: rows that see nothing, no GQA
], ids=lambda c: f"b{c[0]}-{c[1]}x{c[2]}-h{c[3]}/{c[4]}-d{c[5]}")
def test_short_queries_pack_the_query_heads_of_a_kv_head(aot, case):
    """Short queries (decode) run tiles whose rows are (query position, query head of the KV head's group)."""
    dispatch, tbl = aot
    torch.manual_seed(sum(case[:6]))
    b, sq, sk, hq, hk, d, causal, window, softcap = case
    q, k, v = rand(b, sq, hq, d), rand(b, sk, hk, d), rand(b, sk, hk, d)
    out, lse = dispatch.forward(tbl, q, k, v, scale=d ** -0.5, causal=causal, window=window, softcap=softcap)
    ref, ref_lse = attention_ref(q.double(), k.double(), v.double(), causal=causal, window=window, softcap=softcap)
    assert rel(out, ref) < 2e-3
    seen = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse[seen].double(), ref_lse[seen], atol=1e-4, rtol=1e-4)
    assert (lse[~seen] == float("-inf")).all() and (out.double()[~seen.transpose(1, 2)] == 0).all()
    cap = "softcap" if softcap else "nocap"
    assert tbl.launched == [f"fwd{'_short' if sq <= 16 else ''}/dense/d{d}/fp16/{cap}"]


def test_varlen_forward_and_backward(aot):
    dispatch, tbl = aot
    torch.manual_seed(3)
    lens_q, lens_k, hq, hk, d = [17, 1, 40], [30, 9, 40], 4, 2, 64
    cu_q = torch.tensor([0, 17, 18, 58], dtype=torch.int32)
    cu_k = torch.tensor([0, 30, 39, 79], dtype=torch.int32)
    q, k, v = rand(58, hq, d), rand(79, hk, d), rand(79, hk, d)
    kw = dict(scale=d ** -0.5, causal=True, window=(-1, -1), softcap=0.0, cu_q=cu_q, cu_k=cu_k, max_q=40, max_k=40)
    out, lse = dispatch.forward(tbl, q, k, v, **kw)
    dout = torch.randn_like(out)
    dq, dk, dv = dispatch.backward(tbl, dout, q, k, v, out, lse, **kw)
    for i in range(3):
        a, z, c0, c1 = int(cu_q[i]), int(cu_q[i + 1]), int(cu_k[i]), int(cu_k[i + 1])
        q64, k64, v64 = (t.double().requires_grad_() for t in (q[a:z], k[c0:c1], v[c0:c1]))
        ref, ref_lse = attention_ref(q64[None], k64[None], v64[None], causal=True)
        assert rel(out[a:z], ref[0]) < 2e-3
        torch.testing.assert_close(lse[:, a:z].double(), ref_lse[0].detach(), atol=1e-4, rtol=1e-4)
        want = torch.autograd.grad(ref[0], (q64, k64, v64), dout[a:z].double())
        for g, w in zip((dq[a:z], dk[c0:c1], dv[c0:c1]), want):
            assert rel(g, w) < 4e-3


@pytest.mark.parametrize("page", [None, 16, 48])  # 48: a page size no JIT kernel was specialised for
def test_kvcache_contiguous_and_paged_with_run_time_page_size(aot, page):
    dispatch, tbl = aot
    torch.manual_seed(11)
    b, sq, hq, hk, d = 3, 2, 4, 2, 64
    seqused = torch.tensor([12, 2, 90], dtype=torch.int32)
    if page:
        per = -(-96 // page)
        kc = rand(b * per + 1, page, hk, d)
        block_table = torch.randperm(b * per + 1)[: b * per].view(b, per).to(torch.int32)
    else:
        kc, block_table = rand(b, 96, hk, d), None
    vc = torch.randn_like(kc)
    q = rand(b, sq, hq, d)
    out, lse = dispatch.forward(tbl, q, kc, vc, scale=d ** -0.5, causal=True, window=(20, -1), softcap=0.0,
                                seqused_k=seqused, block_table=block_table)
    for i in range(b):
        n = int(seqused[i])
        j = torch.arange(n)
        rows, slots = (block_table[i].long()[j // page], j % page) if page else (torch.full_like(j, i), j)
        ref, ref_lse = attention_ref(q[i:i + 1], kc[rows, slots][None], vc[rows, slots][None], causal=True,
                                     window=(20, -1))
        assert rel(out[i:i + 1], ref) < 2e-3
        torch.testing.assert_close(lse[i].double(), ref_lse[0], atol=1e-4, rtol=1e-4)
    # two query rows per sequence: the short-query (decode) tiles
    assert tbl.launched == [f"fwd_short/{'paged' if page else 'kvcache'}/d64/fp16/nocap"]
    assert tbl.configs[tbl.launched[0]]["constexprs"]["USE_TMA"] is False  # kv caches load with pointers
