"""The CUDA decode kernels (Triton) run on CPU tensors through Triton's interpreter (TRITON_INTERPRET=1, set by the
root conftest where there is no GPU) against the float64 reference, and the on-device index validation (mode
"device": no host sync, clamped reads, NaN rows, the error raised by the next call or check_errors()).

float16 only: the interpreter computes bfloat16 dots on raw bits (bf16 is checked on the GPU by
scripts/bench_decode.py). The interpreter's "GPU" has 4 SMs (``_triton_impl._sm_count``), so small batches are split
over the context and the merge kernel runs too.
"""

import os

import pytest
import torch

import paged_attention as pa
from paged_attention import _device_check, _triton_impl
from paged_ref import decode_ref, make_scenario, tokens_in_slot_order
from test_paged_attention_cpu import _case
from test_paged_attention_cpu import _fill as _fill_with


def _fill(*args, **kwargs):
    """Cache writes on the torch path (the interpreter runs one program per token and head: slow); the cache-write
    kernel has its own tests (test_paged_aot_interpret.py)."""
    os.environ["PAGED_ATTENTION_CPU_IMPL"] = "torch"
    try:
        _fill_with(*args, **kwargs)
    finally:
        os.environ["PAGED_ATTENTION_CPU_IMPL"] = "triton"

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1",
                                reason="interpreter checks need TRITON_INTERPRET=1 from before triton's import "
                                       "(the root conftest sets it where there is no GPU)")
F16 = torch.float16


