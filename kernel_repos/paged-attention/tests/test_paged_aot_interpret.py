"""paged-attention's precompiled-decode dispatch (_aot_dispatch) through Triton's interpreter: the public ops run
with the cubin table replaced by kernel_loader.build.aot.interpret.InterpreterTable, which runs each configuration's
kernel with exactly the constexprs, tiles and grid of aot/spec.py + aot/tiles.toml and checks every argument against
what the cubin assumes (pointer dtype, 16-byte alignment, multiples of 16, int32 range) -- the one piece replaced is
the cubin launch. Results against the float64 reference; fp16 only (the interpreter computes bf16 dots on raw bits).
"""

import os
import sys
from pathlib import Path

import pytest
import torch

import paged_attention as pa
from paged_attention import _aot_dispatch, _device_check
from paged_ref import decode_ref, fp8_round
from test_paged_attention_cpu import _case
from test_paged_attention_cpu import _fill as _fill_with


def _fill(*args, **kwargs):
    """Cache writes on the torch path (the interpreter runs one program per token and head: slow); the cache-write
    kernel has its own tests below."""
    os.environ["PAGED_ATTENTION_CPU_IMPL"] = "torch"
    try:
        _fill_with(*args, **kwargs)
    finally:
        os.environ["PAGED_ATTENTION_CPU_IMPL"] = "aot"

pytest.importorskip("triton")
KERNEL_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(KERNEL_DIR.parents[1]))  # kernel_loader, for the interpreter table
pytestmark = pytest.mark.skipif(torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1",
                                reason="interpreter checks need TRITON_INTERPRET=1 from before triton's import "
                                       "(the root conftest sets it where there is no GPU)")
F16 = torch.float16


@pytest.fixture
def table(monkeypatch):
    from kernel_loader.build.aot.interpret import InterpreterTable

    tbl = InterpreterTable(KERNEL_DIR, "paged_attention", arch="9.0")
    monkeypatch.setenv("PAGED_ATTENTION_CPU_IMPL", "aot")
    monkeypatch.setitem(_aot_dispatch._tables, "t", tbl)
    pa.set_validation("device")
    yield tbl
    pa.set_validation("device")
    _device_check._states.clear()


def _run(layout, q, kc, vc, sc, hk, bs, slopes=None, kv="auto", ks=1.0, vs=1.0, max_len=None):
    out = torch.full_like(q, float("nan"))
    scale = q.shape[-1] ** -0.5
    if layout == "vllm":
        pa.paged_attention_v1(out, q, kc, vc, hk, scale, sc.block_tables, sc.seq_lens, bs,
                              max_len or int(sc.seq_lens.max()), slopes, kv, ks, vs)
    else:
        pa.paged_attention_flash(out, q, kc, vc, sc.block_tables, sc.seq_lens, scale, max_len, slopes, kv, ks, vs)
    return out, scale


def _rel(out, ref) -> float:
    return float((out.double() - ref).norm() / ref.norm())


@pytest.mark.parametrize("mode", ["device", "off"])
@pytest.mark.parametrize("layout,hq,hk,d,bs,lens,alibi,keys", [
    ("vllm", 8, 2, 64, 16, [1, 37, 100, 300], True, ["decode/vllm/p16/d64/fp16/auto", "reduce/d64/fp16"]),
    ("vllm", 4, 4, 80, 8, [70, 5], False, ["decode/vllm/p8/d128/fp16/auto", "reduce/d128/fp16"]),
    ("flash", 32, 1, 128, 256, [300, 5], False, ["decode/flash/r64/d128/fp16/auto", "reduce/d128/fp16"]),
    ("flash", 6, 2, 64, 48, [129, 64, 3], False, ["decode/flash/r16/d64/fp16/auto", "reduce/d64/fp16"]),
    ("flash", 4, 2, 256, 12, [40, 7], True, ["decode/flash/r1/d256/fp16/auto", "reduce/d256/fp16"]),
])
def test_decode_dispatch_matches_reference(table, mode, layout, hq, hk, d, bs, lens, alibi, keys):
    pa.set_validation(mode)
    sc, kc, vc, q = _case(len(lens) * 13 + d + bs, lens, hq, hk, d, bs, F16, layout=layout, shared_prefix=1)
    _fill(sc, kc, vc, F16, layout)
    slopes = torch.linspace(0.02, 0.3, hq) if alibi else None
    assert pa.backend_for(q) == "aot"
    out, scale = _run(layout, q, kc, vc, sc, hk, bs, slopes)
    assert table.launched[:len(keys)] == keys and set(table.launched) == set(keys)
    rd = lambda x: x.to(F16).double()  # noqa: E731
    assert torch.isfinite(out).all() and _rel(out, decode_ref(q, sc, scale, alibi=slopes, kv_round=(rd, rd))) < 2e-3


