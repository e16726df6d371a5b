"""Plain-torch attention used to compute gradients (the compiled kernel is forward-only)."""

from typing import Tuple

import torch


def visible_mask(sq: int, sk: int, causal: bool, window: Tuple[int, int], device) -> torch.Tensor:
    """(sq, sk) bool mask: query i sees key j; the diagonal is aligned bottom-right."""
    left, right = window
    if causal:
        right = 0
    i = torch.arange(sq, device=device).unsqueeze(1) + (sk - sq)
    j = torch.arange(sk, device=device).unsqueeze(0)
    mask = torch.ones(sq, sk, dtype=torch.bool, device=device)
    if left >= 0:
        mask &= j >= i - left
    if right >= 0:
        mask &= j <= i + right
    return mask


def attention(q, k, v, scale: float, causal: bool, window: Tuple[int, int], softcap: float):
    """(B, S, H, D) attention in float32 -> (out in q.dtype, lse float32 (B, H, Sq))."""
    hq, hk = q.shape[2], k.shape[2]
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))
    if hq != hk:
        kf = kf.repeat_interleave(hq // hk, dim=1)
        vf = vf.repeat_interleave(hq // hk, dim=1)
    s = torch.matmul(qf, kf.transpose(-1, -2)) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    mask = visible_mask(q.shape[1], k.shape[1], causal, window, q.device)
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    # Rows that see no key: weights 0, lse -inf (never exp(-inf - -inf) = nan).
    safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    p = torch.exp(s - safe.unsqueeze(-1))
    out = torch.matmul(p, vf).transpose(1, 2).to(q.dtype)
    return out, lse


def varlen_attention(q, k, v, cu_q, cu_k, scale, causal, window, softcap):
    """Packed (total, H, D) attention -> (out (total_q, H, D), lse (H, total_q)); one slice per sequence."""
    outs, lses = [], []
    bounds_q, bounds_k = cu_q.tolist(), cu_k.tolist()
    for b in range(len(bounds_q) - 1):
        q0, q1, k0, k1 = bounds_q[b], bounds_q[b + 1], bounds_k[b], bounds_k[b + 1]
        o, l = attention(q[q0:q1].unsqueeze(0), k[k0:k1].unsqueeze(0), v[k0:k1].unsqueeze(0),
                         scale, causal, window, softcap)
        outs.append(o[0])
        lses.append(l[0])
    tail = q.shape[0] - bounds_q[-1]  # packed rows after the last sequence: out 0, lse -inf
    outs.append(q.new_zeros((tail,) + tuple(q.shape[1:])))
    lses.append(torch.full((q.shape[1], tail), float("-inf"), device=q.device))
    return torch.cat(outs, 0), torch.cat(lses, 1)


def attention_grads(q, k, v, dout, scale: float, causal: bool, window: Tuple[int, int], softcap: float,
                    dlse=None):
    """Explicit float32 backward of :func:`attention` (out (B, S, H, D), lse (B, H, S)) -> dq, dk, dv.

    Written out (no autograd) because it runs inside a custom op, below the autograd dispatch key."""
    b, sq, hq, d = q.shape
    hk = k.shape[2]
    g = hq // hk
    qf, kf, vf, dof = (t.float().transpose(1, 2) for t in (q, k, v, dout))
    kf, vf = kf.repeat_interleave(g, dim=1), vf.repeat_interleave(g, dim=1)
    raw = torch.matmul(qf, kf.transpose(-1, -2)) * scale
    t = torch.tanh(raw / softcap) if softcap > 0 else None
    s = softcap * t if softcap > 0 else raw
    mask = visible_mask(sq, k.shape[1], causal, window, q.device)
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1, keepdim=True)
    p = torch.exp(s - torch.where(torch.isinf(lse), torch.zeros_like(lse), lse))
    dv = torch.matmul(p.transpose(-1, -2), dof)
    dp = torch.matmul(dof, vf.transpose(-1, -2))
    ds = p * (dp - (p * dp).sum(-1, keepdim=True))
    if dlse is not None:  # d lse / d s = p
        ds = ds + p * dlse.float().unsqueeze(-1)
    if softcap > 0:
        ds = ds * (1 - t * t)
    dq = torch.matmul(ds, kf) * scale
    dk = torch.matmul(ds.transpose(-1, -2), qf) * scale
    dk = dk.view(b, hk, g, k.shape[1], d).sum(2)
    dv = dv.view(b, hk, g, k.shape[1], d).sum(2)
    return tuple(x.transpose(1, 2).to(ref.dtype) for x, ref in ((dq, q), (dk, k), (dv, v)))


def varlen_attention_grads(q, k, v, dout, cu_q, cu_k, scale, causal, window, softcap, dlse=None):
    """Packed (total, H, D) version of :func:`attention_grads`; rows outside every sequence get 0."""
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    bq, bk = cu_q.tolist(), cu_k.tolist()
    for i in range(len(bq) - 1):
        sl_q, sl_k = slice(bq[i], bq[i + 1]), slice(bk[i], bk[i + 1])
        gq, gk, gv = attention_grads(q[sl_q][None], k[sl_k][None], v[sl_k][None], dout[sl_q][None], scale, causal,
                                     window, softcap, None if dlse is None else dlse[:, sl_q][None])
        dq[sl_q], dk[sl_k], dv[sl_k] = gq[0], gk[0], gv[0]
    return dq, dk, dv
