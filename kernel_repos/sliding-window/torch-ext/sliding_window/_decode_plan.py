"""Launch planning of the ring-cache decode kernel, shared by the Triton JIT path and the precompiled one (torch
only, no Triton): the tile, the padded head dim, the query-head chunk and the split of the window into partitions."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

G_CHUNK = 16  # query heads per program (a tensor-core dot needs 16 rows); larger GQA groups take several programs
PROGRAMS_PER_SM = 4
TILE = {64: 64, 128: 64, 256: 32}  # slots per step by head bucket (aot/tiles.toml holds the same per arch)


def size_key(head_dim: int) -> int:
    return 64 if head_dim <= 64 else 128 if head_dim <= 128 else 256


@functools.lru_cache(maxsize=None)
def sm_count(device: torch.device) -> int:
    if device.type != "cuda":  # Triton's interpreter (CPU tests): a tiny "GPU" so small inputs get split too
        return 4
    return torch.cuda.get_device_properties(device.index if device.index is not None
                                            else torch.cuda.current_device()).multi_processor_count


@dataclass(frozen=True)
class RingPlan:
    tile: int
    d_pad: int
    n_gchunks: int
    part: int  # slots per partition (a multiple of tile)
    nparts: int
    direct: bool


def plan_ring_decode(batch: int, heads: int, kv_heads: int, head_dim: int, filled: int, device,
                     tile: int | None = None) -> RingPlan:
    bucket = size_key(head_dim)
    tile = tile or TILE[bucket]
    n_gchunks = -(-(heads // kv_heads) // G_CHUNK)
    programs = max(1, batch * kv_heads * n_gchunks)
    parts = max(1, min(-(-PROGRAMS_PER_SM * sm_count(device) // programs), -(-filled // tile)))
    per = -(-filled // parts)
    part = -(-per // tile) * tile
    nparts = -(-filled // part)
    return RingPlan(tile=tile, d_pad=bucket, n_gchunks=n_gchunks, part=part, nparts=nparts, direct=nparts == 1)
