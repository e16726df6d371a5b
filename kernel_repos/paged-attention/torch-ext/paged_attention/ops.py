"""The vLLM paged-attention API (argument order and cache layouts as vLLM's ``_custom_ops``), plus a flash-layout
decode and a varlen (prefill / multi-token) call used by transformers' continuous batching.

Dispatch: CUDA tensors with float16/bfloat16 queries (keys, for the cache writes) run the precompiled cubins in the
AOT variants (``_aot_dispatch``; decode: head sizes that are multiples of 16), the Triton kernels in the noarch
torch-cuda variant (``_triton_impl``); everything else runs the torch path (``_torch_impl``). Every call checks
shapes and dtypes on the host; index values are checked on the device by the CUDA kernels (mode "device", the
default), or on the host (``_validate``).
"""

from __future__ import annotations

import os

import torch

from . import _aot_dispatch, _device_check, _torch_impl
from ._validate import (
    PARTITION_SIZE, check_kv_tokens, check_query, check_same_device, check_slots, check_tables, fail,
    flash_geometry, scale_value, validation_mode, vllm_geometry,
)

_BLOCKSPARSE_DEFAULTS = (0, 0, 64, 0)
_triton_ok: bool | None = None
_tuning: dict | None = None  # benchmark hook: {"tile", "num_warps", "num_stages"}


def _use_triton(query: torch.Tensor) -> bool:
    global _triton_ok
    if query.dtype not in (torch.float16, torch.bfloat16):
        return False
    # CPU tensors take the Triton kernels only under Triton's interpreter, when asked (tests of the GPU code)
    if query.device.type != "cuda" and not (query.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"
                                            and os.environ.get("PAGED_ATTENTION_CPU_IMPL") == "triton"):
        return False
    if _triton_ok is None:
        try:
            from . import _triton_impl  # noqa: F401
            _triton_ok = True
        except ImportError:
            _triton_ok = False
    return _triton_ok


def backend_for(query: torch.Tensor) -> str:
    """'aot' (precompiled cubins), 'triton' or 'torch': which implementation decode on a query of this device, dtype
    and head size goes to (flash caches whose strides are not multiples of 16 elements run the torch path)."""
    d = query.shape[-1]
    if _aot_dispatch.table_for(query) is not None and d % 16 == 0 and 32 <= d <= 256:
        return "aot"
    return "triton" if _use_triton(query) else "torch"


def _check_alibi(alibi_slopes, num_heads: int, device) -> None:
    if alibi_slopes is None:
        return
    if alibi_slopes.shape != (num_heads,) or not alibi_slopes.is_floating_point() or alibi_slopes.device != device:
        fail(f"alibi_slopes must be a float tensor [num_heads={num_heads}] on {device}, got "
             f"{tuple(alibi_slopes.shape)} {alibi_slopes.dtype} on {alibi_slopes.device}")


def _check_blocksparse(tp_rank, blocksparse) -> None:
    if tuple(blocksparse) != _BLOCKSPARSE_DEFAULTS:
        raise NotImplementedError("paged_attention: block-sparse attention (blocksparse_* arguments) is not "
                                  "implemented; leave them at their defaults")


