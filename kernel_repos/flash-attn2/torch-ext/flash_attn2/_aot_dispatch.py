"""Host side of the precompiled (AOT) kernels: the same contract as _triton_launch.forward/backward, served from
the variant's cubin table through the build's launcher ops. No Triton import.

Present in every variant; it finds a table only in the AOT variants (``_aot_runtime.py`` and ``cubins/`` are
added by kernel_loader's builder). The configuration of a call is its key (_aot_keys); every specialisation a
cubin was compiled with (16-byte aligned pointers, q/k/v/out strides that are multiples of 16) is checked here
first -- an input that breaks one is copied to a contiguous tensor, which meets them all -- and again by the
launcher in C++.
"""

from pathlib import Path
from typing import Optional

import torch

from . import _aot_keys as keys

LOG2E = 1.4426950408889634
_DT = {torch.float16: "fp16", torch.bfloat16: "bf16"}
_table_error: Optional[str] = None


def table(ops):
    """The variant's CubinTable, or None (no cubins in this variant, or no launcher ops)."""
    global _table_error
    if ops is None or not hasattr(ops, "launch"):
        _table_error = "this build has no AOT launcher"
        return None
    try:
        from . import _aot_runtime
    except ImportError:
        _table_error = "this build carries no precompiled kernels"
        return None
    return _aot_runtime.table(Path(__file__).parent, ops)


def why_unavailable() -> Optional[str]:
    return _table_error


_dummies: dict = {}


def _dummy(device) -> torch.Tensor:
    """An int32 tensor for pointer parameters whose flag is off (never read by the kernel)."""
    t = _dummies.get(device)
    if t is None:
        t = _dummies[device] = torch.zeros(4, dtype=torch.int32, device=device)
    return t


def _fit(t: torch.Tensor, strided: bool = True) -> torch.Tensor:
    """``t`` if its data pointer is 16-byte aligned and (``strided``) every stride but the last is a multiple of
    16 elements, else a contiguous copy (which is: supported head dims are multiples of 16)."""
    if t.data_ptr() % 16 == 0 and (not strided or not any(s % 16 for s in t.stride()[:-1])):
        return t
    return t.contiguous() if not t.is_contiguous() else t.clone()


def _window(causal, window, sq: int, sk: int):
    """(left, right) as the cubins take them: both edges on; an unbounded edge is wider than any sequence."""
    left, right = int(window[0]), int(window[1])
    if causal:
        right = 0
    wide = sq + sk + 1
    return (wide if left < 0 else left), (wide if right < 0 else right)


def _fwd_scale(scale: float, softcap: float) -> float:
    return scale / softcap if softcap else scale * LOG2E


def fwd_mode(varlen: bool, seqused_k: bool, paged: bool) -> str:
    return "varlen" if varlen else ("paged" if paged else ("kvcache" if seqused_k else "dense"))


def fwd_config(q, mode: str, softcap: float, rows: int) -> str:
    """The configuration key of a forward call (what the cubin table must hold for it); ``rows``: the longest
    query sequence (max_seqlen_q, or q's seqlen)."""
    return keys.fwd_key(mode, q.shape[-1], _DT[q.dtype], softcap > 0, rows <= keys.SHORT_Q)


def bwd_configs(q, varlen: bool, softcap: float) -> tuple:
    """The keys of the three backward kernels of a call: delta, dK/dV, dQ."""
    mode, d, dt, cap = ("varlen" if varlen else "dense"), q.shape[-1], _DT[q.dtype], softcap > 0
    return (keys.bwd_key("delta", mode, d, dt, False), keys.bwd_key("dkdv", mode, d, dt, cap),
            keys.bwd_key("dq", mode, d, dt, cap))


