"""Host side of the precompiled kernels (AOT variants: cubins + the build's launcher ops; no Triton): decode
(v1/v2/flash), its partition merge, and the cache writes (reshape_and_cache[_flash]).

:func:`decode_key` says whether a call has a cubin (else the caller runs the torch path: float32 queries, head
sizes that are not multiples of 16, flash caches whose strides are not multiples of 16 elements); :func:`decode`
plans it like the JIT path (_plan) and launches the split-K kernel, then the merge kernel when the context was
split. Every specialisation a cubin assumed (16-byte aligned pointers, strides that are multiples of 16 elements,
the vLLM layout's inner strides) is met here -- q and out are copied when they break one -- and checked again by
the launcher. Index checks are compiled into every cubin: in validation mode "device" the report goes to
_device_check (raised by the next call), in the other modes to a buffer nobody reads (the host checked, or the
caller asked for no checks; either way nothing outside the cache is read).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from . import _aot_keys as keys
from . import _device_check, _plan

LOG2E = 1.4426950408889634
_DT = {torch.float16: "fp16", torch.bfloat16: "bf16"}
_tables: dict = {}
_dummies: dict = {}


def table():
    """The variant's CubinTable, or None (a noarch variant: no launcher, no cubins)."""
    if "t" not in _tables:
        try:
            from . import _aot_runtime
            from ._ops import ops
        except ImportError:
            ops = None
        _tables["t"] = _aot_runtime.table(Path(__file__).parent, ops) if ops is not None and hasattr(
            ops, "launch") else None
    return _tables["t"]


def table_for(query: torch.Tensor):
    """The cubin table that serves ``query``'s device, or None. CPU tensors only under Triton's interpreter when
    asked (PAGED_ATTENTION_CPU_IMPL=aot: tests of this dispatch with the interpreter standing in for the cubins)."""
    if query.dtype not in _DT:
        return None
    if query.device.type != "cuda" and not (os.environ.get("TRITON_INTERPRET") == "1"
                                            and os.environ.get("PAGED_ATTENTION_CPU_IMPL") == "aot"):
        return None
    tbl = table()
    return tbl if tbl is not None and tbl.covers(query.device) else None


def _aligned(t: torch.Tensor, strides=None) -> bool:
    strides = t.stride()[:-1] if strides is None else strides
    return t.data_ptr() % 16 == 0 and all(s % 16 == 0 for s in strides)


def decode_key(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, geom) -> str | None:
    """The decode cubin's configuration for this call, or None when no cubin serves it (the torch path runs)."""
    d = query.shape[-1]
    if query.dtype not in _DT or d % keys.HEAD_MULTIPLE or not keys.HEAD_MIN <= d <= keys.HEAD_MAX:
        return None
    bucket = _plan.size_key(d)
    if geom.layout == "vllm":
        x = key_cache.shape[-1]
        if (key_cache.stride(3), key_cache.stride(2), value_cache.stride(3), value_cache.stride(2)) != (
                x, geom.block_size * x, 1, geom.block_size):
            return None  # validated contiguous; the cubin has these strides built in
        rows = geom.block_size
    else:
        if not (_aligned(key_cache) and _aligned(value_cache)):  # block, token and head strides
            return None
        rows = _plan.page_rows("flash", geom.block_size, keys.FLASH_TILE[bucket])
    if key_cache.data_ptr() % 16 or value_cache.data_ptr() % 16:
        return None
    return keys.decode_key(geom.layout, rows, bucket, _DT[query.dtype], "fp8" if geom.fp8 else "auto")


def _fit(t: torch.Tensor) -> torch.Tensor:
    return t if _aligned(t) else t.contiguous() if not t.is_contiguous() else t.clone()


def _dummy(device: torch.device) -> torch.Tensor:
    """A float32 buffer for pointer arguments the kernel never touches in this call (no ALiBi, direct output)."""
    t = _dummies.get(device)
    if t is None:
        t = _dummies[device] = torch.zeros(4, dtype=torch.float32, device=device)
    return t


def _int32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.int32 else t.to(torch.int32)


