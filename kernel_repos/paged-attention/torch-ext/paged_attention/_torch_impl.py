"""The torch-ops path (CPU, and CUDA when Triton is missing): gather each sequence's pages into a contiguous
(heads, tokens, head_size) view, then matmul + softmax in float32.

Decode computes per-partition partial results (max logit, exp-sum, normalised partial output) and merges them
exactly as the split-K GPU kernel does, so the merge arithmetic is tested on CPU too.
"""

from __future__ import annotations

import math

import torch

from ._validate import CacheGeometry

_CHUNK_SEQS = 16  # sequences gathered at once: bounds the temporary copy of the pages


def dequant(cache: torch.Tensor, fp8: bool, scale: float) -> torch.Tensor:
    if not fp8:
        return cache.float()
    if cache.dtype == torch.uint8:
        cache = cache.view(torch.float8_e4m3fn)
    return cache.float() * scale


def gather(key_cache, value_cache, geom: CacheGeometry, tables: torch.Tensor, num_tokens: int,
           k_scale: float, v_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Pages of ``tables`` [n, nb] -> K, V float32 [n, kv_heads, nb * block_size, head_size], cut to num_tokens.
    Entries of ``tables`` past what a sequence uses must already be clamped to a valid block."""
    n, nb = tables.shape
    idx = tables.long()
    if geom.layout == "vllm":
        k = key_cache[idx]  # [n, nb, H, D/x, bs, x]
        k = k.permute(0, 2, 1, 4, 3, 5).reshape(n, geom.num_kv_heads, nb * geom.block_size, geom.head_size)
        v = value_cache[idx]  # [n, nb, H, D, bs]
        v = v.permute(0, 2, 1, 4, 3).reshape(n, geom.num_kv_heads, nb * geom.block_size, geom.head_size)
    else:
        k = key_cache[idx].permute(0, 3, 1, 2, 4).reshape(n, geom.num_kv_heads, nb * geom.block_size, -1)
        v = value_cache[idx].permute(0, 3, 1, 2, 4).reshape(n, geom.num_kv_heads, nb * geom.block_size, -1)
    k, v = k[:, :, :num_tokens], v[:, :, :num_tokens]
    return dequant(k, geom.fp8, k_scale), dequant(v, geom.fp8, v_scale)


def _clamped_tables(block_tables, seq_lens, block_size, nb):
    tables = block_tables[:, :nb].long()
    used = torch.arange(nb, device=tables.device)[None, :] < ((seq_lens.long() + block_size - 1) // block_size)[:, None]
    return torch.where(used, tables, torch.zeros_like(tables))  # padding entries are never read


def decode(out, query, key_cache, value_cache, geom: CacheGeometry, scale: float, block_tables, seq_lens,
           max_seq_len: int, alibi_slopes, k_scale: float, v_scale: float, partition_size: int,
           partials: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> None:
    """One query token per sequence. ``partials`` = (exp_sums, max_logits, tmp_out) of paged_attention_v2, filled
    like vLLM fills them (natural-log max logits, exp sums, per-partition normalised outputs)."""
    num_seqs, hq, d = query.shape
    hk = geom.num_kv_heads
    g = hq // hk
    if num_seqs == 0:
        return
    bs = geom.block_size
    max_len = max(int(max_seq_len), 1)
    nb = (max_len + bs - 1) // bs
    nparts = (max_len + partition_size - 1) // partition_size
    slopes = alibi_slopes.float().view(hk, g, 1) if alibi_slopes is not None else None
    for s0 in range(0, num_seqs, _CHUNK_SEQS):
        s1 = min(num_seqs, s0 + _CHUNK_SEQS)
        lens = seq_lens[s0:s1].long()
        tables = _clamped_tables(block_tables[s0:s1], lens, bs, nb)
        k, v = gather(key_cache, value_cache, geom, tables, max_len, k_scale, v_scale)  # [n, hk, L, d]
        q = query[s0:s1].float().view(-1, hk, g, d)
        logits = torch.matmul(q, k.transpose(-1, -2)) * scale  # [n, hk, g, L]
        pos = torch.arange(max_len, device=q.device)
        if slopes is not None:
            logits = logits + slopes * (pos - lens.view(-1, 1, 1, 1) + 1).float()
        valid = pos[None, :] < lens[:, None]  # [n, L]
        logits = logits.masked_fill(~valid[:, None, None, :], float("-inf"))
        v = v.masked_fill(~valid[:, None, :, None], 0.0)  # unwritten slots may hold anything (NaN): 0 * NaN
        # split the context into partitions: partial softmax per partition, then the exact merge
        pad = nparts * partition_size - max_len
        lp = torch.nn.functional.pad(logits, (0, pad), value=float("-inf")).unflatten(-1, (nparts, partition_size))
        vp = torch.nn.functional.pad(v, (0, 0, 0, pad)).unflatten(2, (nparts, partition_size))  # [n,hk,P,T,d]
        m = lp.amax(-1)  # [n, hk, g, P]
        m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        p = torch.exp(lp - m_safe[..., None])
        l = p.sum(-1)  # [n, hk, g, P]
        acc = torch.einsum("nhgpt,nhptd->nhgpd", p, vp)
        part_out = acc / torch.where(l > 0, l, torch.ones_like(l))[..., None]
        big_m = m.amax(-1, keepdim=True)
        big_m = torch.where(torch.isfinite(big_m), big_m, torch.zeros_like(big_m))
        w = l * torch.exp(m_safe - big_m).masked_fill(~torch.isfinite(m), 0.0)
        denom = w.sum(-1, keepdim=True)
        res = (w[..., None] * part_out).sum(-2) / torch.where(denom > 0, denom, torch.ones_like(denom))
        out[s0:s1] = res.reshape(s1 - s0, hq, d).to(out.dtype)
        if partials is not None:
            exp_sums, max_logits, tmp_out = partials
            exp_sums[s0:s1, :, :nparts] = l.reshape(s1 - s0, hq, nparts)
            max_logits[s0:s1, :, :nparts] = m.reshape(s1 - s0, hq, nparts)
            tmp_out[s0:s1, :, :nparts] = part_out.reshape(s1 - s0, hq, nparts, d).to(tmp_out.dtype)


def varlen(out, query, key_cache, value_cache, geom: CacheGeometry, cu_seqlens_q, seq_lens, block_tables,
           scale: float, causal: bool, window_left: int, softcap: float, k_scale: float, v_scale: float) -> None:
    """Several query tokens per sequence (prefill chunks, speculative decode): the queries of sequence i are its
    last q_len tokens (bottom-right aligned causal mask), ``window_left`` >= 0 limits how far back they look."""
    cu = cu_seqlens_q.detach().cpu().long().tolist()
    lens = seq_lens.detach().cpu().long().tolist()
    hq, d = query.shape[1], query.shape[2]
    hk = geom.num_kv_heads
    bs = geom.block_size
    for i, kv_len in enumerate(lens):
        q0, q1 = cu[i], cu[i + 1]
        if q1 == q0:
            continue
        if kv_len == 0:
            out[q0:q1] = 0
            continue
        nb = (kv_len + bs - 1) // bs
        k, v = gather(key_cache, value_cache, geom, block_tables[i:i + 1, :nb], kv_len, k_scale, v_scale)
        q = query[q0:q1].float().transpose(0, 1).unflatten(0, (hk, hq // hk))  # [hk, g, sq, d]
        s = torch.matmul(q, k[0].unsqueeze(1).transpose(-1, -2)) * scale  # [hk, g, sq, kv]
        if softcap > 0:
            s = softcap * torch.tanh(s / softcap)
        sq = q1 - q0
        qi = torch.arange(sq, device=s.device)[:, None] + (kv_len - sq)
        kj = torch.arange(kv_len, device=s.device)[None, :]
        allowed = torch.ones(sq, kv_len, dtype=torch.bool, device=s.device)
        if causal:
            allowed &= kj <= qi
        if window_left >= 0:
            allowed &= kj >= qi - window_left
        s = s.masked_fill(~allowed, float("-inf"))
        p = torch.softmax(s, -1).nan_to_num(0.0)
        o = torch.matmul(p, v[0].unsqueeze(1))  # [hk, g, sq, d]
        out[q0:q1] = o.flatten(0, 1).transpose(0, 1).to(out.dtype)


def quantize(x: torch.Tensor, cache: torch.Tensor, fp8: bool, scale: float) -> torch.Tensor:
    """Values as stored in ``cache`` (fp8 e4m3: x / scale, saturated to +-448, in the cache's storage dtype)."""
    if not fp8:
        return x.to(cache.dtype)
    q = (x.float() / scale).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
    return q.view(torch.uint8) if cache.dtype == torch.uint8 else q


def write_slots(key, value, key_cache, value_cache, geom: CacheGeometry, slot_mapping, k_scale, v_scale) -> None:
    slots = slot_mapping.long()
    keep = slots >= 0
    if not bool(keep.all()):
        key, value, slots = key[keep], value[keep], slots[keep]
    if slots.numel() == 0:
        return
    blk = slots // geom.block_size
    off = slots % geom.block_size
    k = quantize(key, key_cache, geom.fp8, k_scale)
    v = quantize(value, value_cache, geom.fp8, v_scale)
    if geom.layout == "vllm":
        x = key_cache.shape[-1]
        key_cache[blk, :, :, off, :] = k.reshape(k.shape[0], geom.num_kv_heads, geom.head_size // x, x)
        value_cache[blk, :, :, off] = v
    else:
        key_cache[blk, off] = k
        value_cache[blk, off] = v


def num_partitions(max_seq_len: int, partition_size: int) -> int:
    return max(1, math.ceil(max_seq_len / partition_size))