def _decode(out, query, key_cache, value_cache, geom, num_kv_heads, scale, block_tables, seq_lens, max_seq_len,
            alibi_slopes, k_scale, v_scale, partition_size, partials):
    check_query(query, out, geom, num_kv_heads)
    check_same_device(("query", query), ("key_cache", key_cache), ("block_tables", block_tables),
                      ("seq_lens", seq_lens), ("out", out))
    tbl = _aot_dispatch.table_for(query)
    aot_key = _aot_dispatch.decode_key(query, key_cache, value_cache, geom) if tbl is not None else None
    triton_path = aot_key is None and _use_triton(query)
    on_device = (aot_key is not None or triton_path) and validation_mode() == "device"  # kernels check: no sync
    check_tables(block_tables, seq_lens, query.shape[0], geom, max_seq_len, values=not on_device)
    _check_alibi(alibi_slopes, query.shape[1], query.device)
    ks, vs = scale_value(k_scale, "k_scale"), scale_value(v_scale, "v_scale")
    if on_device:
        _device_check.raise_pending(query.device)  # an earlier call's report (no sync)
    if aot_key is not None:
        _aot_dispatch.decode(tbl, aot_key, out, query, key_cache, value_cache, geom, float(scale), block_tables,
                             seq_lens, max_seq_len, alibi_slopes, ks, vs, partition_size, partials,
                             mode=validation_mode())
    elif triton_path:
        from . import _triton_impl

        _triton_impl.decode(out, query, key_cache, value_cache, geom, float(scale), block_tables, seq_lens,
                            max_seq_len, alibi_slopes, ks, vs, partition_size, partials, _tuning, check=on_device)
    else:
        _torch_impl.decode(out, query, key_cache, value_cache, geom, float(scale), block_tables, seq_lens,
                           max_seq_len, alibi_slopes, ks, vs, partition_size or PARTITION_SIZE, partials)


def paged_attention_v1(out: torch.Tensor, query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                       num_kv_heads: int, scale: float, block_tables: torch.Tensor, seq_lens: torch.Tensor,
                       block_size: int, max_seq_len: int, alibi_slopes: torch.Tensor | None, kv_cache_dtype: str,
                       k_scale, v_scale, tp_rank: int = 0, blocksparse_local_blocks: int = 0,
                       blocksparse_vert_stride: int = 0, blocksparse_block_size: int = 64,
                       blocksparse_head_sliding_step: int = 0) -> None:
    """Decode: ``out[i] = softmax(query[i] . K_i^T * scale + alibi) V_i`` over the first ``seq_lens[i]`` tokens of
    sequence i's pages ``block_tables[i]``. vLLM layout caches. On CUDA the context is still split internally
    when that fills the GPU better (v1 only fixes the API, not the schedule)."""
    _check_blocksparse(tp_rank, (blocksparse_local_blocks, blocksparse_vert_stride, blocksparse_block_size,
                                 blocksparse_head_sliding_step))
    geom = vllm_geometry(key_cache, value_cache, kv_cache_dtype, query.dtype)
    if block_size != geom.block_size:
        fail(f"block_size={block_size} but the caches have block_size {geom.block_size}")
    _decode(out, query, key_cache, value_cache, geom, num_kv_heads, scale, block_tables, seq_lens, max_seq_len,
            alibi_slopes, k_scale, v_scale, None, None)


