"""torch path: query blocks of BLOCK_Q rows each attend only to the keys their window can reach, so the work is
O(S * (W + BLOCK_Q)) instead of O(S^2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._window import key_range

BLOCK_Q = 128


def prefill(q, k, v, scale: float, left: int, right: int, softcap: float) -> torch.Tensor:
    b, sq, hq, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    off = sk - sq
    out = torch.zeros(b, sq, hq, v.shape[-1], dtype=q.dtype, device=q.device)
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # views, (B, H, S, D)
    for q0 in range(0, sq, BLOCK_Q):
        q1 = min(sq, q0 + BLOCK_Q)
        lo, hi = key_range(q0, q1, off, sk, left, right)
        if hi <= lo:
            continue
        i = torch.arange(q0, q1, device=q.device)[:, None] + off
        j = torch.arange(lo, hi, device=q.device)[None, :]
        allowed = torch.ones(q1 - q0, hi - lo, dtype=torch.bool, device=q.device)
        if left >= 0:
            allowed &= j >= i - left
        if right >= 0:
            allowed &= j <= i + right
        empty = ~allowed.any(-1, keepdim=True)
        allowed |= empty
        qb, kb, vb = qh[:, :, q0:q1], kh[:, :, lo:hi], vh[:, :, lo:hi]
        if softcap > 0:
            kb = kb.repeat_interleave(hq // hk, 1)
            vb = vb.repeat_interleave(hq // hk, 1)
            s = torch.matmul(qb.float(), kb.float().transpose(-1, -2)) * scale
            s = softcap * torch.tanh(s / softcap)
            s = s.masked_fill(~allowed, float("-inf"))
            o = torch.matmul(torch.softmax(s, -1), vb.float())
        else:
            o = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=allowed, scale=scale, enable_gqa=hq != hk)
        o = o.masked_fill(empty, 0.0)
        out[:, q0:q1] = o.transpose(1, 2).to(q.dtype)
    return out
