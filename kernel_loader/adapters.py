"""Kernel module -> the two call signatures users have.

- transformers' AttentionInterface: ``attention(module, query, key, value, attention_mask, scaling=None,
  dropout=0.0, **kwargs) -> (out (B, S, H, D), None)`` with query/key/value in (B, H, S, D). Registered with the
  flash mask format: ``attention_mask`` is None or a 2-D (B, S_kv) padding mask (1 = token), and packed
  sequences arrive as ``cu_seq_lens_q/k`` + ``max_length_q/k``; padding goes through the kernel's varlen entry.
- ``torch.nn.functional.scaled_dot_product_attention``: same arguments, (B, H, S, D).

A flash-attn style kernel module provides ``flash_attn_func`` (flash layout (B, S, H, D), bottom-right causal,
``window_size``, ``softcap``) and optionally ``flash_attn_varlen_func`` and a ``SUPPORTED`` dict
(``dtypes``, ``head_dims``, ``backward``, ``devices``, optionally ``dtypes_by_device`` / ``head_dims_by_device``
mapping a device type to its own limits). Inputs outside ``SUPPORTED`` go to SDPA for that call only,
with one warning per reason.
"""

from __future__ import annotations

import logging
import warnings
import weakref
from types import ModuleType
from typing import Callable

import torch
import torch.nn.functional as F

from . import routing
from .fallback import KernelUnavailable

logger = logging.getLogger("kernel_loader")
_warned: set[str] = set()


def _once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"kernel_loader: {message}; using sdpa for such calls", stacklevel=3)


# ---------------------------------------------------------------------------------------------------- reference

def torch_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                                          is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)


def sdpa_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' own SDPA attention (used when a kernel fell back: it is registered with the sdpa mask)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def flash_visibility(sq: int, sk: int, *, causal: bool, window: tuple[int, int] = (-1, -1),
                     device=None) -> torch.Tensor:
    """(sq, sk) bool: which keys each query sees under flash-attn rules (bottom-right aligned causal and window;
    -1 = unbounded side)."""
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


# ---------------------------------------------------------------------------------------------------- kernel