def paged_attention_v2(out: torch.Tensor, exp_sums: torch.Tensor, max_logits: torch.Tensor, tmp_out: torch.Tensor,
                       query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, num_kv_heads: int,
                       scale: float, block_tables: torch.Tensor, seq_lens: torch.Tensor, block_size: int,
                       max_seq_len: int, alibi_slopes: torch.Tensor | None, kv_cache_dtype: str, k_scale, v_scale,
                       tp_rank: int = 0, blocksparse_local_blocks: int = 0, blocksparse_vert_stride: int = 0,
                       blocksparse_block_size: int = 64, blocksparse_head_sliding_step: int = 0) -> None:
    """Decode split over the context in partitions of 512 tokens (vLLM's v2): ``exp_sums``/``max_logits``
    [num_seqs, num_heads, max_num_partitions] float32 and ``tmp_out`` [num_seqs, num_heads, max_num_partitions,
    head_size] receive the per-partition partials, then are merged into ``out``."""
    _check_blocksparse(tp_rank, (blocksparse_local_blocks, blocksparse_vert_stride, blocksparse_block_size,
                                 blocksparse_head_sliding_step))
    geom = vllm_geometry(key_cache, value_cache, kv_cache_dtype, query.dtype)
    if block_size != geom.block_size:
        fail(f"block_size={block_size} but the caches have block_size {geom.block_size}")
    s, h, d = query.shape if query.dim() == 3 else (0, 0, 0)
    need = _torch_impl.num_partitions(max_seq_len, PARTITION_SIZE)
    for name, t, shape in (("exp_sums", exp_sums, (s, h)), ("max_logits", max_logits, (s, h)),
                           ("tmp_out", tmp_out, (s, h))):
        if tuple(t.shape[:2]) != shape or t.shape[2] < need or t.device != query.device:
            fail(f"{name} must be [num_seqs={s}, num_heads={h}, max_num_partitions>={need}"
                 f"{', head_size=' + str(d) if name == 'tmp_out' else ''}] on {query.device} (partition size "
                 f"{PARTITION_SIZE}), got {tuple(t.shape)} on {t.device}")
    if exp_sums.dtype != torch.float32 or max_logits.dtype != torch.float32:
        fail("exp_sums and max_logits must be float32")
    if tmp_out.dim() != 4 or tmp_out.shape[3] != d or not tmp_out.is_floating_point():
        fail(f"tmp_out must be a float tensor [num_seqs, num_heads, max_num_partitions, head_size={d}]")
    if not (exp_sums.is_contiguous() and max_logits.is_contiguous() and tmp_out.is_contiguous()):
        fail("exp_sums, max_logits and tmp_out must be contiguous")
    _decode(out, query, key_cache, value_cache, geom, num_kv_heads, scale, block_tables, seq_lens, max_seq_len,
            alibi_slopes, k_scale, v_scale, PARTITION_SIZE, (exp_sums, max_logits, tmp_out))


def paged_attention_flash(out: torch.Tensor, query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                          block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float, max_seq_len: int | None = None,
                          alibi_slopes: torch.Tensor | None = None, kv_cache_dtype: str = "auto", k_scale=1.0,
                          v_scale=1.0) -> None:
    """Decode against flash-layout caches [num_blocks, block_size, num_kv_heads, head_size] (the layout of
    ``reshape_and_cache_flash`` and of transformers' paged cache). Any block size. Without ``max_seq_len`` the
    CUDA path (validation mode "device") plans for the block table's capacity instead of reading seq_lens (a sync);
    pass it when known so the context split fits the real lengths."""
    geom = flash_geometry(key_cache, value_cache, kv_cache_dtype, query.dtype)
    if max_seq_len is None:
        if backend_for(query) != "torch" and validation_mode() == "device":  # no sync: the table's capacity bounds it
            max_seq_len = block_tables.shape[1] * geom.block_size if block_tables.dim() == 2 else 0
        else:
            max_seq_len = int(seq_lens.max()) if seq_lens.numel() else 0
    _decode(out, query, key_cache, value_cache, geom, geom.num_kv_heads, scale, block_tables, seq_lens, max_seq_len,
            alibi_slopes, k_scale, v_scale, None, None)