@pytest.mark.parametrize("layout,storage", [("vllm", torch.uint8), ("flash", torch.float8_e4m3fn)])
def test_fp8_cache_is_read_exactly_without_fp8_hardware(table, layout, storage):
    hq, hk, d, bs = 8, 2, 128, 16
    sc, kc, vc, q = _case(11, [33, 170], hq, hk, d, bs, F16, layout=layout, fp8=True)
    kc, vc = kc.view(storage), vc.view(storage)
    _fill_with(sc, kc, vc, F16, layout, "fp8", 0.05, 0.02)  # the cache-write kernel
    out, scale = _run(layout, q, kc, vc, sc, hk, bs, kv="fp8", ks=0.05, vs=0.02)
    assert table.launched[0] == f"cache/{layout}/fp16/fp8"
    assert table.launched[1] == f"decode/{layout}/{'p16' if layout == 'vllm' else 'r16'}/d128/fp16/fp8"
    kr = lambda x: fp8_round(x.to(F16).double(), 0.05)  # noqa: E731
    vr = lambda x: fp8_round(x.to(F16).double(), 0.02)  # noqa: E731
    assert _rel(out, decode_ref(q, sc, scale, kv_round=(kr, vr))) < 2e-3


def test_v2_partials_into_a_half_precision_tmp_out(table):
    hq, hk, d, bs = 4, 2, 64, 16
    sc, kc, vc, q = _case(3, [1100, 9], hq, hk, d, bs, F16)
    _fill(sc, kc, vc, F16, "vllm")
    out = torch.full_like(q, float("nan"))
    es, ml = torch.full((2, hq, 3), float("nan")), torch.full((2, hq, 3), float("nan"))
    tmp = torch.full((2, hq, 3, d), float("nan"), dtype=F16)
    pa.paged_attention_v2(out, es, ml, tmp, q, kc, vc, hk, 0.125, sc.block_tables, sc.seq_lens, bs, 1100, None,
                          "auto", 1.0, 1.0)
    assert table.launched == ["decode/vllm/p16/d64/fp16/auto", "reduce/d64/fp16"]
    rd = lambda x: x.to(F16).double()  # noqa: E731
    assert _rel(out, decode_ref(q, sc, 0.125, kv_round=(rd, rd))) < 2e-3
    # partition 1 of sequence 0 (tokens 512..1023): its max logit (natural log, like vLLM) and normalised output
    k = sc.keys[0][512:1024].to(F16).double().repeat_interleave(hq // hk, 1)
    v = sc.values[0][512:1024].to(F16).double().repeat_interleave(hq // hk, 1)
    s = torch.einsum("hd,nhd->hn", q[0].double(), k) * 0.125
    torch.testing.assert_close(ml[0, :, 1].double(), s.max(-1).values, atol=2e-3, rtol=2e-3)
    part = torch.einsum("hn,nhd->hd", torch.softmax(s, -1), v)
    torch.testing.assert_close(tmp[0, :, 1].double(), part, atol=3e-3, rtol=3e-3)


def test_bad_block_entry_poisons_the_row_then_raises_on_the_next_call(table):
    hq, hk, d, bs = 8, 2, 64, 16
    sc, kc, vc, q = _case(9, [40, 50, 20], hq, hk, d, bs, F16, layout="flash")
    _fill(sc, kc, vc, F16, "flash")
    bt = sc.block_tables.clone()
    bt[1, 2] = 10**6
    out = torch.full_like(q, 7.0)
    pa.paged_attention_flash(out, q, kc, vc, bt, sc.seq_lens, 0.125)
    assert torch.isnan(out[1]).all() and torch.isfinite(out[0]).all() and torch.isfinite(out[2]).all()
    with pytest.raises(ValueError, match=r"block_tables\[1, 2\] = 1000000 is out of range: the cache has"):
        pa.paged_attention_flash(torch.empty_like(q), q, kc, vc, sc.block_tables, sc.seq_lens, 0.125)
    pa.check_errors()


def test_inputs_without_a_cubin_take_the_torch_path(table):
    hq, hk, d, bs = 4, 2, 72, 16  # head size not a multiple of 16
    sc, kc, vc, q = _case(5, [30, 10], hq, hk, d, bs, F16)
    _fill(sc, kc, vc, F16, "vllm")
    assert pa.backend_for(q) == "torch"
    out, scale = _run("vllm", q, kc, vc, sc, hk, bs)
    assert table.launched == []
    rd = lambda x: x.to(F16).double()  # noqa: E731
    assert _rel(out, decode_ref(q, sc, scale, kv_round=(rd, rd))) < 2e-3


@pytest.mark.parametrize("layout", ["vllm", "flash"])
@pytest.mark.parametrize("kv,storage", [("auto", None), ("fp8", torch.uint8), ("fp8_e4m3", torch.float8_e4m3fn)])
def test_cache_write_kernel_is_bitwise_the_torch_path(table, monkeypatch, layout, kv, storage):
    """reshape_and_cache[_flash] through the cache-write cubin's kernel vs the torch index ops: the same bytes in every
    slot (fp8: the kernel's integer e4m3 rounding against torch's conversion, values spanning subnormals to
    saturation), padding slots (-1) skipped, nothing else touched."""
    from paged_ref import flash_caches, vllm_caches

    g = torch.Generator().manual_seed(21)
    hk, d, bs, nb = 2, 80, 16, 6
    n = 40
    key = (torch.randn(n, hk, d, generator=g) * torch.logspace(-4, 3, d)).to(F16)  # |x| from 1e-4 to ~1e3
    value = torch.randn(n, d, hk, generator=g).to(F16).transpose(1, 2)  # head_size not the contiguous dim
    slots = torch.randperm(nb * bs, generator=g)[:n]
    slots[::7] = -1
    fp8 = storage is not None
    sc = type("S", (), {"keys": [torch.zeros(1, hk, d)], "num_blocks": nb})()
    caches = vllm_caches if layout == "vllm" else flash_caches
    write = pa.reshape_and_cache if layout == "vllm" else pa.reshape_and_cache_flash
    results = []
    for impl in ("aot", "torch"):
        monkeypatch.setenv("PAGED_ATTENTION_CPU_IMPL", impl)
        kc, vc = caches(sc, bs, F16, fp8=fp8)
        if fp8:
            kc, vc = kc.view(storage), vc.view(storage)
        write(key, value, kc, vc, slots, kv, 0.05, 0.02)
        results.append((kc, vc))
    assert table.launched == [f"cache/{layout}/fp16/{'fp8' if fp8 else 'auto'}"]
    for a, b in zip(*results):
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def test_cache_write_slot_past_the_cache_is_skipped_and_reported(table):
    """Under CUDA-graph capture the host cannot read slot_mapping; the kernel's own check is what stops a bad slot.
    Here the host check is off ("off" mode skips it) and device-mode reporting is what remains."""
    from paged_ref import flash_caches

    sc = type("S", (), {"keys": [torch.zeros(1, 2, 64)], "num_blocks": 4})()
    kc, vc = flash_caches(sc, 16, F16)
    before = kc.clone()
    key = torch.randn(3, 2, 64).to(F16)
    pa.set_validation("off")
    _device_check.device_report_for(torch.device("cpu"))  # the report the kernel writes in "device" mode
    from paged_attention import _aot_dispatch as disp
    from paged_attention._validate import flash_geometry

    geom = flash_geometry(kc, vc, "auto", F16)
    disp.write_slots(table, "cache/flash/fp16/auto", key, key, kc, vc, geom, torch.tensor([5, 64, 9]), 1.0, 1.0,
                     mode="device")
    assert torch.equal(kc.view(-1, 2, 64)[5], key[0]) and torch.equal(kc.view(-1, 2, 64)[9], key[2])
    untouched = torch.ones(64, dtype=torch.bool)
    untouched[[5, 9]] = False
    assert torch.equal(kc.view(-1, 2, 64)[untouched].view(torch.uint8), before.view(-1, 2, 64)[untouched].view(
        torch.uint8))
    with pytest.raises(ValueError, match=r"slot_mapping\[1\] = 64 is past the cache: it has 64 slots.*cache write"):
        pa.check_errors()


def test_views_and_int64_tables_meet_the_cubins_assumptions(table):
    """q/out whose row strides are not multiples of 16 elements (copied in, written back), int64 block tables and
    lengths (converted): the launch arguments still satisfy every specialisation (the interpreter table checks)."""
    hq, hk, d, bs = 4, 2, 64, 16
    sc, kc, vc, q = _case(8, [70, 33], hq, hk, d, bs, F16, layout="flash")
    _fill(sc, kc, vc, F16, "flash")
    wide = torch.zeros(2, hq, d + 8, dtype=F16)
    wide[..., :d] = q
    qv = wide[..., :d]  # row stride 72
    out_wide = torch.full((2, hq, d + 8), 5.0, dtype=F16)
    out = out_wide[..., :d]
    pa.paged_attention_flash(out, qv, kc, vc, sc.block_tables.long(), sc.seq_lens.long(), 0.125, 70)
    assert table.launched == ["decode/flash/r16/d64/fp16/auto", "reduce/d64/fp16"]
    rd = lambda x: x.to(F16).double()  # noqa: E731
    assert _rel(out, decode_ref(q, sc, 0.125, kv_round=(rd, rd))) < 2e-3
    assert bool((out_wide[..., d:] == 5.0).all())  # nothing written past the view
