"""Build side of sliding-window's precompiled kernels (kernel_loader.build.aot): one prefill cubin per (arch, head
dim, dtype, softcap); one ring-decode cubin per (arch, head bucket, dtype, softcap) and its merge per (bucket,
dtype). Pointers and the q/k/v/out strides are compiled as multiples of 16 (the dispatch copies inputs that are not;
the launcher checks); lengths, heads, window bounds and the GQA group assume nothing."""

import importlib

KERNEL_PACKAGE = globals().get("KERNEL_PACKAGE", "sliding_window")
keys = importlib.import_module(f"{KERNEL_PACKAGE}._aot_keys")
RUNS_ON = {"8.0": ("8.0", "8.6", "8.7", "8.9"), "9.0": ("9.0",), "10.0": ("10.0",)}
STRIDES_16 = ["sqb", "sqs", "sqh", "skb", "sks", "skh", "svb", "svs", "svh", "sob", "sos", "soh"]


def runs_on(arch: str):
    return RUNS_ON[arch]


def configurations(arch: str, tiles: dict):
    jit = importlib.import_module(f"{KERNEL_PACKAGE}._triton_impl")._window_fwd
    out = []
    for d in keys.HEAD_DIMS:
        t = tiles["prefill"][arch][keys.family(d)]
        for dtype in keys.DTYPES:
            for cap in (False, True):
                cex = dict(D=d, D_PAD=1 << (d - 1).bit_length(), BLOCK_M=t["block_m"], BLOCK_N=t["block_n"],
                           HAS_LEFT=True, HAS_RIGHT=True, SOFTCAP=cap)
                sig = {n: ("constexpr" if n in cex else "i32") for n in jit.arg_names}
                sig.update({n: f"*{dtype}" for n in ("Q", "K", "V", "O")})
                sig.update({"sm_scale_log2": "fp32", "softcap": "fp32"})
                out.append(dict(key=keys.prefill_key(d, dtype, cap), kernel="_triton_impl:_window_fwd",
                                signature=sig, constexprs=cex, divisible=["Q", "K", "V", "O", *STRIDES_16],
                                num_warps=t["num_warps"], num_stages=t["num_stages"],
                                grid=[[["SQ"], "BLOCK_M"], [["batch", "HQ"], None]]))
    return out + _ring_decode(arch, tiles)


DECODE_16 = ["Q", "K", "V", "OUT", "ACC_OUT", "D", "sqb", "sqh", "skb", "sks", "skh", "svb", "svs", "svh", "sob",
             "soh", "sab", "sah", "sap"]


def _ring_decode(arch, tiles):
    """Ring-cache decode: head size, filled length, GQA group and split/direct are run-time arguments."""
    impl = importlib.import_module(f"{KERNEL_PACKAGE}._triton_impl")
    part, red = impl._ring_decode_partial, impl._ring_decode_reduce
    out = []
    for bucket in keys.DECODE_BUCKETS:
        t = tiles["decode"][arch][f"d{bucket}"]
        for dtype in keys.DTYPES:
            for cap in (False, True):
                cex = dict(G_PAD=16, D_PAD=bucket, TILE=t["tile"], SOFTCAP=cap)
                sig = {n: ("constexpr" if n in cex else "i32") for n in part.arg_names}
                sig.update({n: f"*{dtype}" for n in ("Q", "K", "V", "OUT")})
                sig.update(M_OUT="*fp32", L_OUT="*fp32", ACC_OUT="*fp32", sm_scale_log2="fp32", softcap="fp32")
                out.append(dict(key=keys.decode_key(bucket, dtype, cap), kernel="_triton_impl:_ring_decode_partial",
                                signature=sig, constexprs=cex, divisible=DECODE_16, num_warps=t["num_warps"],
                                num_stages=t["num_stages"],
                                grid=[[["batch"], None], [["kv_programs"], None], [["nparts"], None]]))
            cex = dict(D_PAD=bucket, P_BLOCK=16)
            sig = {n: ("constexpr" if n in cex else "i32") for n in red.arg_names}
            sig.update(OUT=f"*{dtype}", M_IN="*fp32", L_IN="*fp32", ACC_IN="*fp32")
            out.append(dict(key=keys.decode_reduce_key(bucket, dtype), kernel="_triton_impl:_ring_decode_reduce",
                            signature=sig, constexprs=cex,
                            divisible=["OUT", "ACC_IN", "D", "sob", "soh", "sab", "sah", "sap"], num_warps=4,
                            num_stages=1, grid=[[["batch"], None], [["heads"], None]]))
    return out