def paged_attention_varlen(out: torch.Tensor, query: torch.Tensor, key_cache: torch.Tensor,
                           value_cache: torch.Tensor, cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor,
                           block_tables: torch.Tensor, scale: float, causal: bool = True, window_left: int = -1,
                           softcap: float = 0.0, kv_cache_dtype: str = "auto", k_scale=1.0, v_scale=1.0) -> None:
    """Several query tokens per sequence against flash-layout caches (the KV of the new tokens already written):
    ``query``/``out`` [total_q, num_heads, head_size], ``cu_seqlens_q`` [num_seqs + 1] int32, ``seq_lens``
    [num_seqs] (KV length including the new tokens). Queries are aligned to the end of their sequence (causal is
    bottom-right); ``window_left`` >= 0 keeps keys j >= i - window_left. When every sequence has one query token
    and no window/softcap applies, this is the decode kernel."""
    geom = flash_geometry(key_cache, value_cache, kv_cache_dtype, query.dtype)
    num_seqs = seq_lens.shape[0] if seq_lens.dim() == 1 else -1
    if cu_seqlens_q.dim() != 1 or cu_seqlens_q.shape[0] != num_seqs + 1:
        fail(f"cu_seqlens_q must be [num_seqs + 1 = {num_seqs + 1}], got shape {tuple(cu_seqlens_q.shape)}")
    if query.dim() != 3:
        fail(f"query must be [total_q, num_heads, head_size], got shape {tuple(query.shape)}")
    check_query(query, out, geom, geom.num_kv_heads)
    check_same_device(("query", query), ("key_cache", key_cache), ("block_tables", block_tables),
                      ("seq_lens", seq_lens), ("cu_seqlens_q", cu_seqlens_q), ("out", out))
    cu = cu_seqlens_q.detach().cpu().long()
    q_lens = cu.diff()
    if int(cu[0]) != 0 or bool((q_lens < 0).any()) or int(cu[-1]) != query.shape[0]:
        fail(f"cu_seqlens_q must start at 0, never decrease and end at total_q = {query.shape[0]}; got "
             f"{cu.tolist()[:8]}{'...' if cu.numel() > 8 else ''}")
    check_tables(block_tables, seq_lens, num_seqs, geom, None)
    lens = seq_lens.detach().cpu().long()
    if bool((q_lens > lens).any()):
        i = int((q_lens > lens).nonzero()[0])
        fail(f"sequence {i} has {int(q_lens[i])} query tokens but seq_lens[{i}] = {int(lens[i])}; the KV length "
             "counts the new tokens too")
    ks, vs = scale_value(k_scale, "k_scale"), scale_value(v_scale, "v_scale")
    if num_seqs > 0 and bool((q_lens == 1).all()) and softcap == 0 and (window_left < 0 or
                                                                       int(lens.max()) <= window_left + 1):
        _decode(out, query, key_cache, value_cache, geom, geom.num_kv_heads, scale, block_tables, seq_lens,
                int(lens.max()), None, ks, vs, None, None)
        return
    _torch_impl.varlen(out, query, key_cache, value_cache, geom, cu_seqlens_q, seq_lens, block_tables, float(scale),
                       causal, int(window_left), float(softcap or 0.0), ks, vs)


# ------------------------------------------------------------------------------------------------- cache ops

def reshape_and_cache(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                      slot_mapping: torch.Tensor, kv_cache_dtype: str, k_scale, v_scale) -> None:
    """Write token i's key/value [num_tokens, num_kv_heads, head_size] into slot ``slot_mapping[i]`` (block =
    slot // block_size, offset = slot % block_size) of vLLM-layout caches; negative slots (padding) are skipped.
    fp8 caches store ``key / k_scale`` as e4m3."""
    geom = vllm_geometry(key_cache, value_cache, kv_cache_dtype, key.dtype if key.dim() == 3 else None)
    _cache_write(key, value, key_cache, value_cache, geom, slot_mapping, k_scale, v_scale)


def reshape_and_cache_flash(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                            value_cache: torch.Tensor, slot_mapping: torch.Tensor, kv_cache_dtype: str, k_scale,
                            v_scale) -> None:
    """As :func:`reshape_and_cache`, for flash-layout caches [num_blocks, block_size, num_kv_heads, head_size]."""
    geom = flash_geometry(key_cache, value_cache, kv_cache_dtype, key.dtype if key.dim() == 3 else None)
    _cache_write(key, value, key_cache, value_cache, geom, slot_mapping, k_scale, v_scale)


