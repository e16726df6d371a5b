"""Random paged-cache scenarios and a float64 gather-then-softmax reference (shared by the CPU tests and the GPU
check in scripts/bench_decode.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Scenario:
    keys: list  # per sequence: float32 [seq_len, kv_heads, head_size] (the values written, before any fp8 rounding)
    values: list
    block_tables: torch.Tensor  # int32 [num_seqs, max_blocks]
    seq_lens: torch.Tensor  # int32 [num_seqs]
    slot_mapping: torch.Tensor  # int64 [total_tokens]: where each token of keys/values goes
    num_blocks: int


def make_scenario(seq_lens: list[int], kv_heads: int, head_size: int, block_size: int, *, shared_prefix: int = 0,
                  extra_blocks: int = 7, pad_value: int = -1, generator=None) -> Scenario:
    """Random non-contiguous block tables: blocks drawn from a shuffled pool, the first ``shared_prefix`` full
    blocks shared by every sequence (prefix caching), last blocks partly filled, table padding = ``pad_value``."""
    g = generator
    nseq = len(seq_lens)
    need = [(n + block_size - 1) // block_size for n in seq_lens]
    shared = min([shared_prefix] + [n // block_size for n in seq_lens]) if shared_prefix else 0
    own = sum(n - shared for n in need)
    num_blocks = shared + own + extra_blocks
    perm = torch.randperm(num_blocks, generator=g).tolist()
    shared_ids, pool = perm[:shared], perm[shared:]
    max_blocks = max(need + [1]) + 2
    tables = torch.full((nseq, max_blocks), pad_value, dtype=torch.int32)
    keys, values, slots, written = [], [], [], {}
    prefix_k = torch.randn(shared * block_size, kv_heads, head_size, generator=g)
    prefix_v = torch.randn(shared * block_size, kv_heads, head_size, generator=g)
    for i, n in enumerate(seq_lens):
        ids = shared_ids + [pool.pop() for _ in range(need[i] - shared)]
        tables[i, :len(ids)] = torch.tensor(ids, dtype=torch.int32)
        k = torch.randn(n, kv_heads, head_size, generator=g)
        v = torch.randn(n, kv_heads, head_size, generator=g)
        k[: shared * block_size] = prefix_k
        v[: shared * block_size] = prefix_v
        keys.append(k)
        values.append(v)
        for t in range(n):
            slot = ids[t // block_size] * block_size + t % block_size
            if slot not in written:  # shared prefix slots are written once
                written[slot] = True
                slots.append((slot, i, t))
    order = torch.tensor([s for s, _, _ in slots], dtype=torch.int64)
    sc = Scenario(keys, values, tables, torch.tensor(seq_lens, dtype=torch.int32), order, num_blocks)
    sc._token_of_slot = [(i, t) for _, i, t in slots]
    return sc


def tokens_in_slot_order(sc: Scenario):
    k = torch.stack([sc.keys[i][t] for i, t in sc._token_of_slot]) if sc._token_of_slot else None
    v = torch.stack([sc.values[i][t] for i, t in sc._token_of_slot]) if sc._token_of_slot else None
    return k, v


def vllm_caches(sc: Scenario, block_size: int, dtype, device="cpu", fp8=False, fill=float("nan")):
    kv_heads, head_size = sc.keys[0].shape[1:]
    storage = torch.uint8 if fp8 else dtype
    x = 16 // torch.empty((), dtype=storage).element_size()
    kc = torch.empty(sc.num_blocks, kv_heads, head_size // x, block_size, x, dtype=storage, device=device)
    vc = torch.empty(sc.num_blocks, kv_heads, head_size, block_size, dtype=storage, device=device)
    _poison(kc, fill)
    _poison(vc, fill)
    return kc, vc


def flash_caches(sc: Scenario, block_size: int, dtype, device="cpu", fp8=False, fill=float("nan")):
    kv_heads, head_size = sc.keys[0].shape[1:]
    storage = torch.uint8 if fp8 else dtype
    kc = torch.empty(sc.num_blocks, block_size, kv_heads, head_size, dtype=storage, device=device)
    vc = torch.empty_like(kc)
    _poison(kc, fill)
    _poison(vc, fill)
    return kc, vc


def _poison(t, fill):
    if t.dtype == torch.uint8:
        t.fill_(0x7F)  # e4m3 NaN
    else:
        t.fill_(fill)


def fp8_round(x: torch.Tensor, scale: float) -> torch.Tensor:
    """What an fp8 e4m3 cache gives back for x: round(x / scale) * scale."""
    return (x / scale).clamp(-448, 448).to(torch.float8_e4m3fn).double() * scale


def decode_ref(query, sc: Scenario, scale: float, *, alibi=None, kv_round=None, window_left: int = -1):
    """float64 softmax(q K^T * scale + alibi) V per sequence from the contiguous K/V (gather-then-softmax)."""
    q = query.double()
    nseq, hq, d = q.shape
    out = torch.zeros(nseq, hq, d, dtype=torch.float64)
    for i in range(nseq):
        n = int(sc.seq_lens[i])
        if n == 0:
            continue
        k, v = sc.keys[i].double(), sc.values[i].double()
        if kv_round is not None:
            k, v = kv_round[0](k), kv_round[1](v)
        hk = k.shape[1]
        k = k.repeat_interleave(hq // hk, 1)  # [n, hq, d]
        v = v.repeat_interleave(hq // hk, 1)
        s = torch.einsum("hd,nhd->hn", q[i], k) * scale
        if alibi is not None:
            s = s + alibi.double()[:, None] * (torch.arange(n) - n + 1).double()[None, :]
        if window_left >= 0:
            s[:, : max(0, n - 1 - window_left)] = float("-inf")
        out[i] = torch.einsum("hn,nhd->hd", torch.softmax(s, -1), v)
    return out
