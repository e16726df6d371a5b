"""kv-cache helpers shared by both devices: validation, in-place append of new k/v, and (CPU) gathering the
cache into packed varlen form.

Cache layouts: contiguous ``(batch, cache_len, heads_k, head_dim)``, or paged ``(num_pages, page_size, heads_k,
head_dim)`` with ``block_table (batch, pages_per_seq)`` int32 naming the page of each page-sized slice of a
sequence. ``cache_seqlens (batch,)`` int32 counts the tokens already cached; new ``k/v (batch, seqlen_new, heads_k,
head_dim)`` are written at ``cache_seqlens`` and attention covers ``cache_seqlens + seqlen_new`` keys.
"""

import torch

from . import _checks

WHO = "flash_attn_with_kvcache"


def check_shapes(q, k_cache, v_cache, k, v, cache_seqlens, block_table, dtypes, head_dims):
    """Cheap checks; returns cache_seqlens as a (batch,) int32 tensor on q's device (None = full cache)."""
    _checks.tensor(WHO, "q", q, 4, "(batch, seqlen_q, heads, head_dim)")
    layout = "(num_pages, page_size, heads_k, head_dim)" if block_table is not None else \
        "(batch, cache_len, heads_k, head_dim)"
    _checks.tensor(WHO, "k_cache", k_cache, 4, layout)
    _checks.tensor(WHO, "v_cache", v_cache, 4, layout)
    if k_cache.shape != v_cache.shape:
        _checks.fail(WHO, f"k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} differ in shape")
    _checks.same_device(WHO, q=q, k_cache=k_cache, v_cache=v_cache, k=k, v=v, cache_seqlens=cache_seqlens,
                        block_table=block_table)
    _checks.qkv_common(WHO, q, k_cache, v_cache, 2, dtypes, head_dims)
    b = q.shape[0]
    if (k is None) != (v is None):
        _checks.fail(WHO, "pass both k and v (new tokens to append) or neither")
    if k is not None:
        for n, t in (("k", k), ("v", v)):
            _checks.tensor(WHO, n, t, 4, "(batch, seqlen_new, heads_k, head_dim)")
            if t.shape[0] != b or t.shape[2:] != k_cache.shape[2:] or t.shape != k.shape or t.dtype != q.dtype:
                _checks.fail(WHO, f"{n} has shape {tuple(t.shape)} {t.dtype}; expected (batch={b}, seqlen_new, "
                                  f"{k_cache.shape[2]}, {k_cache.shape[3]}) {q.dtype}, the same for k and v")
        if cache_seqlens is None:
            _checks.fail(WHO, "appending k/v needs cache_seqlens (where each sequence's new tokens go)")
    if block_table is not None:
        if not isinstance(block_table, torch.Tensor) or block_table.dtype != torch.int32 or block_table.dim() != 2 \
                or block_table.shape[0] != b:
            _checks.fail(WHO, f"block_table must be int32 (batch={b}, pages_per_seq), got "
                              f"{getattr(block_table, 'dtype', None)} {tuple(getattr(block_table, 'shape', ()))}")
    elif k_cache.shape[0] != b:
        _checks.fail(WHO, f"k_cache has batch {k_cache.shape[0]} but q has {b} (cache_batch_idx is not supported)")
    if cache_seqlens is None:
        return None
    if isinstance(cache_seqlens, int):
        return torch.full((b,), cache_seqlens, dtype=torch.int32, device=q.device)
    if not isinstance(cache_seqlens, torch.Tensor) or cache_seqlens.dim() != 1 or cache_seqlens.shape[0] != b \
            or cache_seqlens.dtype not in (torch.int32, torch.int64):
        _checks.fail(WHO, f"cache_seqlens must be an int or an int32 tensor (batch={b},), got "
                          f"{getattr(cache_seqlens, 'dtype', type(cache_seqlens).__name__)} "
                          f"{tuple(getattr(cache_seqlens, 'shape', ()))}")
    return cache_seqlens.to(torch.int32)


def capacity(k_cache, block_table) -> int:
    return block_table.shape[1] * k_cache.shape[1] if block_table is not None else k_cache.shape[1]


def check_values(k_cache, cache_seqlens, s_new: int, block_table):
    """One device->host copy: lengths fit the cache, and every page a sequence uses exists."""
    cap = capacity(k_cache, block_table)
    lens = cache_seqlens.to(torch.int64) + s_new
    bad_len = (cache_seqlens < 0) | (lens > cap)
    flags = [bad_len.any()]
    if block_table is not None:
        page = k_cache.shape[1]
        used = torch.arange(block_table.shape[1], device=lens.device)[None, :] < ((lens + page - 1) // page)[:, None]
        flags.append((used & ((block_table < 0) | (block_table >= k_cache.shape[0]))).any())
    flags = torch.stack(flags).tolist()
    if flags[0]:
        i = int(bad_len.nonzero()[0, 0])
        _checks.fail(WHO, f"sequence {i}: cache_seqlens={int(cache_seqlens[i])} + {s_new} new tokens does not fit "
                          f"the cache of {cap} tokens per sequence (or is negative)")
    if len(flags) > 1 and flags[1]:
        _checks.fail(WHO, f"block_table names pages outside k_cache's {k_cache.shape[0]} pages (valid: 0.."
                          f"{k_cache.shape[0] - 1}) for tokens a sequence uses")


def _positions(k_cache, cache_seqlens, s_new: int, block_table):
    """(page_or_batch index, slot) of new token t of sequence b, each (batch, s_new)."""
    b = cache_seqlens.shape[0]
    pos = cache_seqlens.to(torch.int64)[:, None] + torch.arange(s_new, device=cache_seqlens.device)[None, :]
    if block_table is None:
        return torch.arange(b, device=pos.device)[:, None].expand(b, s_new), pos
    page = k_cache.shape[1]
    return block_table.to(torch.int64).gather(1, pos // page), pos % page


def append(k_cache, v_cache, k, v, cache_seqlens, block_table):
    """Writes k/v into the caches in place."""
    if k is None or k.shape[1] == 0:
        return
    rows, slots = _positions(k_cache, cache_seqlens, k.shape[1], block_table)
    k_cache[rows, slots] = k
    v_cache[rows, slots] = v


def gather_packed(k_cache, v_cache, seqlens, block_table):
    """(CPU) the cached keys of every sequence packed back to back -> (k, v, cu_seqlens_k, max_seqlen_k)."""
    lens = seqlens.to(torch.int64)
    cu = torch.nn.functional.pad(torch.cumsum(lens, 0), (1, 0))
    total = int(cu[-1])
    seq = torch.repeat_interleave(torch.arange(lens.shape[0]), lens)
    j = torch.arange(total) - cu[:-1][seq]
    if block_table is None:
        rows, slots = seq, j
    else:
        page = k_cache.shape[1]
        rows, slots = block_table.to(torch.int64)[seq, j // page], j % page
    return (k_cache[rows, slots], v_cache[rows, slots], cu.to(torch.int32),
            int(lens.max()) if lens.numel() else 0)
