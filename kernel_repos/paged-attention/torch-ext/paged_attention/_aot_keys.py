"""Configurations of the precompiled (AOT) decode kernels: the keys the build compiles (aot/spec.py) and the dispatch
asks for (_aot_dispatch.py). Lengths, the partition size, the GQA group, the head size, the flash layout's page size,
ALiBi and split/direct output are run-time arguments of one cubin, so a configuration is

    decode/<layout>/<rows>/d<padded head size>/<query dtype>/<cache format>   (rows: vllm p8|p16|p32 = the page,
                                                                                flash r<PS>: tokens per page row)
    reduce/d<padded head size>/<query dtype>                                   (the partition merge)
    cache/<layout>/<key dtype>/<cache format>                 (reshape_and_cache[_flash]: any head size, slots)

Head sizes that are multiples of 16 from 32 to 256 run on cubins (64..256 is what the CUDA path promises); other
inputs the validator accepts (head sizes 40, 56, 72, ..., float32 queries, flash caches whose strides are not
multiples of 16 elements) run the torch path, never an error.
"""

LAYOUTS = ("vllm", "flash")
HEAD_BUCKETS = (64, 128, 256)
DTYPES = ("fp16", "bf16")
CACHE_FORMATS = ("auto", "fp8")
VLLM_PAGES = (8, 16, 32)  # _validate.BLOCK_SIZES
FLASH_ROWS = (64, 32, 16, 8, 1)  # _plan.ROW_SIZES
HEAD_MULTIPLE = 16
HEAD_MIN, HEAD_MAX = 32, 256
P_BLOCK = 16  # partitions merged per step of the reduce kernel
# The flash layout's decode tile per head bucket (aot/tiles.toml holds it per arch; a test keeps the two equal): a
# page row never exceeds the tile, so the dispatch picks the row size from it before it has a table entry.
FLASH_TILE = {64: 64, 128: 64, 256: 32}


def tile_of(tiles: dict, arch: str, layout: str, bucket: int) -> dict:
    return tiles["decode"][arch][f"{layout}_{bucket}"]


def rows_for(layout: str, tile: int) -> tuple[int, ...]:
    return VLLM_PAGES if layout == "vllm" else tuple(r for r in FLASH_ROWS if r <= tile)


def decode_key(layout: str, rows: int, bucket: int, dtype: str, cache: str) -> str:
    page = f"p{rows}" if layout == "vllm" else f"r{rows}"
    return f"decode/{layout}/{page}/d{bucket}/{dtype}/{cache}"


def reduce_key(bucket: int, dtype: str) -> str:
    return f"reduce/d{bucket}/{dtype}"


def cache_key(layout: str, dtype: str, cache: str) -> str:
    return f"cache/{layout}/{dtype}/{cache}"


def all_keys() -> list[str]:
    keys = []
    for layout in LAYOUTS:
        for b in HEAD_BUCKETS:
            rows = VLLM_PAGES if layout == "vllm" else tuple(r for r in FLASH_ROWS if r <= FLASH_TILE[b])
            keys += [decode_key(layout, r, b, t, c) for r in rows for t in DTYPES for c in CACHE_FORMATS]
    keys += [reduce_key(b, t) for b in HEAD_BUCKETS for t in DTYPES]
    keys += [cache_key(layout, t, c) for layout in LAYOUTS for t in DTYPES for c in CACHE_FORMATS]
    return keys
