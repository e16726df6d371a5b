"""A flash-attn style kernel module -> the two call signatures users have.

- transformers' AttentionInterface: ``attention(module, query, key, value, attention_mask, scaling=None,
  dropout=0.0, **kwargs) -> (out (B, S, H, D), None)`` with query/key/value in (B, H, S, D). Registered with the
  flash mask format: ``attention_mask`` is None or a 2-D (B, S_kv) padding mask (1 = token), and packed
  sequences arrive as ``cu_seq_lens_q/k`` + ``max_length_q/k``; padding goes through the kernel's varlen entry.
- ``torch.nn.functional.scaled_dot_product_attention``: same arguments, (B, H, S, D).

A flash-attn style kernel module provides ``flash_attn_func`` (flash layout (B, S, H, D), bottom-right causal,
``window_size``, ``softcap``) and optionally ``flash_attn_varlen_func`` and a ``SUPPORTED`` dict
(read into :class:`~.capabilities.Capabilities`). Inputs outside it go to SDPA for that call only, with one
warning per reason.
"""

from __future__ import annotations

from types import ModuleType
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import KernelUnavailable
from .call import UnknownAttentionArguments, normalize_paged, score_modifiers
from .capabilities import Capabilities
from . import routing
from .memo import ForwardMemo
from .notes import once
from .sdpa import floor_attention, torch_sdpa


class FlashKernel:
    """The checks and calls shared by both signatures for one flash-attn style module."""

    def __init__(self, module: ModuleType, function: str | None, device_type: str):
        name = function or "flash_attn_func"
        self.module = module
        self.func = getattr(module, name, None)
        if not callable(self.func):
            have = ", ".join(n for n in getattr(module, "__all__", dir(module)) if not n.startswith("_"))
            raise KernelUnavailable(f"kernel module has no function {name!r}; it provides: {have}", stage="adapt")
        self.caps = Capabilities.of(module, device_type)

    @property
    def varlen(self):  # looked up per call, as transformers does with a kernel module
        return getattr(self.module, "flash_attn_varlen_func", None)

    @property
    def kvcache(self):
        return getattr(self.module, "flash_attn_with_kvcache", None)

    def unsupported(self, q, k, v) -> str | None:
        """Why this call cannot use the kernel, or None."""
        return self.caps.unsupported(q, k, v)

    def dense(self, q, k, v, *, scale, causal, window, softcap):
        """(B, H, S, D) in; (B, S, H, D) out. The transposes are views: flash kernels need only the last dim
        contiguous (a kernel that needs more makes its own copy)."""
        out = self.func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=scale,
                        causal=causal, window_size=window, softcap=softcap or 0.0)
        if isinstance(out, tuple):
            out = out[0]
        return out  # (B, S, H, D)


