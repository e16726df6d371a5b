"""Host side of the precompiled prefill kernel (AOT variants: cubins + the build's launcher ops; no Triton).

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