class FlashKernel:
    """The checks and calls shared by both signatures for one flash-attn style module."""

    def __init__(self, module: ModuleType, function: str | None, device_type: str):
        name = function or "flash_attn_func"
        self.func = getattr(module, name, None)
        if not callable(self.func):
            have = ", ".join(n for n in getattr(module, "__all__", dir(module)) if not n.startswith("_"))
            raise KernelUnavailable(f"kernel module has no function {name!r}; it provides: {have}", stage="adapt")
        self.varlen = getattr(module, "flash_attn_varlen_func", None)
        supported = dict(getattr(module, "SUPPORTED", {}) or {})
        self.dtypes = tuple(supported.get("dtypes", (torch.float16, torch.bfloat16)))
        self.head_dims = supported.get("head_dims")  # container or None = any
        self.backward = bool(supported.get("backward", False))
        devices = supported.get("devices") or supported.get("device") or device_type
        self.devices = (devices,) if isinstance(devices, str) else tuple(devices)
        # Optional per-device limits ({"cpu": (...), "cuda": (...)}); they win over dtypes/head_dims for that device.
        self.dtypes_by_device = dict(supported.get("dtypes_by_device") or {})
        self.head_dims_by_device = dict(supported.get("head_dims_by_device") or {})

    def unsupported(self, q, k, v) -> str | None:
        """Why this call cannot use the kernel, or None."""
        if q.device.type not in self.devices:
            return f"tensors on {q.device.type}, kernel runs on {'/'.join(self.devices)}"
        dtypes = tuple(self.dtypes_by_device.get(q.device.type, self.dtypes))
        head_dims = self.head_dims_by_device.get(q.device.type, self.head_dims)
        if q.dtype not in dtypes or k.dtype != q.dtype or v.dtype != q.dtype:
            return f"dtype {q.dtype} not in {', '.join(str(d) for d in dtypes)}"
        d = q.shape[-1]
        if v.shape[-1] != d or (head_dims is not None and d not in head_dims):
            return f"head dim {d}/{v.shape[-1]} not supported"
        if q.shape[1] % k.shape[1] if q.dim() == 4 else False:
            return "query heads not a multiple of key heads"
        if not self.backward and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
            return "gradients requested and this variant is forward-only"
        return None

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
        cache = kwargs.pop("cache", None)
        if cache is not None and hasattr(cache, "layer_to_allocator"):
            # Continuous batching (transformers <= 5.23 hands flash implementations the paged cache): write the
            # new K/V and read back the full sequences, as transformers' own flash_attention_forward does.
            if kwargs.get("block_table") is not None:
                raise NotImplementedError(f"{label}: continuous batching's block-table decode path; set "
                                          "ContinuousBatchingConfig(max_blocks_per_request=0)")
            key, value = cache.update(key, value, module_.layer_idx, kwargs)
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        window = (-1, -1)
        if sliding_window:  # transformers' sliding mask: kv > q - sliding_window
            window = (sliding_window - 1, 0 if is_causal else sliding_window - 1)
        why = kernel.unsupported(query, key, value)
        if why is None and kwargs.get("output_attentions"):
            why = "output_attentions=True needs the attention weights"
        if why is None and dropout and getattr(module_, "training", False):
            why = "attention dropout in training"
        if why is None and attention_mask is not None and attention_mask.dim() != 2:
            why = f"a {attention_mask.dim()}-D attention mask (the kernel takes padding masks only)"
        if attention_mask is None and kwargs.get("cu_seq_lens_q") is None:
            _packed_from_position_ids(query, key, kwargs)
        packed = kwargs.get("cu_seq_lens_q") is not None and kwargs.get("cu_seq_lens_k") is not None
        needs_varlen = packed or (attention_mask is not None and not bool(attention_mask.all()))
        if why is None and needs_varlen and kernel.varlen is None:
            why = "padding or packed sequences and the kernel has no varlen entry"
        if why is None and not packed and routing.route(query, window != (-1, -1)) is not None:
            # measured: SDPA wins this shape class here (kernel_loader/routing.py); on purpose, no warning
            out = routing.sdpa_call(query, key, value, scale=scale, causal=is_causal, window=window,
                                    softcap=softcap or 0.0, key_padding=attention_mask if needs_varlen else None)
            return out.transpose(1, 2).contiguous(), None
        if why is not None:
            _once(f"{label}:{why}", f"{label}: {why}")
            if packed:
                raise NotImplementedError(f"{label}: packed sequences need the kernel's varlen path ({why})")
            pad = attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None
            out = masked_attention(query, key, value, scale=scale, causal=is_causal, window=window,
                                   softcap=softcap or 0.0, key_padding=pad)
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
            _once(f"{label}:sdpa:{why}", f"{label}: {why}")
            return torch_sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
        s = scale if scale is not None else query.shape[-1] ** -0.5
        return kernel.dense(query, key, value, scale=s, causal=is_causal, window=(-1, -1),
                            softcap=0.0).transpose(1, 2)

    attention.__name__ = attention.__qualname__ = f"kernel_loader_attention[{label}]"
    sdpa_like.__name__ = sdpa_like.__qualname__ = f"kernel_loader_sdpa[{label}]"
    return attention, sdpa_like, "flash"


def _call_varlen(kernel, q, k, v, cu_q, cu_k, max_q, max_k, scale, causal, window, softcap):
    out = kernel.varlen(q, k, v, cu_q, cu_k, int(max_q), int(max_k), softmax_scale=scale, causal=causal,
                        window_size=window, softcap=softcap or 0.0)
    return out[0] if isinstance(out, tuple) else out


def _packed(kernel, query, key, value, kwargs, scale, causal, window, softcap):
    """Sequences packed into batch 1 (transformers passes cu_seq_lens_*): straight to varlen."""
    b, hq, sq, d = query.shape
    if b != 1:
        raise ValueError(f"packed sequences (cu_seq_lens_q) need batch size 1, got {b}")
    q = query[0].transpose(0, 1).contiguous()  # (total, H, D)
    k = key[0].transpose(0, 1).contiguous()
    v = value[0].transpose(0, 1).contiguous()
    cu_q = kwargs["cu_seq_lens_q"].to(torch.int32)
    cu_k = kwargs["cu_seq_lens_k"].to(torch.int32)
    max_q = kwargs.get("max_length_q") or int((cu_q[1:] - cu_q[:-1]).max())
    max_k = kwargs.get("max_length_k") or int((cu_k[1:] - cu_k[:-1]).max())
    out = _call_varlen(kernel, q, k, v, cu_q, cu_k, max_q, max_k, scale, causal, window, softcap)
    return out.unsqueeze(0)  # (1, total, H, D)