def decode(tbl, key: str, out, query, key_cache, value_cache, geom, scale: float, block_tables, seq_lens,
           max_seq_len: int, alibi_slopes, k_scale: float, v_scale: float, partition_size: int | None,
           partials=None, mode: str = "device") -> None:
    """Launch the decode of ``key`` (from :func:`decode_key`); ``partials`` = (exp_sums, max_logits, tmp_out) of
    paged_attention_v2. ``mode`` "device": index errors are reported through _device_check."""
    num_seqs, hq, d = query.shape
    if num_seqs == 0:
        return
    device = query.device
    entry = tbl.entry(key, device)
    cex = entry.constexprs if hasattr(entry, "constexprs") else entry["constexprs"]
    hk = geom.num_kv_heads
    plan = _plan.plan_decode(num_seqs, hq, hk, d, max_seq_len, geom.layout, geom.block_size, cex["TILE"],
                             _plan.programs_per_sm(geom.layout, d), device, partition_size, partials is not None,
                             g_chunk=cex["G_PAD"])
    if plan.rows != cex["PS"] or plan.tile != cex["TILE"]:
        raise RuntimeError(f"paged_attention: cubin {key} was built with TILE={cex['TILE']}, PS={cex['PS']}; this "
                           f"call needs TILE={plan.tile}, PS={plan.rows} (aot/tiles.toml and _aot_keys disagree)")
    q = _fit(query)
    o = out if _aligned(out) else torch.empty_like(query, memory_format=torch.contiguous_format)
    bt, sl = _int32(block_tables), _int32(seq_lens)
    dummy = _dummy(device)
    copy_tmp = None
    if plan.direct:
        m_buf = l_buf = acc_buf = dummy
        sm, sa = (0, 0), (0, 0, 0)
    else:
        if partials is not None:
            l_buf, m_buf, tmp_out = partials  # (exp_sums, max_logits, tmp_out), validated float32 / contiguous
            acc_buf = tmp_out
            if tmp_out.dtype != torch.float32 or not _aligned(tmp_out):
                acc_buf = torch.empty(tmp_out.shape, dtype=torch.float32, device=device)
                copy_tmp = tmp_out
        else:  # one allocation for the three partial buffers; the output partials start 16-byte aligned
            n = num_seqs * hq * plan.nparts
            off = -(-2 * n // 4) * 4
            buf = torch.empty(off + n * d, device=device, dtype=torch.float32)
            m_buf = buf[:n].view(num_seqs, hq, plan.nparts)
            l_buf = buf[n:2 * n].view(num_seqs, hq, plan.nparts)
            acc_buf = buf[off:].view(num_seqs, hq, plan.nparts, d)
        sm = (m_buf.stride(0), m_buf.stride(1))
        sa = (acc_buf.stride(0), acc_buf.stride(1), acc_buf.stride(2))
    slopes = alibi_slopes.float().contiguous() if alibi_slopes is not None else dummy
    kc = key_cache.view(torch.uint8) if geom.fp8 else key_cache
    vc = value_cache.view(torch.uint8) if geom.fp8 else value_cache
    cap_len = min(block_tables.shape[1] * geom.block_size, max(int(max_seq_len), 1))
    state = _device_check.device_report_for(device) if mode == "device" else _device_check.sink_for(device)
    ks, vs, qs, os_ = kc.stride(), vc.stride(), q.stride(), o.stride()
    if geom.layout == "vllm":
        sk = dict(stride_kb=ks[0], stride_kh=ks[1], stride_kt=ks[3], stride_kx=ks[2])
        sv = dict(stride_vb=vs[0], stride_vh=vs[1], stride_vt=1, stride_vd=vs[2])
    else:
        sk = dict(stride_kb=ks[0], stride_kh=ks[2], stride_kt=ks[1], stride_kx=0)
        sv = dict(stride_vb=vs[0], stride_vh=vs[2], stride_vt=vs[1], stride_vd=1)
    args = dict(Q=q, K=kc, V=vc, BT=bt, SL=sl, SLOPES=slopes, OUT=o, M_OUT=m_buf, L_OUT=l_buf, ACC_OUT=acc_buf,
                ERR=state.word, REP=state.kernel_report(), qk_scale=scale * k_scale * LOG2E, v_scale=v_scale,
                num_blocks=geom.num_blocks, cap_len=cap_len, PART=plan.part, page_size=geom.block_size,
                G=hq // hk, n_gchunks=plan.n_gchunks, D=d, has_alibi=int(alibi_slopes is not None),
                direct=int(plan.direct), stride_qs=qs[0], stride_qh=qs[1], **sk, **sv,
                stride_bts=bt.stride(0), stride_os=os_[0], stride_oh=os_[1],
                stride_ms=sm[0], stride_mh=sm[1], stride_as=sa[0], stride_ah=sa[1], stride_ap=sa[2],
                num_seqs=num_seqs, kv_programs=hk * plan.n_gchunks, nparts=plan.nparts)
    index = device.index if device.index is not None else (torch.cuda.current_device() if device.type == "cuda"
                                                           else 0)
    tbl.launch(entry, index, args)
    if not plan.direct:
        red = tbl.entry(keys.reduce_key(plan.d_pad, _DT[query.dtype]), device)
        tbl.launch(red, index, dict(
            OUT=o, M_IN=m_buf, L_IN=l_buf, ACC_IN=acc_buf, SL=sl, cap_len=cap_len, nparts_alloc=m_buf.shape[2],
            PART=plan.part, D=d, stride_os=os_[0], stride_oh=os_[1], stride_ms=sm[0], stride_mh=sm[1],
            stride_as=sa[0], stride_ah=sa[1], stride_ap=sa[2], num_seqs=num_seqs, num_heads=hq))
    state.after_launch()
    if copy_tmp is not None:
        copy_tmp[:, :, :plan.nparts].copy_(acc_buf[:, :, :plan.nparts])
    if o is not out:
        out.copy_(o)


def cache_key(key: torch.Tensor, geom) -> str | None:
    """The cache-write cubin for these tokens (fp16/bf16 keys, any head size up to 256), or None (torch path)."""
    if key.dtype not in _DT:
        return None
    return keys.cache_key(geom.layout, _DT[key.dtype], "fp8" if geom.fp8 else "auto")


def write_slots(tbl, cfg_key: str, key, value, key_cache, value_cache, geom, slot_mapping, k_scale: float,
                v_scale: float, mode: str = "device") -> None:
    """reshape_and_cache[_flash] on the cache-write cubin: no host sync (padding slots are skipped in the kernel)."""
    n, h, d = key.shape
    if n == 0:
        return
    key, value = (t if t.stride(-1) == 1 else t.contiguous() for t in (key, value))  # the kernel reads rows
    device = key.device
    entry = tbl.entry(cfg_key, device)
    kc = key_cache.view(torch.uint8) if geom.fp8 else key_cache
    vc = value_cache.view(torch.uint8) if geom.fp8 else value_cache
    if geom.layout == "vllm":
        sk = (kc.stride(0), kc.stride(1), kc.stride(3), kc.stride(2))
        sv = (vc.stride(0), vc.stride(1), vc.stride(3), vc.stride(2))
    else:
        sk = (kc.stride(0), kc.stride(2), kc.stride(1), 0)
        sv = (vc.stride(0), vc.stride(2), vc.stride(1), vc.stride(3))
    state = _device_check.device_report_for(device) if mode == "device" else _device_check.sink_for(device)
    slots = slot_mapping if slot_mapping.dtype == torch.int64 else slot_mapping.to(torch.int64)
    args = dict(KEY=key, VALUE=value, KC=kc, VC=vc, SLOTS=slots, ERR=state.word, REP=state.kernel_report(), k_scale=k_scale,
                v_scale=v_scale, num_slots=geom.num_blocks * geom.block_size, page_size=geom.block_size,
                num_blocks=geom.num_blocks, D=d, stride_kn=key.stride(0), stride_kh=key.stride(1),
                stride_vn=value.stride(0), stride_vh=value.stride(1), stride_ckb=sk[0], stride_ckh=sk[1],
                stride_ckt=sk[2], stride_ckx=sk[3], stride_cvb=sv[0], stride_cvh=sv[1], stride_cvt=sv[2],
                stride_cvd=sv[3], num_tokens=n, num_kv_heads=h)
    index = device.index if device.index is not None else (torch.cuda.current_device() if device.type == "cuda"
                                                           else 0)
    tbl.launch(entry, index, args)
    state.after_launch()
