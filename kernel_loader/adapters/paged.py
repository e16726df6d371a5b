"""A paged-attention kernel module (vLLM-style API + a varlen entry) -> transformers' continuous-batching
attention; everything else about the call goes to SDPA."""

from __future__ import annotations

from types import ModuleType
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import KernelUnavailable
from .call import UnknownAttentionArguments, is_paged_cache, normalize_paged, score_modifiers
from .capabilities import Capabilities
from .notes import once
from .sdpa import floor_attention, sdpa_attention, torch_sdpa


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
    # The paged entry runs on the variant's own device; dtypes are what the module declares.
    caps = Capabilities.of(module, device_type, default_dtypes=(torch.float16, torch.bfloat16, torch.float32))
    dtypes = caps.dtypes_on(device_type)

    def fallback(why, module_, query, key, value, attention_mask, **kwargs):
        once(f"{label}:paged:{why}", f"{label}: {why}")
        return sdpa_attention(module_, query, key, value, attention_mask, **kwargs)

    def attention(module_, query, key, value, attention_mask, scaling=None, dropout=0.0, sliding_window=None,
                  softcap=None, cache=None, **kwargs):
        batching = cache is not None or "cu_seq_lens_k" in kwargs or "write_index" in kwargs
        if not batching:  # a plain forward: registered with the sdpa mask format, transformers' sdpa honours it
            kw = dict(kwargs, scaling=scaling, dropout=dropout)
            if sliding_window is not None:
                kw["sliding_window"] = sliding_window
            if softcap is not None:
                kw["softcap"] = softcap
            return fallback("no paged cache (continuous batching) in this call", module_, query, key, value,
                            attention_mask, **kw)
        kwargs.pop("is_causal", None)  # continuous batching is causal; the paged kernel is bottom-right causal
        mods = score_modifiers(label, module_, kwargs)
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        why = None
        if query.device.type != device_type or query.dtype not in dtypes or key.dtype != query.dtype:
            why = f"tensors {query.dtype} on {query.device.type}"
        elif dropout and getattr(module_, "training", False):
            why = "attention dropout in training"
        elif mods.any:
            why = f"{', '.join(mods.reasons)} (the kernel cannot apply it)"
        if why is None and is_paged_cache(cache):
            # transformers 5.22/5.23: the cache arrives unwritten; the kernel writes the new tokens into its pages
            allocator = cache.layer_to_allocator[module_.layer_idx]
            if not getattr(allocator, "supports_block_table", False):
                why = f"cache group {getattr(allocator, 'layer_type', '?')} is not paged by whole blocks"
            elif kwargs.get("block_table") is not None:
                why = "transformers' block-table fast path (flash_attn_with_kvcache) is not this kernel's entry"
            else:
                out = _paged_call(module, allocator, module_, query, key, value, scaling, sliding_window, softcap,
                                  kwargs)
                if out is not None:
                    return out, None
                why = "slot indices that are not whole pages in order"
        if cache is not None:
            kwargs["cache"] = cache
        # the cache is written by transformers (here for 5.22/5.23, by the layer since 5.24); key/value are then
        # past + new per sequence, cu_seq_lens_k this layer's
        key, value = normalize_paged(label, module_, key, value, kwargs)
        if kwargs.get("block_table") is not None:
            raise UnknownAttentionArguments(f"{label}: continuous batching's block-table decode path without a "
                                            "cache object is not an entry of this kernel")
        window_left = sliding_window - 1 if sliding_window else -1
        if why is None:
            return _gathered_call(module, query, key, value, kwargs, scale, window_left, softcap), None
        once(f"{label}:paged:{why}", f"{label}: {why}")
        out = floor_attention(query, key, value, None, kwargs, scale=scale, causal=True, window=(window_left, 0),
                              softcap=float(softcap or 0.0), mods=mods)
        return out.transpose(1, 2).contiguous(), None

    def sdpa_like(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        once(f"{label}:sdpa", f"{label}: a paged kernel has no contiguous-cache entry")
        return torch_sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)

    attention.__name__ = attention.__qualname__ = f"kernel_loader_paged_attention[{label}]"
    sdpa_like.__name__ = sdpa_like.__qualname__ = f"kernel_loader_sdpa[{label}]"
    return attention, sdpa_like, "sdpa"


def _gathered_call(kernel, query, key, value, kwargs, scale, window_left, softcap):
    """Continuous batching after transformers wrote the paged cache (``cache.update``): key/value hold each
    sequence's past + new tokens back to back (``cu_seq_lens_k``). They are laid into pages of ``GATHERED_PAGE``
    tokens, one run of pages per sequence, and the kernel's varlen entry attends over them (decode steps go to its
    decode kernel). (1, total_q, Hq, D) out."""
    cu_q = kwargs["cu_seq_lens_q"].to(torch.int32)
    cu_k = kwargs["cu_seq_lens_k"].to(torch.int32)
    n_q = int(cu_q[-1])
    lens = cu_k.diff().long()
    page = GATHERED_PAGE
    pages_per_seq = (lens + page - 1) // page
    first_page = F.pad(torch.cumsum(pages_per_seq, 0), (1, 0))
    total_pages = max(int(first_page[-1]), 1)
    n = lens.numel()
    seg = torch.repeat_interleave(torch.arange(n, device=lens.device), lens)
    pos = torch.arange(int(lens.sum()), device=lens.device) - cu_k[:-1].long()[seg]
    slot = first_page[:-1][seg] * page + pos
    hk, d = key.shape[1], key.shape[3]
    k_pages = key.new_zeros(total_pages * page, hk, d)
    v_pages = value.new_zeros(total_pages * page, hk, value.shape[3])
    k_pages[slot.to(key.device)] = key[0, :, :int(cu_k[-1])].transpose(0, 1)
    v_pages[slot.to(key.device)] = value[0, :, :int(cu_k[-1])].transpose(0, 1)
    max_pages = max(int(pages_per_seq.max()) if n else 1, 1)
    tables = first_page[:-1, None] + torch.arange(max_pages, device=lens.device)[None]
    tables = torch.minimum(tables, torch.tensor(total_pages - 1)).to(torch.int32)
    q = query[0].transpose(0, 1)[:n_q].contiguous()
    out = torch.zeros(query.shape[2], query.shape[1], query.shape[3], dtype=query.dtype, device=query.device)
    kernel.paged_attention_varlen(out[:n_q], q, k_pages.view(total_pages, page, hk, d),
                                  v_pages.view(total_pages, page, hk, -1), cu_q, lens.to(torch.int32).to(q.device),
                                  tables.to(q.device), scale, causal=True, window_left=window_left,
                                  softcap=float(softcap or 0.0))
    return out.unsqueeze(0)


GATHERED_PAGE = 16


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
