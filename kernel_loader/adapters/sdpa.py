"""The floor every adapter falls back to: PyTorch SDPA in both call signatures, and flash-attn semantics
(bottom-right causal, windows, softcap, key padding) on top of it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..reference import flash_visibility


def torch_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                                          is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)


def sdpa_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' own SDPA attention (used when a kernel fell back: it is registered with the sdpa mask)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def masked_attention(q, k, v, *, scale: float, causal: bool, window: tuple[int, int] = (-1, -1),
                     softcap: float = 0.0, key_padding: torch.Tensor | None = None) -> torch.Tensor:
    """Flash-attn semantics on top of SDPA (or eager math when softcap is set), (B, H, S, D) layout.

    Causal and windows are aligned bottom-right (query i sees key j <= i + Sk - Sq), ``key_padding`` is a (B, Sk)
    mask of real tokens; rows that see no key give 0, as the flash kernels do.
    """
    allowed = flash_visibility(q.shape[-2], k.shape[-2], causal=causal, window=window, device=q.device)[None, None]
    if key_padding is not None:
        allowed = allowed & key_padding.bool()[:, None, None, :]
    empty = ~allowed.any(-1, keepdim=True)
    allowed = allowed | empty  # avoid NaN rows; they are zeroed below
    if q.shape[1] != k.shape[1]:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    if softcap and softcap > 0:
        s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
        s = softcap * torch.tanh(s / softcap)
        s = s.masked_fill(~allowed, float("-inf"))
        out = torch.matmul(torch.softmax(s, -1), v.float()).to(q.dtype)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale)
    return out.masked_fill(empty, 0.0)
