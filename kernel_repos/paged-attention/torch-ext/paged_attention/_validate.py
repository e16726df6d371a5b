"""Host-side checks, run before anything is launched: a bad block table, slot or length is an error naming the
argument and what is valid, never an out-of-bounds read or write inside a kernel.

Index checks (block tables, seq_lens, slot mappings) have three modes, ``set_validation(mode)`` or
``PAGED_ATTENTION_VALIDATE``:

- ``"device"`` (default): the CUDA decode kernel checks its own indices (``_device_check``): no host sync, nothing
  outside the cache is read, an offending sequence's output is NaN and the error is raised by the next decode call
  on that device or by ``check_errors()``. CPU tensors and the varlen path (which reads lengths on the host anyway)
  are checked on the host, before anything runs; so are slot mappings (except under CUDA-graph capture,
  where the cache-write kernel's own range check is what applies).
- ``"host"``: every call reads the index tensors on the host and raises before launching (on CUDA: one small
  device->host copy, i.e. a sync, per call).
- ``"off"``: no index-value checks (shapes and dtypes are always checked) for callers whose indices are correct by
  construction; a bad index is then an out-of-bounds read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3")
FP8_STORAGE = (torch.uint8, torch.float8_e4m3fn)
QUERY_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
BLOCK_SIZES = (8, 16, 32)
HEAD_SIZE_RANGE = (64, 256)  # multiples of 16 in this range; the torch path also takes 32..256 multiples of 8
PARTITION_SIZE = 512  # paged_attention_v2's context split (vLLM's _PARTITION_SIZE; sizes exp_sums/tmp_out)

VALIDATION_MODES = ("device", "host", "off")


def _mode_of(value) -> str:
    """True/"1"/"on" -> "device" (the default), False/"0"/"off" -> "off", or a mode name."""
    if isinstance(value, bool):
        return "device" if value else "off"
    v = str(value).strip().lower()
    if v in ("1", "true", "yes", "on", ""):
        return "device"
    if v in ("0", "false", "no", "off"):
        return "off"
    if v not in VALIDATION_MODES:
        raise ValueError(f"paged_attention: validation mode {value!r} is not valid; valid: "
                         f"{', '.join(VALIDATION_MODES)} (or True/False)")
    return v


_mode = _mode_of(os.environ.get("PAGED_ATTENTION_VALIDATE", "device"))
_validate = _mode != "off"  # host-side index checks run (CPU always, CUDA only in mode "host")


def set_validation(mode) -> None:
    """Index-value checks for this process: "device" (default; True), "host", or "off" (False). Shape and dtype
    checks always run."""
    global _mode, _validate
    _mode = _mode_of(mode)
    _validate = _mode != "off"


def validation_enabled() -> bool:
    return _mode != "off"


def validation_mode() -> str:
    return _mode


@dataclass(frozen=True)
class CacheGeometry:
    layout: str  # "vllm": K [N, H, D/x, bs, x], V [N, H, D, bs]; "flash": K/V [N, bs, H, D]
    num_blocks: int
    block_size: int
    num_kv_heads: int
    head_size: int
    fp8: bool


def fail(message: str) -> None:
    raise ValueError(f"paged_attention: {message}")


def check_cache_dtype(kv_cache_dtype: str, cache: torch.Tensor, query_dtype: torch.dtype | None, name: str) -> bool:
    """True when the cache holds fp8 e4m3 values."""
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        fail(f"kv_cache_dtype {kv_cache_dtype!r} is not supported; valid: {', '.join(KV_CACHE_DTYPES)}")
    if kv_cache_dtype == "auto":
        if cache.dtype in FP8_STORAGE:
            fail(f"{name} has dtype {cache.dtype} but kv_cache_dtype='auto'; pass kv_cache_dtype='fp8' for an "
                 "fp8 e4m3 cache")
        if query_dtype is not None and cache.dtype != query_dtype:
            fail(f"{name} has dtype {cache.dtype}, query/key has {query_dtype}; with kv_cache_dtype='auto' they "
                 "must match")
        return False
    if cache.dtype not in FP8_STORAGE:
        fail(f"kv_cache_dtype={kv_cache_dtype!r} needs {name} stored as torch.uint8 or torch.float8_e4m3fn, "
             f"got {cache.dtype}")
    return True


def vllm_geometry(key_cache: torch.Tensor, value_cache: torch.Tensor, kv_cache_dtype: str,
                  query_dtype: torch.dtype | None) -> CacheGeometry:
    """vLLM's paged layout: key_cache [num_blocks, num_kv_heads, head_size/x, block_size, x] with
    x = 16 // element_size, value_cache [num_blocks, num_kv_heads, head_size, block_size]."""
    fp8 = check_cache_dtype(kv_cache_dtype, key_cache, query_dtype, "key_cache")
    check_cache_dtype(kv_cache_dtype, value_cache, query_dtype, "value_cache")
    if key_cache.dim() != 5:
        fail(f"key_cache must be 5-D [num_blocks, num_kv_heads, head_size/x, block_size, x], got shape "
             f"{tuple(key_cache.shape)}")
    if value_cache.dim() != 4:
        fail(f"value_cache must be 4-D [num_blocks, num_kv_heads, head_size, block_size], got shape "
             f"{tuple(value_cache.shape)}")
    n, h, dx, bs, x = key_cache.shape
    want_x = 16 // key_cache.element_size()
    if x != want_x:
        fail(f"key_cache last dim is {x}; vLLM's layout packs x = 16 // element_size = {want_x} elements")
    d = dx * x
    if tuple(value_cache.shape) != (n, h, d, bs):
        fail(f"value_cache shape {tuple(value_cache.shape)} does not match key_cache {tuple(key_cache.shape)}: "
             f"expected {(n, h, d, bs)}")
    if key_cache.device != value_cache.device or key_cache.dtype != value_cache.dtype:
        fail("key_cache and value_cache must share device and dtype")
    _check_block_size(bs)
    if not key_cache.is_contiguous() or not value_cache.is_contiguous():
        fail("key_cache and value_cache must be contiguous")
    return CacheGeometry("vllm", n, bs, h, d, fp8)