def adapt(module: ModuleType, spec, device_type: str = "cpu") -> tuple[Callable, Callable, str]:
    """(transformers attention fn, sdpa-like fn, mask format) for a loaded kernel module."""
    kernel = FlashKernel(module, spec.function, device_type)
    label = str(spec)

    def attention(module_, query, key, value, attention_mask, scaling=None, dropout=0.0, sliding_window=None,
                  softcap=None, **kwargs):
        is_causal = kwargs.pop("is_causal", None)
        if is_causal is None:
            is_causal = getattr(module_, "is_causal", True)
        mods = score_modifiers(label, module_, kwargs)  # raises on an argument nobody knows
        if "cache" in kwargs or isinstance(kwargs.get("cu_seq_lens_k"), dict):
            key, value = normalize_paged(label, module_, key, value, kwargs)  # continuous batching
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        window = (-1, -1)
        if sliding_window:  # transformers' sliding mask: kv > q - sliding_window
            window = (sliding_window - 1, 0 if is_causal else sliding_window - 1)
        if kwargs.get("block_table") is not None and kwargs.get("k_cache") is not None:
            return _block_table_call(label, kernel, query, key, value, kwargs, scale, is_causal, window, softcap,
                                     mods), None
        why = kernel.unsupported(query, key, value)
        if why is None and kwargs.get("output_attentions"):
            why = "output_attentions=True needs the attention weights"
        if why is None and dropout and getattr(module_, "training", False):
            why = "attention dropout in training"
        if why is None and attention_mask is not None and attention_mask.dim() != 2:
            why = f"a {attention_mask.dim()}-D attention mask (the kernel takes padding masks only)"
        if why is None and mods.any:
            why = f"{', '.join(mods.reasons)} (the kernel cannot apply it)"
        if attention_mask is None and kwargs.get("cu_seq_lens_q") is None:
            _packed_from_position_ids(query, key, kwargs, getattr(module_, "layer_idx", None))
        packed = kwargs.get("cu_seq_lens_q") is not None and kwargs.get("cu_seq_lens_k") is not None
        needs_varlen = packed or (attention_mask is not None and attention_mask.dim() == 2
                                  and not _all_visible(attention_mask, getattr(module_, "layer_idx", None)))
        if why is None and needs_varlen and kernel.varlen is None:
            why = "padding or packed sequences and the kernel has no varlen entry"
        if why is None and not packed and routing.route(query, window != (-1, -1)) is not None:
            # measured: SDPA wins this shape class on this machine (adapters/routing.py); on purpose, no warning
            out = routing.sdpa_call(query, key, value, scale=scale, causal=is_causal, window=window,
                                    softcap=softcap or 0.0, key_padding=attention_mask if needs_varlen else None)
            return out.transpose(1, 2).contiguous(), None
        if why is not None:
            once(f"{label}:{why}", f"{label}: {why}")
            out = floor_attention(query, key, value, attention_mask, kwargs if packed else None, scale=scale,
                                  causal=is_causal, window=window, softcap=softcap or 0.0, mods=mods)
            return out.transpose(1, 2).contiguous(), None
        if packed:
            out = _packed(kernel, query, key, value, kwargs, scale, is_causal, window, softcap)
        elif needs_varlen:
            out = _unpadded(kernel, query, key, value, attention_mask, scale, is_causal, window, softcap)
        else:
            out = kernel.dense(query, key, value, scale=scale, causal=is_causal, window=window, softcap=softcap)
        return out, None

    def sdpa_like(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        why = kernel.unsupported(query, key, value)
        if why is None and attn_mask is not None:
            why = "an explicit attn_mask"
        if why is None and dropout_p:
            why = "dropout_p > 0"
        if why is None and is_causal and query.shape[-2] != key.shape[-2]:
            why = "is_causal with Sq != Sk (torch aligns top-left, flash kernels bottom-right)"
        if why is None and query.shape[-3] != key.shape[-3] and not enable_gqa:
            why = "different query/key head counts without enable_gqa"  # torch raises the proper error
        if why is not None:
            once(f"{label}:sdpa:{why}", f"{label}: {why}")
            return torch_sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
        s = scale if scale is not None else query.shape[-1] ** -0.5
        return kernel.dense(query, key, value, scale=s, causal=is_causal, window=(-1, -1),
                            softcap=0.0).transpose(1, 2)

    attention.__name__ = attention.__qualname__ = f"kernel_loader_attention[{label}]"
    sdpa_like.__name__ = sdpa_like.__qualname__ = f"kernel_loader_sdpa[{label}]"
    return attention, sdpa_like, "flash"


def _block_table_call(label, kernel, query, key, value, kwargs, scale, causal, window, softcap, mods):
    """The decode fast path of continuous batching (transformers turns it on for flash-named kernels with
    ``flash_attn_with_kvcache`` on CUDA/XPU): one new token per sequence, appended to the paged cache by the kernel
    call itself, as transformers' own flash path does. (B=1, total, H, D) out."""
    fn = kernel.kvcache
    if fn is None or mods.any:
        why = "the kernel has no flash_attn_with_kvcache" if fn is None else ", ".join(mods.reasons)
        raise UnknownAttentionArguments(f"{label}: continuous batching's block-table decode path needs the kernel "
                                        f"to append to the paged cache, but {why}")
    n = query.shape[2]
    q = query[0].transpose(0, 1).reshape(n, 1, query.shape[1], -1)
    k = key[0].transpose(0, 1).reshape(n, 1, key.shape[1], -1)
    v = value[0].transpose(0, 1).reshape(n, 1, value.shape[1], -1)
    cu_k = kwargs["cu_seq_lens_k"]
    cache_seqlens = (cu_k[1:n + 1] - cu_k[:n] - 1).to(torch.int32)
    out = fn(q, kwargs["k_cache"], kwargs["v_cache"], k=k, v=v, cache_seqlens=cache_seqlens,
             block_table=kwargs["block_table"].to(torch.int32), softmax_scale=scale, causal=causal,
             window_size=window, softcap=softcap or 0.0)
    out = out[0] if isinstance(out, tuple) else out
    return out.reshape(1, n, query.shape[1], -1)


_mask_memo = ForwardMemo()


def _all_visible(mask: torch.Tensor, layer: int | None = None) -> bool:
    """``mask.all()`` once per forward, not once per layer (see adapters.memo)."""
    return _mask_memo.get(mask, layer, lambda m: bool(m.all()))


def _call_varlen(kernel, q, k, v, cu_q, cu_k, max_q, max_k, scale, causal, window, softcap):
    out = kernel.varlen(q, k, v, cu_q, cu_k, int(max_q), int(max_k), softmax_scale=scale, causal=causal,
                        window_size=window, softcap=softcap or 0.0)
    return out[0] if isinstance(out, tuple) else out


def _packed(kernel, query, key, value, kwargs, scale, causal, window, softcap):
    """Sequences packed into batch 1 (transformers passes cu_seq_lens_*): straight to varlen."""
    b, hq, sq, d = query.shape
    if b != 1:
        raise ValueError(f"packed sequences (cu_seq_lens_q) need batch size 1, got {b}")
    cu_q = kwargs["cu_seq_lens_q"].to(torch.int32)
    cu_k = kwargs["cu_seq_lens_k"].to(torch.int32)
    # Tokens past the last boundary are padding (static shapes, CUDA graphs): they stay in the packed tensors,
    # where the kernel reads no key past cu_k[-1] and writes 0 for query rows past cu_q[-1], so nothing here
    # reads a boundary on the host (a device sync per layer, and a broken graph capture). (H, S, D) -> (S, H, D)
    # views keep the last dim contiguous: no copies.
    q, k, v = query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1)
    max_q = kwargs.get("max_length_q") or int((cu_q[1:] - cu_q[:-1]).max())
    max_k = kwargs.get("max_length_k") or int((cu_k[1:] - cu_k[:-1]).max())
    out = _call_varlen(kernel, q, k, v, cu_q, cu_k, max_q, max_k, scale, causal, window, softcap)
    return out.unsqueeze(0)  # (1, total, H, D)


