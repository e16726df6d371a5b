"""Build side of the precompiled kernels of flash-attn2 and flash-attn3 (flash-attn3's aot/spec.py links here;
the two share the Triton kernels): every (arch, configuration) kernel_loader.build.aot compiles.

Run by kernel_loader.build.aot.compile_cubins in a Python with Triton; ``KERNEL_PACKAGE`` is the kernel package
imported as a bare namespace. The configuration keys come from the package's _aot_keys.py, the same module the
run-time dispatch (_aot_dispatch.py) forms its keys with; tile configs come from the repo's tiles.toml.

TMA: a forward tile with ``tma = true`` (flash-attn3's sm90 tiles) compiles the dense forward with USE_TMA: Q/K/V
come in through tensor descriptors the kernel builds on the device (128 bytes of global scratch per descriptor
and program, which the launcher allocates; compile_cubins records the size). The dispatch's copies already meet
what TMA needs: 16-byte aligned base and strides, last dim contiguous. varlen, kv-cache and paged forwards, and
the backward, load with plain pointers, as under the JIT.

Specialisations (``divisible``: tt.divisibility=16): every pointer (16-byte aligned; the dispatch copies an input
that is not) and the row/head/batch strides of q, k, v, out and their gradients (multiples of 16 elements for
every supported head dim when the last dim is contiguous; the dispatch copies otherwise). lse strides, lengths,
head counts and window bounds are not assumed anything. No int is specialised on the value 1. The launcher
checks every assumption again at each launch.
"""

import importlib

KERNEL_PACKAGE = globals().get("KERNEL_PACKAGE", "flash_attn2")
keys = importlib.import_module(f"{KERNEL_PACKAGE}._aot_keys")

RUNS_ON = {"8.0": ("8.0", "8.6", "8.7", "8.9"), "9.0": ("9.0",), "10.0": ("10.0",)}
DTYPE = {"fp16": "fp16", "bf16": "bf16"}


def runs_on(arch: str):
    """Compute capabilities a cubin built for ``arch`` runs on (sm_90a/sm_100a cubins run on that arch only)."""
    return RUNS_ON[arch]


def _strides(*prefixes, dims="bmh"):
    return [f"stride_{p}{d}" for p in prefixes for d in dims]


FWD_IO = ("Q", "K", "V", "O")
FWD_STRIDES_16 = _strides("q") + ["stride_kb", "stride_kn", "stride_kh", "stride_vb", "stride_vn", "stride_vh"] \
    + _strides("o") + ["stride_kpage", "stride_vpage"]


def _types(names_io, dtype, f32=(), i32_ptrs=(), floats=()):
    sig = {n: f"*{dtype}" for n in names_io}
    sig.update({n: "*fp32" for n in f32})
    sig.update({n: "*i32" for n in i32_ptrs})
    sig.update({n: "fp32" for n in floats})
    return sig


class _Sig(dict):
    """Signature with "i32" for every parameter not named (lengths, strides, counts, window bounds)."""

    def __missing__(self, key):
        return "i32"


def _fwd(arch, tiles, mode, d, dtype, softcap, short=False):
    t = tiles["fwd_short" if short else "fwd"][arch][keys.family(d)]
    sig = _Sig(_types(FWD_IO, DTYPE[dtype], f32=("LSE",), i32_ptrs=("CU_Q", "CU_K", "SEQUSED_K", "BLOCK_TABLE"),
                      floats=("qk_scale", "softcap")))
    cex = dict(VARLEN=mode == "varlen", SEQUSED=mode in ("kvcache", "paged"), PAGED=mode == "paged", PAGE=0,
               HAS_LEFT=True, HAS_RIGHT=True, SOFTCAP=softcap, HEAD_DIM=d,
               HEAD_DIM_P=max(16, 1 << (d - 1).bit_length()), BLOCK_M=t["block_m"], BLOCK_N=t["block_n"])
    # Short queries pack a KV head's query heads into the tile rows where the kernel can (flash-attn2's); TMA
    # loads (flash-attn3's tiles) serve dense unpacked tiles only.
    has_pack = "PACK_GQA" in _arg_names("_triton_fwd:attn_fwd_kernel")
    pack = short and has_pack
    if has_pack:
        cex["PACK_GQA"] = pack
    cex["USE_TMA"] = bool(t.get("tma")) and mode == "dense" and not pack
    for c in cex:
        sig[c] = "constexpr"
    return dict(key=keys.fwd_key(mode, d, dtype, softcap, short), kernel="_triton_fwd:attn_fwd_kernel", signature=_full(sig, "_triton_fwd:attn_fwd_kernel"),
                constexprs=cex, divisible=[*FWD_IO, "LSE", "CU_Q", "CU_K", "SEQUSED_K", "BLOCK_TABLE", *FWD_STRIDES_16],
                num_warps=t["num_warps"], num_stages=t["num_stages"],
                grid=[[["seqlen_q_max", "group"], "BLOCK_M"], [["batch", "n_heads_k"], None]] if pack else
                [[["seqlen_q_max"], "BLOCK_M"], [["batch", "n_heads"], None]])


