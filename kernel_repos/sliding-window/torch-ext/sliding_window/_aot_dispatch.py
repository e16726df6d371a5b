"""Host side of the precompiled prefill and ring-decode kernels (AOT variants: cubins + the build's launcher ops; no
Triton).

``prefill`` returns None when the table has no cubin for the call (another head dim): the caller runs the torch
path. Every specialisation the cubin assumed (16-byte aligned pointers, q/k/v/out strides that are multiples of
16 elements) is met here -- an input that breaks one is copied -- and checked again by the launcher.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import _aot_keys as keys

LOG2E = 1.4426950408889634
_DT = {torch.float16: "fp16", torch.bfloat16: "bf16"}
_tables: dict = {}


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


def config_key(q, softcap: float) -> str | None:
    if q.dtype not in _DT or q.shape[-1] not in keys.HEAD_DIMS:
        return None
    return keys.prefill_key(q.shape[-1], _DT[q.dtype], softcap > 0)


def _fit(t: torch.Tensor) -> torch.Tensor:
    if t.data_ptr() % 16 == 0 and all(s % 16 == 0 for s in t.stride()[:-1]):
        return t
    return t.contiguous() if not t.is_contiguous() else t.clone()


def prefill(tbl, q, k, v, scale: float, left: int, right: int, softcap: float):
    key = config_key(q, softcap)
    if key is None:
        return None
    entry = tbl.entry(key, q.device)
    q, k, v = _fit(q), _fit(k), _fit(v)
    b, sq, hq, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    out = torch.empty(b, sq, hq, d, dtype=q.dtype, device=q.device)
    wide = sq + sk + 1  # an unbounded edge: wider than any sequence
    args = {"Q": q, "K": k, "V": v, "O": out, "sm_scale_log2": scale * LOG2E, "softcap": float(softcap),
            "sqb": q.stride(0), "sqs": q.stride(1), "sqh": q.stride(2),
            "skb": k.stride(0), "sks": k.stride(1), "skh": k.stride(2),
            "svb": v.stride(0), "svs": v.stride(1), "svh": v.stride(2),
            "sob": out.stride(0), "sos": out.stride(1), "soh": out.stride(2),
            "SQ": sq, "SK": sk, "HQ": hq, "LEFT": wide if left < 0 else left, "RIGHT": wide if right < 0 else right,
            "G": hq // hk, "batch": b}
    tbl.launch(entry, q.device.index, args)
    return out


def _aligned(t: torch.Tensor) -> bool:
    return t.data_ptr() % 16 == 0 and all(s % 16 == 0 for s in t.stride()[:-1])


def ring_decode(tbl, q, k, v, filled: int, scale: float, softcap: float):
    """q [B, 1, Hq, D] against the first ``filled`` ring slots of k/v [B, W, Hk, D], or None when no cubin serves
    the call (head size not a multiple of 16, caches whose strides are not multiples of 16 elements)."""
    from . import _decode_plan

    d = q.shape[-1]
    if q.dtype not in _DT or d % keys.DECODE_HEAD_MULTIPLE or not 32 <= d <= 256 or not (_aligned(k) and _aligned(v)):
        return None
    bucket = _decode_plan.size_key(d)
    entry = tbl.entry(keys.decode_key(bucket, _DT[q.dtype], softcap > 0), q.device)
    cex = entry.constexprs if hasattr(entry, "constexprs") else entry["constexprs"]
    b, _, hq, _ = q.shape
    hk = k.shape[2]
    plan = _decode_plan.plan_ring_decode(b, hq, hk, d, filled, q.device, tile=cex["TILE"])
    q = _fit(q)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if plan.direct:
        m = l = acc = _dummy(q.device)
        sm, sa = (0, 0), (0, 0, 0)
    else:
        n = b * hq * plan.nparts
        off = -(-2 * n // 4) * 4  # the output partials start 16-byte aligned
        buf = torch.empty(off + n * d, device=q.device, dtype=torch.float32)
        m, l = buf[:n].view(b, hq, plan.nparts), buf[n:2 * n].view(b, hq, plan.nparts)
        acc = buf[off:].view(b, hq, plan.nparts, d)
        sm, sa = (m.stride(0), m.stride(1)), (acc.stride(0), acc.stride(1), acc.stride(2))
    args = dict(Q=q, K=k, V=v, OUT=out, M_OUT=m, L_OUT=l, ACC_OUT=acc, sm_scale_log2=scale * LOG2E,
                softcap=float(softcap), N=filled, PART=plan.part, G=hq // hk, n_gchunks=plan.n_gchunks, D=d,
                direct=int(plan.direct), sqb=q.stride(0), sqh=q.stride(2), skb=k.stride(0), sks=k.stride(1),
                skh=k.stride(2), svb=v.stride(0), svs=v.stride(1), svh=v.stride(2), sob=out.stride(0),
                soh=out.stride(2), smb=sm[0], smh=sm[1], sab=sa[0], sah=sa[1], sap=sa[2],
                batch=b, kv_programs=hk * plan.n_gchunks, nparts=plan.nparts, heads=hq)
    index = q.device.index if q.device.index is not None else (torch.cuda.current_device()
                                                               if q.device.type == "cuda" else 0)
    tbl.launch(entry, index, args)
    if not plan.direct:
        red = tbl.entry(keys.decode_reduce_key(bucket, _DT[q.dtype]), q.device)
        tbl.launch(red, index, dict(args, OUT=out, M_IN=m, L_IN=l, ACC_IN=acc, nparts=plan.nparts))
    return out


_dummies: dict = {}


def _dummy(device) -> torch.Tensor:
    """A float32 buffer for the partial-output pointers of a direct (one-partition) launch, never touched."""
    t = _dummies.get(device)
    if t is None:
        t = _dummies[device] = torch.zeros(4, dtype=torch.float32, device=device)
    return t