def _cache_write(key, value, key_cache, value_cache, geom, slot_mapping, k_scale, v_scale) -> None:
    check_kv_tokens(key, value, geom)
    check_same_device(("key", key), ("value", value), ("key_cache", key_cache), ("slot_mapping", slot_mapping))
    capturing = key.device.type == "cuda" and torch.cuda.is_current_stream_capturing()
    tbl = _aot_dispatch.table_for(key)
    aot_key = _aot_dispatch.cache_key(key, geom) if tbl is not None else None
    kernel = aot_key is not None or _use_triton(key)
    if not (capturing and kernel):  # under CUDA-graph capture the kernel's own range check is all there is
        check_slots(slot_mapping, key.shape[0], geom.num_blocks * geom.block_size)
    ks, vs = scale_value(k_scale, "k_scale"), scale_value(v_scale, "v_scale")
    on_device = kernel and validation_mode() == "device"
    if on_device:
        _device_check.raise_pending(key.device)
    if aot_key is not None:
        _aot_dispatch.write_slots(tbl, aot_key, key, value, key_cache, value_cache, geom, slot_mapping, ks, vs,
                                  mode=validation_mode())
    elif kernel:
        from . import _triton_impl

        _triton_impl.write_slots(key, value, key_cache, value_cache, geom, slot_mapping, ks, vs, check=on_device)
    else:
        _torch_impl.write_slots(key, value, key_cache, value_cache, geom, slot_mapping, ks, vs)


def _check_block_mapping(block_mapping: torch.Tensor, src_blocks: int, dst_blocks: int) -> torch.Tensor:
    if block_mapping.dim() != 2 or block_mapping.shape[1] != 2 or block_mapping.dtype not in (torch.int64,
                                                                                             torch.int32):
        fail(f"block_mapping must be an int64 tensor [num_pairs, 2] of (src, dst) block ids, got "
             f"{tuple(block_mapping.shape)} {block_mapping.dtype}")
    pairs = block_mapping.detach().to("cpu", torch.int64)
    for col, name, limit in ((0, "source", src_blocks), (1, "destination", dst_blocks)):
        bad = (pairs[:, col] < 0) | (pairs[:, col] >= limit)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            fail(f"block_mapping[{i}] {name} block {int(pairs[i, col])} is out of range (valid 0..{limit - 1})")
    return pairs


def copy_blocks(key_caches: list[torch.Tensor], value_caches: list[torch.Tensor],
                block_mapping: torch.Tensor) -> None:
    """For every layer's caches, copy block src -> dst for each (src, dst) row of ``block_mapping`` (all sources
    are read before any destination is written)."""
    if len(key_caches) != len(value_caches):
        fail(f"copy_blocks: {len(key_caches)} key caches but {len(value_caches)} value caches")
    for cache in list(key_caches) + list(value_caches):
        if cache.shape[0] != key_caches[0].shape[0] or cache.device != key_caches[0].device:
            fail("copy_blocks: every cache must have the same number of blocks and device")
    if not key_caches:
        return
    pairs = _check_block_mapping(block_mapping, key_caches[0].shape[0], key_caches[0].shape[0])
    src = pairs[:, 0].to(key_caches[0].device)
    dst = pairs[:, 1].to(key_caches[0].device)
    for cache in list(key_caches) + list(value_caches):
        cache.index_copy_(0, dst, cache.index_select(0, src))


def swap_blocks(src: torch.Tensor, dst: torch.Tensor, block_mapping: torch.Tensor) -> None:
    """Copy blocks between two caches of the same block shape, possibly on different devices (GPU <-> CPU
    offload): ``dst[d] = src[s]`` for each (s, d) row of ``block_mapping`` (a CPU tensor, as in vLLM)."""
    if src.shape[1:] != dst.shape[1:] or src.dtype != dst.dtype:
        fail(f"swap_blocks: src {tuple(src.shape)} {src.dtype} and dst {tuple(dst.shape)} {dst.dtype} must have "
             "the same block shape and dtype")
    pairs = _check_block_mapping(block_mapping, src.shape[0], dst.shape[0])
    if pairs.shape[0] == 0:
        return
    blocks = src.index_select(0, pairs[:, 0].to(src.device)).to(dst.device, non_blocking=False)
    dst.index_copy_(0, pairs[:, 1].to(dst.device), blocks)
