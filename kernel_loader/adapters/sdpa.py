"""The floor every adapter falls back to: PyTorch SDPA in both call signatures, and flash-attn semantics
(bottom-right causal, windows, softcap, key padding) on top of it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .call import UnknownAttentionArguments, packed_reference, reference_attention



def torch_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                                          is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)


def sdpa_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' own SDPA attention (used when a kernel fell back: it is registered with the sdpa mask)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def masked_attention(q, k, v, *, scale: float, causal: bool, window: tuple[int, int] = (-1, -1),
                     softcap: float = 0.0, key_padding: torch.Tensor | None = None) -> torch.Tensor:
    """Flash-attn semantics on top of SDPA (or eager math when softcap is set), (B, H, S, D) layout: causal and
    windows aligned bottom-right, ``key_padding`` (B, Sk) real tokens, rows that see no key give 0
    (:func:`.call.reference_attention` without bias or sinks)."""
    return reference_attention(q, k, v, scale=scale, causal=causal, window=window, softcap=softcap,
                               key_padding=key_padding)


def floor_attention(query, key, value, attention_mask, packed_kwargs, *, scale, causal, window, softcap, mods):
    """The sdpa floor for one call, (B, H, S, D) out: packed input attended per sequence, a 4-D mask used as
    given (it already encodes causality), a 2-D mask as key padding, and any bias or sinks applied."""
    if packed_kwargs is not None:
        q_len = int(packed_kwargs["cu_seq_lens_q"][-1])
        out = query.new_zeros(query.shape)
        out[:, :, :q_len] = packed_reference(query[:, :, :q_len], key, value, packed_kwargs["cu_seq_lens_q"],
                                             packed_kwargs["cu_seq_lens_k"], scale=scale, causal=causal,
                                             window=window, softcap=softcap, sinks=mods.sinks)
        return out
    if attention_mask is not None and attention_mask.dim() == 4:
        if softcap or mods.sinks is not None:
            raise UnknownAttentionArguments("a 4-D attention mask together with softcap or sinks is not supported "
                                            "by the floor; use attn_implementation='eager'")
        mask = attention_mask
        if mods.bias is not None:
            mask = (torch.where(mask, mods.bias.to(query.dtype), torch.finfo(query.dtype).min)
                    if mask.dtype == torch.bool else mask + mods.bias.to(mask.dtype))
        return torch_sdpa(query, key, value, attn_mask=mask, scale=scale,
                          enable_gqa=query.shape[1] != key.shape[1])
    pad = attention_mask if attention_mask is not None else None
    return reference_attention(query, key, value, scale=scale, causal=causal, window=window, softcap=softcap,
                               key_padding=pad, bias=mods.bias, sinks=mods.sinks)