def flash_geometry(key_cache: torch.Tensor, value_cache: torch.Tensor, kv_cache_dtype: str,
                   query_dtype: torch.dtype | None) -> CacheGeometry:
    """Flash layout: key_cache and value_cache [num_blocks, block_size, num_kv_heads, head_size] (the last dim
    contiguous; block/token/head strides free, so views into a larger buffer work)."""
    fp8 = check_cache_dtype(kv_cache_dtype, key_cache, query_dtype, "key_cache")
    check_cache_dtype(kv_cache_dtype, value_cache, query_dtype, "value_cache")
    if key_cache.dim() != 4 or value_cache.shape != key_cache.shape:
        fail(f"flash layout caches must both be 4-D [num_blocks, block_size, num_kv_heads, head_size]; got "
             f"key_cache {tuple(key_cache.shape)}, value_cache {tuple(value_cache.shape)}")
    if key_cache.device != value_cache.device or key_cache.dtype != value_cache.dtype:
        fail("key_cache and value_cache must share device and dtype")
    if key_cache.stride(-1) != 1 or value_cache.stride(-1) != 1:
        fail("key_cache and value_cache need a contiguous last (head_size) dimension")
    n, bs, h, d = key_cache.shape
    if bs < 1:
        fail(f"block_size must be positive, got {bs}")
    return CacheGeometry("flash", n, bs, h, d, fp8)


def _check_block_size(bs: int) -> None:
    if bs not in BLOCK_SIZES:
        fail(f"block_size {bs} is not supported; valid: {', '.join(map(str, BLOCK_SIZES))}")


def check_query(query: torch.Tensor, out: torch.Tensor, geom: CacheGeometry, num_kv_heads: int) -> None:
    if query.dtype not in QUERY_DTYPES:
        fail(f"query dtype {query.dtype} is not supported; valid: float16, bfloat16, float32")
    if query.dim() != 3:
        fail(f"query must be 3-D [num_seqs, num_heads, head_size], got shape {tuple(query.shape)}")
    if out.shape != query.shape or out.dtype != query.dtype or out.device != query.device:
        fail(f"out must match query (shape {tuple(query.shape)}, {query.dtype}, {query.device}); got "
             f"{tuple(out.shape)}, {out.dtype}, {out.device}")
    s, hq, d = query.shape
    if d != geom.head_size:
        fail(f"query head_size {d} does not match the cache's {geom.head_size}")
    if not (32 <= d <= 256 and d % 8 == 0):
        fail(f"head_size {d} is not supported; valid: multiples of 8 from 32 to 256 (64..256 on CUDA)")
    if num_kv_heads != geom.num_kv_heads:
        fail(f"num_kv_heads={num_kv_heads} but the cache holds {geom.num_kv_heads} KV heads")
    if hq % num_kv_heads:
        fail(f"num_heads {hq} is not a multiple of num_kv_heads {num_kv_heads}")
    if query.stride(-1) != 1 or out.stride(-1) != 1:
        fail("query and out need a contiguous last (head_size) dimension")


def check_same_device(*named: tuple[str, torch.Tensor]) -> None:
    devices = {t.device for _, t in named}
    if len(devices) > 1:
        fail("tensors are on different devices: " + ", ".join(f"{n} on {t.device}" for n, t in named))


