"""The float64 reference attention with flash-attn semantics, once for the package: the selftest's expected
outputs, the SDPA fallback's visibility mask and the benchmark scripts' checks all come from here. (The test
suite keeps its own independent oracle in tests/reference.py.)"""

from __future__ import annotations


def flash_visibility(sq: int, sk: int, *, causal: bool, window: tuple[int, int] = (-1, -1), device=None):
    """(sq, sk) bool: which keys each query sees under flash-attn rules (bottom-right aligned causal and window;
    -1 = unbounded side)."""
    import torch

    i = torch.arange(sq, device=device)[:, None] + (sk - sq)
    j = torch.arange(sk, device=device)[None, :]
    allowed = torch.ones(sq, sk, dtype=torch.bool, device=device)
    if causal:
        allowed &= j <= i
    if window[0] >= 0:
        allowed &= j >= i - window[0]
    if window[1] >= 0:
        allowed &= j <= i + window[1]
    return allowed


def flash_visible_pairs(sq: int, sk: int, *, causal: bool, window: tuple[int, int] = (-1, -1)) -> int:
    """How many (query, key) pairs :func:`flash_visibility` admits, in closed form (no sq x sk matrix): the
    FLOP count of causal and windowed attention (4 * b * h * pairs * d forward)."""
    import torch

    left, right = window
    if causal:
        right = 0
    if left < 0 and right < 0:
        return sq * sk
    i = torch.arange(sq, dtype=torch.int64) + (sk - sq)
    lo = torch.zeros_like(i) if left < 0 else (i - left).clamp(min=0)
    hi = torch.full_like(i, sk - 1) if right < 0 else (i + right).clamp(max=sk - 1)
    return int((hi - lo + 1).clamp(min=0).sum())


def attention_reference(q, k, v, *, causal=False, window=(-1, -1), softcap=0.0, scale=None, return_lse=False):
    """float64 attention with flash_attn semantics. q (B, Sq, Hq, D), k/v (B, Sk, Hk, D); causal aligned
    bottom-right (query i sees keys j <= i + Sk - Sq); rows that see no key give 0 (and lse -inf).
    ``return_lse``: (out, lse (B, Hq, Sq)) instead of out."""
    import torch

    q, k, v = q.double(), k.double(), v.double()
    b, sq, hq, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    scale = d ** -0.5 if scale is None else scale
    k = k.repeat_interleave(hq // hk, dim=2)
    v = v.repeat_interleave(hq // hk, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    s = s.masked_fill(~flash_visibility(sq, sk, causal=causal, window=window, device=q.device), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse[..., None]).nan_to_num(0.0)
    out = torch.einsum("bhqk,bkhd->bqhd", p, v)
    return (out, lse) if return_lse else out
