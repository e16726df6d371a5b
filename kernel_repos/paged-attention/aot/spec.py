"""Build side of paged-attention's precompiled kernels (kernel_loader.build.aot): one decode cubin per (arch, layout,
page rows, padded head size, query dtype, cache format), one merge cubin per (arch, padded head size, dtype) and one
cache-write cubin per (arch, layout, key dtype, cache format); see _aot_keys.py for what is a run-time argument.

Specialisations the dispatch meets (and the launcher checks): q/out/caches/partials 16-byte aligned, the head size
and every q/out/cache/partials stride except the block table's a multiple of 16 elements. The vLLM layout is
contiguous (validated), so its inner strides are compile-time constants: K [N, H, D/x, bs, x] has token stride x and
x-group stride bs * x, V [N, H, D, bs] has token stride 1 and head-dim stride bs. The flash layout has head-dim
stride 1. Index checks (CHECK) are always compiled in: the kernel never reads outside the cache in any mode."""

import importlib

KERNEL_PACKAGE = globals().get("KERNEL_PACKAGE", "paged_attention")
keys = importlib.import_module(f"{KERNEL_PACKAGE}._aot_keys")
RUNS_ON = {"8.0": ("8.0", "8.6", "8.7", "8.9"), "9.0": ("9.0",), "10.0": ("10.0",)}
PTR = {"fp16": "*fp16", "bf16": "*bf16"}
COMMON_16 = ["Q", "K", "V", "OUT", "ACC_OUT", "D", "stride_qs", "stride_qh", "stride_kb", "stride_kh",
             "stride_vb", "stride_vh", "stride_os", "stride_oh", "stride_as", "stride_ah", "stride_ap"]


def runs_on(arch: str):
    return RUNS_ON[arch]


def _decode(arch, tiles, layout, bucket, rows, dtype, cache, fn):
    key = keys.decode_key(layout, rows, bucket, dtype, cache)
    t = {**keys.tile_of(tiles, arch, layout, bucket), **tiles.get("override", {}).get(arch, {}).get(key, {})}
    fp8 = cache == "fp8"
    if layout == "vllm":
        x = 16 if fp8 else 8  # 16 bytes of elements
        tile = max(t["tile"], rows)
        inner = dict(stride_kt=x, stride_kx=rows * x, stride_vt=1, stride_vd=rows)
        div = ["stride_kb", "stride_kh", "stride_vb", "stride_vh"]
    else:
        x, tile = bucket, t["tile"]
        inner = dict(stride_kx=0, stride_vd=1)
        div = ["stride_kt", "stride_vt"]
    cex = dict(G_PAD=16, D_PAD=bucket, X=x, PS=rows, FIXED_PAGE=layout == "vllm", TILE=tile, FP8=fp8, CHECK=True,
               **inner)
    sig = {n: ("constexpr" if n in cex else "i32") for n in fn.arg_names}
    kv = "*u8" if fp8 else PTR[dtype]
    sig.update(Q=PTR[dtype], K=kv, V=kv, BT="*i32", SL="*i32", SLOPES="*fp32", OUT=PTR[dtype], M_OUT="*fp32",
               L_OUT="*fp32", ACC_OUT="*fp32", ERR="*i32", REP="*i32", qk_scale="fp32", v_scale="fp32")
    return dict(key=key, kernel="_triton_impl:_decode_partial",
                signature=sig, constexprs=cex, divisible=sorted(set(COMMON_16 + div) - set(cex)),
                num_warps=t["num_warps"], num_stages=t["num_stages"],
                grid=[[["num_seqs"], None], [["kv_programs"], None], [["nparts"], None]])


def _reduce(bucket, dtype, fn):
    cex = dict(D_PAD=bucket, P_BLOCK=keys.P_BLOCK, CHECK=True)
    sig = {n: ("constexpr" if n in cex else "i32") for n in fn.arg_names}
    sig.update(OUT=PTR[dtype], M_IN="*fp32", L_IN="*fp32", ACC_IN="*fp32", SL="*i32")
    return dict(key=keys.reduce_key(bucket, dtype), kernel="_triton_impl:_decode_reduce", signature=sig,
                constexprs=cex, divisible=["OUT", "ACC_IN", "D", "stride_os", "stride_oh", "stride_as", "stride_ah",
                                           "stride_ap"],
                num_warps=4, num_stages=1, grid=[[["num_seqs"], None], [["num_heads"], None]])


def _cache(layout, dtype, cache, fn, d_pad):
    fp8 = cache == "fp8"
    x = (16 if fp8 else 8) if layout == "vllm" else d_pad
    cex = dict(D_PAD=d_pad, X=x, FP8=fp8, CHECK=True)
    sig = {n: ("constexpr" if n in cex else "i32") for n in fn.arg_names}
    kv = "*u8" if fp8 else PTR[dtype]
    sig.update(KEY=PTR[dtype], VALUE=PTR[dtype], KC=kv, VC=kv, SLOTS="*i64", ERR="*i32", REP="*i32",
               k_scale="fp32", v_scale="fp32")
    return dict(key=keys.cache_key(layout, dtype, cache), kernel="_triton_impl:_write_slots", signature=sig,
                constexprs=cex, divisible=[], num_warps=2, num_stages=1,
                grid=[[["num_tokens"], None], [["num_kv_heads"], None]])


def configurations(arch: str, tiles: dict):
    impl = importlib.import_module(f"{KERNEL_PACKAGE}._triton_impl")
    out = []
    for layout in keys.LAYOUTS:
        for bucket in keys.HEAD_BUCKETS:
            tile = keys.tile_of(tiles, arch, layout, bucket)["tile"]
            for rows in keys.rows_for(layout, tile):
                for dtype in keys.DTYPES:
                    for cache in keys.CACHE_FORMATS:
                        out.append(_decode(arch, tiles, layout, bucket, rows, dtype, cache, impl._decode_partial))
    for bucket in keys.HEAD_BUCKETS:
        for dtype in keys.DTYPES:
            out.append(_reduce(bucket, dtype, impl._decode_reduce))
    for layout in keys.LAYOUTS:
        for dtype in keys.DTYPES:
            for cache in keys.CACHE_FORMATS:
                out.append(_cache(layout, dtype, cache, impl._write_slots, impl.CACHE_D_PAD))
    return out