def check_tables(block_tables: torch.Tensor, seq_lens: torch.Tensor, num_seqs: int, geom: CacheGeometry,
                 max_seq_len: int | None, values: bool = True) -> None:
    """block_tables [num_seqs, max_blocks] int32, seq_lens [num_seqs] int32. Only the entries a sequence uses
    (the first ceil(seq_len / block_size)) must name existing blocks; the rest are padding and never read."""
    if block_tables.dim() != 2 or block_tables.shape[0] != num_seqs:
        fail(f"block_tables must be [num_seqs={num_seqs}, max_blocks_per_seq], got shape "
             f"{tuple(block_tables.shape)}")
    if block_tables.dtype not in (torch.int32, torch.int64):
        fail(f"block_tables must be int32 (or int64), got {block_tables.dtype}")
    if seq_lens.dim() != 1 or seq_lens.shape[0] != num_seqs:
        fail(f"seq_lens must be [num_seqs={num_seqs}], got shape {tuple(seq_lens.shape)}")
    if seq_lens.dtype not in (torch.int32, torch.int64):
        fail(f"seq_lens must be int32 (or int64), got {seq_lens.dtype}")
    if not values or not _validate or num_seqs == 0:
        return
    # one device->host copy each, then numpy: torch CPU ops cost ~10 us apiece, this runs once per decode step.
    # numpy is imported here, not at module level: the build imports this package to compile the cubins, in a
    # Python that need not have numpy (a torch wheel does not pull it in).
    import numpy as np

    lens = seq_lens.detach().to("cpu", torch.int64).numpy()
    tables = block_tables.detach().cpu().numpy()
    if (lens < 0).any():
        i = int(np.flatnonzero(lens < 0)[0])
        fail(f"seq_lens[{i}] = {int(lens[i])} is negative")
    bs = geom.block_size
    capacity = tables.shape[1] * bs
    if (lens > capacity).any():
        i = int(np.flatnonzero(lens > capacity)[0])
        fail(f"seq_lens[{i}] = {int(lens[i])} is longer than its block table covers "
             f"({tables.shape[1]} blocks x block_size {bs} = {capacity} tokens)")
    if max_seq_len is not None and int(lens.max()) > max_seq_len:
        fail(f"max_seq_len={max_seq_len} is smaller than max(seq_lens) = {int(lens.max())}")
    used = np.arange(tables.shape[1])[None, :] < ((lens + bs - 1) // bs)[:, None]
    bad = used & ((tables < 0) | (tables >= geom.num_blocks))
    if bad.any():
        s, j = (int(x) for x in np.argwhere(bad)[0])
        fail(f"block_tables[{s}, {j}] = {int(tables[s, j])} is out of range: the cache has {geom.num_blocks} "
             f"blocks (valid 0..{geom.num_blocks - 1}) and sequence {s} (length {int(lens[s])}) uses entries "
             f"0..{int((lens[s] + bs - 1) // bs) - 1}")


def check_slots(slot_mapping: torch.Tensor, num_tokens: int, num_slots: int) -> None:
    """slot_mapping [num_tokens] int64: slot = block * block_size + offset, or a negative value for a padding token
    that is not written (vLLM's convention). Slots past the cache and repeated slots are errors."""
    if slot_mapping.dim() != 1 or slot_mapping.shape[0] != num_tokens:
        fail(f"slot_mapping must be [num_tokens={num_tokens}], got shape {tuple(slot_mapping.shape)}")
    if slot_mapping.dtype not in (torch.int64, torch.int32):
        fail(f"slot_mapping must be int64 (or int32), got {slot_mapping.dtype}")
    if not _validate or num_tokens == 0:
        return
    slots = slot_mapping.detach().to("cpu", torch.int64)
    past = slots >= num_slots
    if bool(past.any()):
        i = int(past.nonzero()[0])
        fail(f"slot_mapping[{i}] = {int(slots[i])} is past the cache: it has {num_slots} slots "
             f"(num_blocks x block_size; valid 0..{num_slots - 1}, or negative to skip a padding token)")
    real = slots[slots >= 0]
    if real.numel() != torch.unique(real).numel():
        vals, counts = torch.unique(real, return_counts=True)
        fail(f"slot_mapping writes slot {int(vals[counts > 1][0])} more than once; each token needs its own slot")


def check_kv_tokens(key: torch.Tensor, value: torch.Tensor, geom: CacheGeometry) -> None:
    if key.dim() != 3 or value.shape != key.shape:
        fail(f"key and value must both be [num_tokens, num_kv_heads, head_size]; got key {tuple(key.shape)}, "
             f"value {tuple(value.shape)}")
    if key.dtype != value.dtype or key.dtype not in QUERY_DTYPES:
        fail(f"key/value dtypes {key.dtype}/{value.dtype}: both must be one of float16, bfloat16, float32")
    if key.shape[1] != geom.num_kv_heads or key.shape[2] != geom.head_size:
        fail(f"key has {key.shape[1]} heads of size {key.shape[2]}; the cache holds {geom.num_kv_heads} heads "
             f"of size {geom.head_size}")


def scale_value(scale, name: str) -> float:
    """k_scale / v_scale as a float: vLLM passes a float or a one-element float32 tensor."""
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1:
            fail(f"{name} must be a float or a one-element tensor, got shape {tuple(scale.shape)}")
        scale = float(scale.detach().float().cpu())
    scale = float(scale)
    if not scale > 0 or scale != scale or scale == float("inf"):
        fail(f"{name} must be a positive finite number, got {scale}")
    return scale