def forward(tbl, q, k, v, *, scale, causal, window, softcap, cu_q=None, cu_k=None, max_q=None, max_k=None,
            seqused_k=None, block_table=None):
    """-> out (like q), lse float32: dense (B, H, Sq), varlen (H, total_q). Same layouts as _triton_launch."""
    varlen = cu_q is not None
    paged = block_table is not None
    rows = int(max_q) if varlen else q.shape[1]
    entry = tbl.entry(fwd_config(q, fwd_mode(varlen, seqused_k is not None, paged), softcap, rows), q.device)
    q, k, v = _fit(q), _fit(k), _fit(v)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    dummy = _dummy(q.device)
    if varlen:
        total_q, hq = q.shape[0], q.shape[1]
        batch, hk = cu_q.shape[0] - 1, k.shape[1]
        lse = torch.empty((hq, total_q), device=q.device, dtype=torch.float32)
        sq_, sk_ = int(max_q), int(max_k)
        strides = {"stride_qb": 0, "stride_qm": q.stride(0), "stride_qh": q.stride(1),
                   "stride_kb": 0, "stride_kn": k.stride(0), "stride_kh": k.stride(1),
                   "stride_vb": 0, "stride_vn": v.stride(0), "stride_vh": v.stride(1),
                   "stride_ob": 0, "stride_om": out.stride(0), "stride_oh": out.stride(1),
                   "stride_lb": 0, "stride_lh": lse.stride(0)}
    else:
        batch, sq_, hq = q.shape[0], q.shape[1], q.shape[2]
        hk = k.shape[2]
        sk_ = k.shape[1] if not paged else block_table.shape[1] * k.shape[1]
        lse = torch.empty((batch, hq, sq_), device=q.device, dtype=torch.float32)
        (qb, qm, qh, _), (kb, kn, kh, _), (vb, vn, vh, _) = q.stride(), k.stride(), v.stride()
        (ob, om, oh, _), (lb, lh, _) = out.stride(), lse.stride()
        strides = {"stride_qb": qb, "stride_qm": qm, "stride_qh": qh, "stride_kb": kb, "stride_kn": kn,
                   "stride_kh": kh, "stride_vb": vb, "stride_vn": vn, "stride_vh": vh, "stride_ob": ob,
                   "stride_om": om, "stride_oh": oh, "stride_lb": lb, "stride_lh": lh}
    if out.numel() == 0:
        return out, lse.fill_(float("-inf"))
    left, right = _window(causal, window, sq_, sk_)
    softcap = float(softcap)
    args = {
        "Q": q, "K": k, "V": v, "O": out, "LSE": lse,
        "CU_Q": _fit(cu_q, False) if varlen else dummy, "CU_K": _fit(cu_k, False) if varlen else dummy,
        "SEQUSED_K": _fit(seqused_k, False) if seqused_k is not None else dummy,
        "BLOCK_TABLE": _fit(block_table, False) if paged else dummy,
        **strides,
        "stride_btb": block_table.stride(0) if paged else 0,
        "stride_kpage": k.stride(0) if paged else 0, "stride_vpage": v.stride(0) if paged else 0,
        "seqlen_q_max": sq_, "seqlen_k_max": sk_, "n_heads": hq, "group": hq // hk, "batch": batch,
        "qk_scale": _fwd_scale(scale, softcap), "softcap": softcap, "left": left, "right": right,
        "seq_bucket": 0, "page_size": k.shape[1] if paged else 1,
    }
    tbl.launch(entry, q.device.index, args)
    return out, lse


def backward(tbl, dout, q, k, v, out, lse, *, scale, causal, window, softcap, cu_q=None, cu_k=None, max_q=None,
             max_k=None, dlse=None):
    """-> dq, dk, dv (like q, k, v); the contract of _triton_launch.backward."""
    varlen = cu_q is not None
    e_delta, e_dkdv, e_dq = (tbl.entry(key, q.device) for key in bwd_configs(q, varlen, softcap))
    q, k, v, out, dout = _fit(q), _fit(k), _fit(v), _fit(out), _fit(dout)
    lse = lse.contiguous()
    alloc = torch.zeros_like if varlen else torch.empty_like  # varlen: packed rows after the last sequence stay 0
    dq, dk, dv = (alloc(t, memory_format=torch.contiguous_format) for t in (q, k, v))
    delta = torch.empty_like(lse)
    if varlen:
        batch = cu_q.shape[0] - 1
        hq, hk = q.shape[1], k.shape[1]
        sq_, sk_ = int(max_q), int(max_k)

        def st(t, n, row="m"):
            return {f"stride_{n}b": 0, f"stride_{n}{row}": t.stride(0), f"stride_{n}h": t.stride(1)}
        ls = {"stride_lb": 0, "stride_lh": lse.stride(0)}
    else:
        batch, sq_, hq = q.shape[0], q.shape[1], q.shape[2]
        sk_, hk = k.shape[1], k.shape[2]

        def st(t, n, row="m"):
            return {f"stride_{n}b": t.stride(0), f"stride_{n}{row}": t.stride(1), f"stride_{n}h": t.stride(2)}
        ls = {"stride_lb": lse.stride(0), "stride_lh": lse.stride(1)}
    if q.numel() == 0 or k.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    dummy = _dummy(q.device)
    cu_q_ = _fit(cu_q, False) if varlen else dummy
    cu_k_ = _fit(cu_k, False) if varlen else dummy
    dev = q.device.index
    tbl.launch(e_delta, dev, {"O": out, "DO": dout, "DELTA": delta, **st(out, "o"), **st(dout, "d"), **ls,
                              "CU_Q": cu_q_, "seqlen_q_max": sq_, "n_heads": hq, "batch": batch})
    if dlse is not None:
        delta.sub_(dlse.float().masked_fill(lse == float("-inf"), 0.0))
    softcap = float(softcap)
    left, right = _window(causal, window, sq_, sk_)
    common = {"Q": q, "K": k, "V": v, "DO": dout, "LSE": lse, "DELTA": delta, "CU_Q": cu_q_, "CU_K": cu_k_,
              **st(q, "q"), **st(k, "k", "n"), **st(v, "v", "n"), **st(dout, "do"), **ls,
              "seqlen_q_max": sq_, "seqlen_k_max": sk_, "group": hq // hk, "scale": scale,
              "qk_scale": scale / softcap if softcap else scale * LOG2E, "softcap": softcap,
              "left": left, "right": right, "seq_bucket": 0, "batch": batch}
    tbl.launch(e_dkdv, dev, {**common, "DK": dk, "DV": dv, **st(dk, "dk", "n"), **st(dv, "dv", "n"),
                             "n_heads_k": hk})
    tbl.launch(e_dq, dev, {**common, "DQ": dq, **st(dq, "dq"), "n_heads": hq})
    return dq, dk, dv
