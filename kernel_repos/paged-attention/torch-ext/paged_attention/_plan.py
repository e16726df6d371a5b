"""Launch planning of the CUDA decode kernels, shared by the Triton JIT path (_triton_impl) and the precompiled one
(_aot_dispatch); torch only, no Triton. A plan fixes what the kernel's compile-time constants and grid are for a
call: the tile, the rows of a tile that share one page (PS), the padded head dim, the query-head chunk and the
context split.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

# (TILE, num_warps, num_stages, programs per SM) by (layout, head-size bucket); the head-dim-128 rows are the best of
# the H100 sweeps (GPU time, CUDA-graph replays, validation "device") at batch 64 and 16, context 4k
# (benchmarks/results_h100_run3.json, "sweep"): flash tile 128 needs 255 registers and spills, tile 64 does not
# (B16: 2.71 vs 2.43 TB/s; B64: 2.90 vs 2.88). vLLM layout: more programs pay at B64 (8/SM: 2.10 vs 1.69 at 2/SM),
# B16 prefers 2/SM (2.00 vs 1.84). Other head sizes are scaled guesses. aot/tiles.toml holds the same rows per arch.
TUNING = {("vllm", 64): (64, 4, 2, 8), ("vllm", 128): (64, 4, 2, 8), ("vllm", 256): (32, 4, 2, 8),
          ("flash", 64): (64, 4, 3, 2), ("flash", 128): (64, 4, 3, 2), ("flash", 256): (32, 4, 3, 2)}
G_CHUNK = 16  # query heads per program (a tensor-core dot needs 16 rows); larger GQA groups take several programs
ROW_SIZES = (64, 32, 16, 8, 1)  # flash layout: tokens of a tile row that lie in one page (a power of two)


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def size_key(head_size: int) -> int:
    """The padded head dim a kernel is compiled for: 64, 128 or 256."""
    return 64 if head_size <= 64 else 128 if head_size <= 128 else 256


def config_for(head_size: int, overrides: dict | None = None, layout: str = "vllm") -> tuple[int, int, int]:
    cfg = TUNING[(layout, size_key(head_size))][:3]
    if overrides:
        cfg = (overrides.get("tile", cfg[0]), overrides.get("num_warps", cfg[1]), overrides.get("num_stages", cfg[2]))
    return cfg


def programs_per_sm(layout: str, head_size: int, overrides: dict | None = None) -> int:
    return (overrides or {}).get("programs_per_sm", TUNING[(layout, size_key(head_size))][3])


def page_rows(layout: str, block_size: int, tile: int) -> int:
    """PS, the tokens of a tile row gathered from one page. vLLM layout: the page itself (8/16/32, at most a tile:
    its V is contiguous along tokens, so the page offset must be known at compile time). Flash layout: the largest of
    ROW_SIZES dividing the block size and the tile (any block size works; the page is a run-time value)."""
    if layout == "vllm":
        return block_size
    return next(r for r in ROW_SIZES if r <= tile and block_size % r == 0)


@functools.lru_cache(maxsize=None)
def sm_count(device: torch.device) -> int:
    if device.type != "cuda":  # Triton's interpreter (CPU tests): a tiny "GPU" so small inputs get split too
        return 4
    return torch.cuda.get_device_properties(device.index if device.index is not None
                                            else torch.cuda.current_device()).multi_processor_count


@functools.lru_cache(maxsize=4096)
def choose_partition(num_programs: int, max_seq_len: int, tile: int, device, per_sm: int = 4) -> int:
    """Split the context only as much as needed to give every SM a few programs."""
    target = per_sm * sm_count(device)
    programs = max(1, num_programs)
    parts = max(1, min(-(-target // programs), -(-max_seq_len // tile)))
    part = -(-max_seq_len // parts)
    return max(tile, -(-part // tile) * tile)


@dataclass(frozen=True)
class DecodePlan:
    tile: int
    rows: int  # PS
    d_pad: int
    g_chunk: int  # G_PAD: query heads per program
    n_gchunks: int  # programs per KV head along the head axis
    part: int  # tokens per context partition (a multiple of tile)
    nparts: int
    direct: bool  # one partition and no caller partials: the first kernel writes out


def plan_decode(num_seqs: int, num_heads: int, num_kv_heads: int, head_size: int, max_seq_len: int, layout: str,
                block_size: int, tile: int, per_sm: int, device, partition_size: int | None,
                has_partials: bool, g_chunk: int | None = None) -> DecodePlan:
    g = num_heads // num_kv_heads
    g_chunk = g_chunk or G_CHUNK
    n_gchunks = -(-g // g_chunk)
    max_len = max(int(max_seq_len), 1)
    if layout == "vllm":
        tile = max(tile, block_size)  # whole pages per tile
    part = partition_size if partition_size is not None else choose_partition(
        num_seqs * num_kv_heads * n_gchunks, max_len, tile, device, per_sm)
    if part % tile:
        raise ValueError(f"paged_attention: partition {part} is not a multiple of the tile {tile}")
    nparts = -(-max_len // part)
    return DecodePlan(tile=tile, rows=page_rows(layout, block_size, tile), d_pad=size_key(head_size),
                      g_chunk=g_chunk, n_gchunks=n_gchunks, part=part, nparts=nparts,
                      direct=nparts == 1 and not has_partials)