@pytest.fixture(autouse=True)
def triton_on_cpu(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("PAGED_ATTENTION_CPU_IMPL", "triton")
    pa.set_validation("device")
    yield
    pa.set_validation("device")
    _device_check._states.clear()


def _launches(monkeypatch):
    """Count kernel launches (the Triton path really ran) and remember the CHECK flag of each."""
    seen = []
    real = _triton_impl.decode

    def spy(*a, **k):
        seen.append(k.get("check"))
        return real(*a, **k)

    monkeypatch.setattr(_triton_impl, "decode", spy)
    return seen


@pytest.mark.parametrize("mode", ["device", "off", "host"])
@pytest.mark.parametrize("layout,hq,hk,d,bs,lens,alibi", [
    ("vllm", 8, 2, 64, 16, [1, 37, 100, 300], False),   # 8 programs on 4 "SMs": split + merge
    ("vllm", 4, 4, 80, 8, [70, 5], True),               # head dim padded to 128, ALiBi
    ("flash", 8, 1, 64, 32, [129, 64, 3], False),       # MQA
    ("flash", 6, 2, 128, 16, [500], False),             # one sequence: split into several partitions
])
def test_decode_kernel_matches_reference(monkeypatch, mode, layout, hq, hk, d, bs, lens, alibi):
    pa.set_validation(mode)
    seen = _launches(monkeypatch)
    sc, kc, vc, q = _case(len(lens) * 13 + d + bs, lens, hq, hk, d, bs, F16, layout=layout, shared_prefix=2)
    _fill(sc, kc, vc, F16, layout)
    slopes = torch.linspace(0.02, 0.3, hq) if alibi else None
    out = torch.full_like(q, float("nan"))
    scale = d ** -0.5
    if layout == "vllm":
        pa.paged_attention_v1(out, q, kc, vc, hk, scale, sc.block_tables, sc.seq_lens, bs, max(lens), slopes,
                              "auto", 1.0, 1.0)
    else:
        pa.paged_attention_flash(out, q, kc, vc, sc.block_tables, sc.seq_lens, scale, alibi_slopes=slopes)
    assert seen == [mode == "device"]
    rd = lambda x: x.to(F16).double()  # noqa: E731
    ref = decode_ref(q, sc, scale, alibi=slopes, kv_round=(rd, rd))
    assert torch.isfinite(out).all()
    assert float((out.double() - ref).norm() / ref.norm()) < 2e-3


def test_v2_partials_are_vllms(monkeypatch):
    _launches(monkeypatch)
    hq, hk, d, bs = 4, 2, 64, 16
    lens = [1100, 9]
    sc, kc, vc, q = _case(3, lens, hq, hk, d, bs, F16)
    _fill(sc, kc, vc, F16, "vllm")
    out = torch.full_like(q, float("nan"))
    es, ml = torch.full((2, hq, 3), float("nan")), torch.full((2, hq, 3), float("nan"))
    tmp = torch.full((2, hq, 3, d), float("nan"))
    pa.paged_attention_v2(out, es, ml, tmp, q, kc, vc, hk, 0.125, sc.block_tables, sc.seq_lens, bs, 1100, None,
                          "auto", 1.0, 1.0)
    rd = lambda x: x.to(F16).double()  # noqa: E731
    assert float((out.double() - decode_ref(q, sc, 0.125, kv_round=(rd, rd))).norm()) < 2e-3 * float(
        decode_ref(q, sc, 0.125).norm())
    # partition 1 of sequence 0 (tokens 512..1023) by hand: its max logit and exp sum (natural log, like vLLM)
    k = sc.keys[0][512:1024].to(F16).double().repeat_interleave(hq // hk, 1)
    s = torch.einsum("hd,nhd->hn", q[0].double(), k) * 0.125
    torch.testing.assert_close(ml[0, :, 1].double(), s.max(-1).values, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(es[0, :, 1].double(), torch.exp(s - s.max(-1, keepdim=True).values).sum(-1),
                               atol=2e-2, rtol=2e-3)


def _bad_setup(seed=9):
    hq, hk, d, bs = 8, 2, 64, 16
    sc, kc, vc, q = _case(seed, [40, 50, 20], hq, hk, d, bs, F16, layout="flash")
    _fill(sc, kc, vc, F16, "flash")
    return sc, kc, vc, q, d ** -0.5


def _flash(out, q, kc, vc, sc, bt=None, sl=None, scale=0.125, max_len=None):
    pa.paged_attention_flash(out, q, kc, vc, sc.block_tables if bt is None else bt,
                             sc.seq_lens if sl is None else sl, scale, max_len)


@pytest.mark.parametrize("entry", [-1, "num_blocks", 10**6])
def test_device_mode_bad_block_entry_nan_row_then_error_on_next_call(entry):
    sc, kc, vc, q, scale = _bad_setup()
    bt = sc.block_tables.clone()
    value = sc.num_blocks if entry == "num_blocks" else entry
    bt[1, 2] = value
    out = torch.full_like(q, 7.0)
    _flash(out, q, kc, vc, sc, bt=bt, scale=scale)  # no error yet: nothing was read back (no sync on a GPU)
    ref = decode_ref(q, sc, scale, kv_round=(lambda x: x.to(F16).double(),) * 2)
    assert torch.isnan(out[1]).all()  # the offending sequence is poisoned, never a plausible answer
    for i in (0, 2):  # the others are right
        assert float((out[i].double() - ref[i]).norm() / ref[i].norm()) < 2e-3
    good = torch.empty_like(q)
    with pytest.raises(ValueError, match=rf"block_tables\[1, 2\] = {value} is out of range: the cache has "
                                         rf"{sc.num_blocks} blocks.*earlier decode call.*NaN to sequence 1"):
        _flash(good, q, kc, vc, sc, scale=scale)
    # reported once; the next call (good input) runs clean
    _flash(good, q, kc, vc, sc, scale=scale)
    pa.check_errors()
    assert torch.isfinite(good).all()


@pytest.mark.parametrize("length", ["past", -3, 5000])
def test_device_mode_seq_len_past_the_table(length):
    sc, kc, vc, q, scale = _bad_setup()
    width = sc.block_tables.shape[1]
    sl = sc.seq_lens.clone()
    sl[2] = width * 16 + 1 if length == "past" else length
    bad = int(sl[2])
    max_len = max(int(sl.max()), 1)
    cap = min(width * 16, max_len)  # what the table and max_seq_len cover
    out = torch.full_like(q, 7.0)
    _flash(out, q, kc, vc, sc, sl=sl, scale=scale, max_len=max_len)
    assert torch.isnan(out[2]).all() and torch.isfinite(out[:2]).all()
    with pytest.raises(ValueError, match=rf"seq_lens\[2\] = {bad} is outside 0\.\.{cap} "):
        pa.check_errors()
    pa.check_errors()  # cleared


def test_device_mode_max_seq_len_smaller_than_a_length():
    """The grid is planned from max_seq_len; a longer sequence would be cut short, so it is flagged, not truncated."""
    sc, kc, vc, q, scale = _bad_setup()
    out = torch.empty_like(q)
    _flash(out, q, kc, vc, sc, scale=scale, max_len=30)  # seq_lens are 40, 50, 20
    assert torch.isnan(out[0]).all() and torch.isnan(out[1]).all() and torch.isfinite(out[2]).all()
    with pytest.raises(ValueError, match=r"seq_lens\[[01]\] = [45]0 is outside 0\.\.30"):
        pa.check_errors()


def test_host_mode_raises_before_launch(monkeypatch):
    pa.set_validation("host")
    seen = _launches(monkeypatch)
    sc, kc, vc, q, scale = _bad_setup()
    bt = sc.block_tables.clone()
    bt[0, 0] = -5
    out = torch.full_like(q, 7.0)
    with pytest.raises(ValueError, match=r"block_tables\[0, 0\] = -5 is out of range"):
        _flash(out, q, kc, vc, sc, bt=bt, scale=scale)
    assert seen == [] and bool((out == 7.0).all())


def test_only_used_table_entries_are_checked_on_the_device():
    sc, kc, vc, q, scale = _bad_setup()
    bt = sc.block_tables.clone()
    bt[2, 3:] = 10**6  # sequence 2 (20 tokens) uses 2 entries: the rest is padding
    out = torch.empty_like(q)
    _flash(out, q, kc, vc, sc, bt=bt, scale=scale)
    pa.check_errors()
    assert torch.isfinite(out).all()


def test_validation_modes_parse():
    for value, mode in ((True, "device"), (False, "off"), ("host", "host"), ("0", "off"), ("1", "device")):
        pa.set_validation(value)
        assert pa.validation_mode() == mode
    with pytest.raises(ValueError, match="validation mode 'sometimes' is not valid; valid: device, host, off"):
        pa.set_validation("sometimes")


@pytest.mark.parametrize("layout,kv", [("vllm", "fp8"), ("flash", "auto")])
def test_cache_write_kernel_matches_the_torch_path(monkeypatch, layout, kv):
    """The JIT path's reshape_and_cache[_flash] (the cache-write kernel: no host sync for padding slots) writes the
    same bytes as the torch index ops."""
    from paged_ref import flash_caches, vllm_caches

    g = torch.Generator().manual_seed(4)
    hk, d, bs = 2, 64, 8
    key, value = (torch.randn(12, hk, d, generator=g).to(F16) for _ in range(2))
    slots = torch.randperm(5 * bs, generator=g)[:12]
    slots[3] = -1
    sc = type("S", (), {"keys": [torch.zeros(1, hk, d)], "num_blocks": 5})()
    caches = vllm_caches if layout == "vllm" else flash_caches
    write = pa.reshape_and_cache if layout == "vllm" else pa.reshape_and_cache_flash
    seen = []
    real = _triton_impl.write_slots
    monkeypatch.setattr(_triton_impl, "write_slots", lambda *a, **k: (seen.append(k["check"]), real(*a, **k)))
    out = []
    for impl in ("triton", "torch"):
        monkeypatch.setenv("PAGED_ATTENTION_CPU_IMPL", impl)
        kc, vc = caches(sc, bs, F16, fp8=kv != "auto")
        write(key, value, kc, vc, slots, kv, 0.1, 0.2)
        out.append((kc, vc))
    assert seen == [True]
    for a, b in zip(*out):
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))