def _packed_from_position_ids(query, key, kwargs) -> None:
    """Padding-free batches (batch 1, sequences packed back to back, position ids restarting at each one, no mask)
    get cu_seq_lens derived from the restarts, as transformers' own flash path does; otherwise the sequences
    would attend across each other."""
    pos = kwargs.get("position_ids")
    if pos is None or query.shape[0] != 1 or query.shape[2] == 1 or query.shape[2] != key.shape[2]:
        return
    if pos.numel() != query.shape[2]:
        return
    packing = _packing(pos)
    if packing is not None:
        kwargs["cu_seq_lens_q"] = kwargs["cu_seq_lens_k"] = packing[0]
        kwargs["max_length_q"] = kwargs["max_length_k"] = packing[1]


_packing_memo: list = [None, -1, None]  # (weakref to position_ids, its version, what _packing found)


def _packing(pos: torch.Tensor):
    """(cu_seqlens, max length) of the sequences packed in ``pos`` (ids restarting at each one), or None for one
    sequence. Finding out syncs with the device, and every layer of a forward passes the same position_ids
    tensor: the answer is remembered for that tensor while it is unmodified, one sync per forward, not per layer."""
    # Inference tensors have no version counter (in-place changes cannot be seen): no memo for them.
    version = None if pos.is_inference() else pos._version
    ref, memo_version, found = _packing_memo
    if version is not None and ref is not None and ref() is pos and memo_version == version:
        return found
    flat = pos.reshape(-1)
    starts = (flat == flat.min()).nonzero().view(-1)
    found = None
    if starts.numel() > 1:
        cu = torch.cat([starts.to(torch.int32), torch.tensor([flat.numel()], dtype=torch.int32, device=pos.device)])
        found = (cu, int(cu.diff().max()))
    if version is not None:
        _packing_memo[:] = [weakref.ref(pos), version, found]
    return found


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


# ---------------------------------------------------------------------------------------------------- paged kernels

PAGED_API = ("paged_attention_varlen", "reshape_and_cache_flash")


def is_paged_module(module: ModuleType) -> bool:
    """A paged-attention kernel (vLLM-style API + our varlen entry) rather than a flash-attn style one."""
    return all(callable(getattr(module, n, None)) for n in PAGED_API) and not callable(
        getattr(module, "flash_attn_func", None))


def adapt_paged(module: ModuleType, spec, device_type: str = "cpu") -> tuple[Callable, Callable, str]:
    """(transformers attention fn, sdpa-like fn, mask format) for a paged-attention kernel module.

    Under transformers' continuous batching (``generate_batch`` / ``ContinuousBatchingManager``) the attention
    receives ``cache`` (a ``PagedAttentionCache``), ``cu_seq_lens_q``/``cu_seq_lens_k`` and ``read_index``/
    ``write_index`` (slot indices). The new tokens' K/V are written with the kernel's ``reshape_and_cache_flash``
    into the layer's page view of the cache ([pages, page_size, kv_heads, head_dim], the layout transformers
    gives its block-table kernels), the block tables are rebuilt from the read slots (whole pages, in order), and
    attention runs in the kernel's ``paged_attention_varlen`` (decode steps go to its decode kernel). Anything else
    (no paged cache, a sliding-window cache group, slots that are not whole pages) goes to transformers' SDPA,
    with one warning per reason.
    """
    missing = [n for n in PAGED_API if not callable(getattr(module, n, None))]
    if missing:
        have = ", ".join(n for n in getattr(module, "__all__", dir(module)) if not n.startswith("_"))
        raise KernelUnavailable(f"{spec} asks for a paged kernel but the module lacks {', '.join(missing)}; it "
                                f"provides: {have}", stage="adapt")
    label = str(spec)
    devices = (device_type,) if device_type != "cpu" else ("cpu",)
    dtypes = (torch.float16, torch.bfloat16, torch.float32)

    def fallback(why, module_, query, key, value, attention_mask, **kwargs):
        _once(f"{label}:paged:{why}", f"{label}: {why}")
        return sdpa_attention(module_, query, key, value, attention_mask, **kwargs)

    def attention(module_, query, key, value, attention_mask, scaling=None, dropout=0.0, sliding_window=None,
                  softcap=None, cache=None, **kwargs):
        kw = dict(kwargs, scaling=scaling, dropout=dropout, cache=cache)
        if sliding_window is not None:
            kw["sliding_window"] = sliding_window
        if softcap is not None:
            kw["softcap"] = softcap
        if cache is None or not hasattr(cache, "layer_to_allocator") or "write_index" not in kwargs:
            return fallback("no paged cache (continuous batching) in this call", module_, query, key, value,
                            attention_mask, **kw)
        allocator = cache.layer_to_allocator[module_.layer_idx]
        why = None
        if not getattr(allocator, "supports_block_table", False):
            why = f"cache group {getattr(allocator, 'layer_type', '?')} is not paged by whole blocks"
        elif query.device.type not in devices or query.dtype not in dtypes or key.dtype != query.dtype:
            why = f"tensors {query.dtype} on {query.device.type}"
        elif kwargs.get("block_table") is not None:
            why = "transformers' block-table fast path (flash_attn_with_kvcache) is not this kernel's entry"
        elif dropout and getattr(module_, "training", False):
            why = "attention dropout in training"
        if why is None:
            out = _paged_call(module, allocator, module_, query, key, value, scaling, sliding_window, softcap,
                              kwargs)
            if out is not None:
                return out, None
            why = "slot indices that are not whole pages in order"
        return fallback(why, module_, query, key, value, attention_mask, **kw)

    def sdpa_like(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        _once(f"{label}:sdpa", f"{label}: a paged kernel has no contiguous-cache entry")
        return torch_sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)

    attention.__name__ = attention.__qualname__ = f"kernel_loader_paged_attention[{label}]"
    sdpa_like.__name__ = sdpa_like.__qualname__ = f"kernel_loader_sdpa[{label}]"
    return attention, sdpa_like, "sdpa"


