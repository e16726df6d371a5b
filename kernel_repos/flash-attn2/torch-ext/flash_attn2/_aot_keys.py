"""The configuration space of the precompiled (AOT) GPU kernels: what the dispatch can ask for, as key strings.

Shared by the build (aot/spec.py compiles one cubin per key and arch) and the run-time dispatch (_aot_dispatch.py
forms the key of a call), so the two cannot drift apart; a test checks every built variant has every key.

Compared with the Triton JIT, which specialises on every flag, the precompiled set keeps as constexprs only what
changes the instruction mix a lot, and passes the rest at run time:
- windows and causal: always compiled with both window edges on; an unbounded edge is passed as a window wider
  than any sequence (the block loop bounds and masks then equal the unwindowed kernel's);
- page size: a run-time int (the JIT compiles one kernel per page size);
- kept: head dim (64, 96, 128, 256), dtype (fp16, bf16), softcap on/off, the layout: dense, varlen, kv cache
  (contiguous, per-sequence lengths) or paged kv cache; and for the forward, short queries (at most SHORT_Q rows
  per sequence: decode, speculative steps) get their own tiles (``fwd_short`` in tiles.toml): a prefill tile of
  128 query rows would leave all but one empty at decode.
"""

HEAD_DIMS = (64, 96, 128, 256)
DTYPES = ("fp16", "bf16")
FWD_MODES = ("dense", "varlen", "kvcache", "paged")
BWD_MODES = ("dense", "varlen")
BWD_KERNELS = ("delta", "dkdv", "dq")
SHORT_Q = 16  # query rows per sequence up to which a forward call takes the short-query tiles


def family(head_dim: int) -> str:
    """Tile family: small (64), mid (96, 128), big (256); tiles.toml holds one tile config per family and arch."""
    return "small" if head_dim <= 64 else ("mid" if head_dim <= 128 else "big")


def fwd_key(mode: str, head_dim: int, dtype: str, softcap: bool, short: bool = False) -> str:
    return f"fwd{'_short' if short else ''}/{mode}/d{head_dim}/{dtype}/{'softcap' if softcap else 'nocap'}"


def bwd_key(kernel: str, mode: str, head_dim: int, dtype: str, softcap: bool) -> str:
    if kernel == "delta":  # out * dout row sums: no softcap, no scores
        return f"bwd_delta/{mode}/d{head_dim}/{dtype}"
    return f"bwd_{kernel}/{mode}/d{head_dim}/{dtype}/{'softcap' if softcap else 'nocap'}"


def fwd_keys():
    return [fwd_key(m, d, t, c, s) for s in (False, True) for m in FWD_MODES for d in HEAD_DIMS for t in DTYPES
            for c in (False, True)]


def bwd_keys():
    keys = []
    for m in BWD_MODES:
        for d in HEAD_DIMS:
            for t in DTYPES:
                keys.append(bwd_key("delta", m, d, t, False))
                for k in ("dkdv", "dq"):
                    keys += [bwd_key(k, m, d, t, c) for c in (False, True)]
    return keys


def all_keys():
    return fwd_keys() + bwd_keys()
