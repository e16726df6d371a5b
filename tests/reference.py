"""float64 attention reference with flash-attn semantics, used by every numeric test."""

import torch


def attention_ref(q, k, v, *, causal=False, window=(-1, -1), softcap=0.0, scale=None, key_padding=None):
    """q (B, Sq, Hq, D), k/v (B, Sk, Hk, D) flash layout; bottom-right causal; rows that see nothing give 0.

    Returns (out float64 (B, Sq, Hq, D), lse float64 (B, Hq, Sq))."""
    q, k, v = q.double(), k.double(), v.double()
    b, sq, hq, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    scale = d ** -0.5 if scale is None else scale
    k = k.repeat_interleave(hq // hk, dim=2)
    v = v.repeat_interleave(hq // hk, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    i = torch.arange(sq)[:, None] + (sk - sq)
    j = torch.arange(sk)[None, :]
    allowed = torch.ones(sq, sk, dtype=torch.bool)
    if causal:
        allowed &= j <= i
    if window[0] >= 0:
        allowed &= j >= i - window[0]
    if window[1] >= 0:
        allowed &= j <= i + window[1]
    allowed = allowed[None, None].expand(b, hq, sq, sk)
    if key_padding is not None:
        allowed = allowed & key_padding.bool()[:, None, None, :]
    s = s.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse[..., None]).nan_to_num(0.0)
    out = torch.einsum("bhqk,bkhd->bqhd", p, v)
    return out, lse