def _per_layer(value, allocator):
    return value[allocator.layer_type] if isinstance(value, dict) else value


def block_tables_from_slots(slots: torch.Tensor, cu: torch.Tensor, page: int):
    """Per-sequence slot lists (concatenated, boundaries ``cu``) -> (block_tables int32 [n, max_pages], lengths
    int32 [n]); None when a sequence's slots are not whole pages in order (page p = slots[p*page] // page)."""
    lens = cu.diff().long()
    n = lens.numel()
    total = int(cu[-1])
    slots = slots[:total].long()
    seg = torch.repeat_interleave(torch.arange(n, device=slots.device), lens.to(slots.device))
    pos = torch.arange(total, device=slots.device) - cu[:-1].long().to(slots.device)[seg]
    max_pages = int((lens.max() + page - 1) // page) if n else 0
    tables = torch.zeros(n, max(max_pages, 1), dtype=torch.long, device=slots.device)
    first = pos % page == 0
    if bool((slots[first] % page != 0).any()):
        return None
    tables[seg[first], pos[first] // page] = slots[first] // page
    if not bool((tables[seg, pos // page] * page + pos % page == slots).all()):
        return None
    return tables.to(torch.int32), lens.to(torch.int32)


def _paged_call(kernel, allocator, module_, query, key, value, scaling, sliding_window, softcap, kwargs):
    layer = module_.layer_idx
    k_pages, v_pages = allocator.get_cache_for_block_table(layer)  # [pages, page_size, kv_heads, head_dim]
    page = k_pages.shape[1]
    cu_q = kwargs["cu_seq_lens_q"].to(torch.int32)
    cu_k = _per_layer(kwargs["cu_seq_lens_k"], allocator).to(torch.int32)
    n_q = int(cu_q[-1])
    write = kwargs["write_index"][allocator.index][:n_q]
    k_new = key[0].transpose(0, 1)[:n_q]  # (1, Hk, T, D) -> (T, Hk, D)
    v_new = value[0].transpose(0, 1)[:n_q]
    kernel.reshape_and_cache_flash(k_new, v_new, k_pages, v_pages, write.long(), "auto", 1.0, 1.0)
    read = kwargs["read_index"][allocator.index] if kwargs.get("read_index") else None
    if read is None or read.numel() == 0:  # nothing cached before: the KV are exactly the new tokens
        read, cu_k = write, cu_q
    built = block_tables_from_slots(read, cu_k.cpu(), page)
    if built is None:
        return None
    tables, seq_lens = built
    q = query[0].transpose(0, 1)[:n_q].contiguous()  # (total_q, Hq, D)
    out = torch.zeros(query.shape[2], query.shape[1], query.shape[3], dtype=query.dtype, device=query.device)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    window_left = sliding_window - 1 if sliding_window else -1
    kernel.paged_attention_varlen(out[:n_q], q, k_pages, v_pages, cu_q, seq_lens.to(q.device),
                                  tables.to(q.device), scale, causal=True, window_left=window_left,
                                  softcap=float(softcap or 0.0))
    return out.unsqueeze(0)  # (1, total_q, Hq, D)
