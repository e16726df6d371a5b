"""Build side of sliding-window's precompiled prefill (kernel_loader.build.aot): one cubin per (arch, head dim,
dtype, softcap). Pointers and the q/k/v/out strides are compiled as multiples of 16 (the dispatch copies inputs
that are not; the launcher checks); lengths, heads, window bounds and the GQA group assume nothing."""

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
    return out