def _bwd(arch, tiles, kernel, mode, d, dtype, softcap):
    fam = "all" if kernel == "delta" else keys.family(d)
    t = tiles[f"bwd_{kernel}"][arch][fam]
    hdp = max(16, 1 << (d - 1).bit_length())
    if kernel == "delta":
        sig = _Sig(_types(("O", "DO"), DTYPE[dtype], f32=("DELTA",), i32_ptrs=("CU_Q",)))
        cex = dict(VARLEN=mode == "varlen", HEAD_DIM=d, HEAD_DIM_P=hdp, BLOCK_M=t["block_m"])
        div = ["O", "DO", "DELTA", "CU_Q", *_strides("o", "d")]
        grid = [[["seqlen_q_max"], "BLOCK_M"], [["batch", "n_heads"], None]]
        fn = "_triton_bwd:bwd_delta_kernel"
    else:
        io = ("Q", "K", "V", "DO", "DK", "DV") if kernel == "dkdv" else ("Q", "K", "V", "DO", "DQ")
        sig = _Sig(_types(io, DTYPE[dtype], f32=("LSE", "DELTA"), i32_ptrs=("CU_Q", "CU_K"),
                          floats=("scale", "qk_scale", "softcap")))
        cex = dict(VARLEN=mode == "varlen", HAS_LEFT=True, HAS_RIGHT=True, SOFTCAP=softcap, HEAD_DIM=d,
                   HEAD_DIM_P=hdp, BLOCK_M=t["block_m"], BLOCK_N=t["block_n"])
        grads = ("dk", "dv") if kernel == "dkdv" else ("dq",)
        div = [*io, "LSE", "DELTA", "CU_Q", "CU_K",
               *_strides("q"), "stride_kb", "stride_kn", "stride_kh", "stride_vb", "stride_vn", "stride_vh",
               *_strides("do")]
        for g in grads:
            div += [f"stride_{g}b", f"stride_{g}{'n' if g in ('dk', 'dv') else 'm'}", f"stride_{g}h"]
        if kernel == "dkdv":
            grid = [[["seqlen_k_max"], "BLOCK_N"], [["batch", "n_heads_k"], None]]
            fn = "_triton_bwd:bwd_dkdv_kernel"
        else:
            grid = [[["seqlen_q_max"], "BLOCK_M"], [["batch", "n_heads"], None]]
            fn = "_triton_bwd:bwd_dq_kernel"
    for c in cex:
        sig[c] = "constexpr"
    return dict(key=keys.bwd_key(kernel, mode, d, dtype, softcap), kernel=fn, signature=_full(sig, fn),
                constexprs=cex, divisible=div, num_warps=t["num_warps"], num_stages=t["num_stages"], grid=grid)


def _arg_names(kernel_ref: str) -> list:
    mod, fn = kernel_ref.split(":")
    return getattr(importlib.import_module(f"{KERNEL_PACKAGE}.{mod}"), fn).arg_names


def _full(sig: _Sig, kernel_ref: str) -> dict:
    """The signature of every parameter of the kernel (the default i32 made explicit)."""
    return {n: sig[n] for n in _arg_names(kernel_ref)}


def configurations(arch: str, tiles: dict, *, kernels=("fwd", "bwd")):
    out = []
    if "fwd" in kernels:
        for m in keys.FWD_MODES:
            for d in keys.HEAD_DIMS:
                for t in keys.DTYPES:
                    for c in (False, True):
                        out += [_fwd(arch, tiles, m, d, t, c), _fwd(arch, tiles, m, d, t, c, short=True)]
    if "bwd" in kernels:
        for m in keys.BWD_MODES:
            for d in keys.HEAD_DIMS:
                for t in keys.DTYPES:
                    out.append(_bwd(arch, tiles, "delta", m, d, t, False))
                    for k in ("dkdv", "dq"):
                        for c in (False, True):
                            out.append(_bwd(arch, tiles, k, m, d, t, c))
    return out