def _packed_from_position_ids(query, key, kwargs, layer: int | None = None) -> None:
    """Padding-free batches (batch 1, sequences packed back to back, position ids restarting at each one, no mask)
    get cu_seq_lens derived from the restarts, as transformers' own flash path does; otherwise the sequences
    would attend across each other."""
    pos = kwargs.get("position_ids")
    if pos is None or query.shape[0] != 1 or query.shape[2] == 1 or query.shape[2] != key.shape[2]:
        return
    if pos.numel() != query.shape[2]:
        return
    packing = _packing(pos, layer)
    if packing is not None:
        kwargs["cu_seq_lens_q"] = kwargs["cu_seq_lens_k"] = packing[0]
        kwargs["max_length_q"] = kwargs["max_length_k"] = packing[1]


_packing_memo = ForwardMemo()


def _packing(pos: torch.Tensor, layer: int | None = None):
    """(cu_seqlens, max length) of the sequences packed in ``pos`` (ids restarting at each one), or None for one
    sequence. Finding out syncs with the device; every layer of a forward passes the same position_ids tensor, so
    the answer is found once per forward (adapters.memo)."""
    return _packing_memo.get(pos, layer, _find_packing)


def _find_packing(pos: torch.Tensor):
    flat = pos.reshape(-1)
    starts = (flat == flat.min()).nonzero().view(-1)
    if starts.numel() <= 1:
        return None
    cu = torch.cat([starts.to(torch.int32), torch.tensor([flat.numel()], dtype=torch.int32, device=pos.device)])
    return cu, int(cu.diff().max())


def _cu(lengths: torch.Tensor) -> torch.Tensor:
    return F.pad(torch.cumsum(lengths, 0, dtype=torch.int32), (1, 0))


def _unpadded(kernel, query, key, value, mask, scale, causal, window, softcap):
    """Drop padding tokens (2-D mask, 1 = token), run varlen, scatter back with zeros at padded queries."""
    b, hq, sq, d = query.shape
    sk = key.shape[2]
    mask = mask.bool()
    if mask.shape != (b, sk):
        raise ValueError(f"attention_mask has shape {tuple(mask.shape)}; expected (batch, kv_len) = {(b, sk)}")
    # Queries are the last sq positions of the kv sequence (prefill: all of it; decode: the newest tokens).
    mask_q = mask[:, -sq:]
    idx_k = mask.flatten().nonzero().squeeze(1)
    idx_q = mask_q.flatten().nonzero().squeeze(1)
    k = key.transpose(1, 2).reshape(b * sk, -1, d)[idx_k]
    v = value.transpose(1, 2).reshape(b * sk, -1, value.shape[-1])[idx_k]
    q = query.transpose(1, 2).reshape(b * sq, hq, d)[idx_q]
    len_k, len_q = mask.sum(1), mask_q.sum(1)
    out = _call_varlen(kernel, q, k, v, _cu(len_q), _cu(len_k), int(len_q.max()), int(len_k.max()), scale,
                       causal, window, softcap)
    full = out.new_zeros(b * sq, hq, out.shape[-1])
    full[idx_q] = out
    return full.view(b, sq, hq, -1)
