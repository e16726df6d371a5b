"""Shape classes that go to PyTorch SDPA on purpose, because the kernel measurably loses there.

A route is data: where it applies (device type, dtypes, phase, a CPU feature that must be present), what was
measured (kernel alone vs torch SDPA in the same process, alternated) and when. The flash adapter asks
:func:`route` once per call (a dict lookup); a routed call runs SDPA's fastest form for the flash semantics asked
(``is_causal`` for a full square causal block, no mask for one decode query, the flash-visibility mask otherwise)
and is not a fallback: no warning, it is listed by ``kernel-loader resolve`` and ``doctor`` and in the benchmark.

``KERNEL_LOADER_ROUTING=off`` (or :func:`set_enabled(False) <set_enabled>`) sends every call to the kernel: the
benchmark uses it to report the kernel alone next to what a model gets.

Phases: ``decode`` is one query per sequence (S_q == 1, a ``generate()`` step), ``prefill`` everything else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Route", "ROUTES", "route", "route_class", "routes_for", "set_enabled", "enabled", "describe", "sdpa_call"]


@dataclass(frozen=True)
class Route:
    device: str  # torch device type
    phase: str  # "prefill" | "decode"
    dtypes: tuple[str, ...]  # torch dtype names
    needs_feature: str | None  # a CPU feature (SystemInfo.cpu_features) the rule needs, e.g. "amx_bf16"
    windowed: bool  # also for sliding-window calls (where the kernel skips blocks and SDPA needs a full mask)
    measured: str  # kernel alone vs torch SDPA, same process
    why: str
    capability: str | None = None  # CUDA routes: the compute capability measured ("9.0"); other GPUs keep the kernel

    def matches(self, device: str, dtype: torch.dtype, phase: str) -> bool:
        return device == self.device and phase == self.phase and str(dtype).removeprefix("torch.") in self.dtypes

    def line(self) -> str:
        feat = (f" with {self.needs_feature}" if self.needs_feature else "") + \
            (f" sm_{self.capability.replace('.', '')}" if self.capability else "") + ("" if self.windowed else ", no window")
        return (f"{self.phase} {'/'.join(self.dtypes)} on {self.device}{feat} -> sdpa: {self.why} "
                f"(measured {self.measured})")


# Measured on a 2-core Xeon (AVX-512 BF16 + AMX), torch 2.13, transformers 5.23, 2026-12-01, alternated in one process
# (scripts/bench_model.py; benchmarks/bench_model_cpu-xeon-amx-2core.md): "attention alone" is the kernel's
# flash_attn_func against F.scaled_dot_product_attention, "model" the tokens/s a transformers model gets.
ROUTES: tuple[Route, ...] = (
    Route(device="cpu", phase="decode", dtypes=("float32", "bfloat16", "float16"), needs_feature=None, windowed=True,
          measured="attention alone B1/B8, one query over 256-1024 keys, 8/2 heads x 64: kernel 0.06-0.16x SDPA "
                   "(bf16 and fp32); model generate() decode, kernel alone 0.44-0.84x, routed 0.77-1.06x",
          why="one query row per sequence: the CPU kernel's per-call cost (its query tiles sit empty) dwarfs the "
              "work, and SDPA's decode path is a plain matrix-vector product"),
    Route(device="cpu", phase="prefill", dtypes=("bfloat16",), needs_feature="amx_bf16", windowed=False,
          measured="attention alone S2048 causal, 8/2 x 64 and 4/2 x 128: kernel 0.29-0.32x SDPA; model prefill "
                   "2048 tokens, kernel alone 0.53-0.61x, routed 0.83-1.01x",
          why="torch's SDPA uses AMX tiles for bf16, the kernel AVX-512 BF16 dot products"),
    # Measured on an H200 (sm_90), torch 2.11+cu130, transformers 5.24, the precompiled variant, 2026-12-02
    # (benchmarks/bench_model_h200.md, kernel_repos/flash-attn2/benchmarks/tile_sweep_h200.json).
    Route(device="cuda", phase="decode", dtypes=("bfloat16", "float16"), needs_feature=None, windowed=False,
          capability="9.0",
          measured="attention alone B16, one query over 1024 keys, 32/8 heads x 64: kernel 0.25-0.33x SDPA; model "
                   "generate() decode (Llama-1B shape) B1 0.79-0.98x, B16 0.84-0.89x; host time per call 74-100 us "
                   "vs SDPA's 24-31 us",
          why="one query row per sequence: the kernel's work is a few microseconds and the Python launch path "
              "(checks, table lookup, argument packing) costs 3x SDPA's C++ dispatch"),
    Route(device="cuda", phase="prefill", dtypes=("bfloat16", "float16"), needs_feature=None, windowed=False,
          capability="9.0",
          measured="attention alone S4096 causal 32/8 x 64: kernel 0.69x SDPA, 0.79x with the swept tile; model "
                   "prefill Llama-1B shape 1k/4k/16k tokens 0.79-0.81x/0.81-0.86x/0.89-0.90x, routed 0.88x/0.88x/0.97x "
                   "(one run on a slower host); flash-attn3's precompiled d64 causal forward 334 TFLOP/s against "
                   "SDPA's 375 at that shape",
          why="torch's SDPA runs the FlashAttention-2 CUDA kernel on sm_90; the Triton tiles (mma/wgmma without "
              "warp specialisation) reach 70-85% of it for plain causal attention"),
)

_enabled = os.environ.get("KERNEL_LOADER_ROUTING", "on").strip().lower() not in {"0", "off", "false", "no"}
_table: dict | None = None  # (device type, dtype, decode?, windowed?) -> Route, for this machine


def set_enabled(on: bool) -> None:
    """Turn routing on or off for this process (off: every call the kernel can take goes to the kernel)."""
    global _enabled
    _enabled = bool(on)


def enabled() -> bool:
    return _enabled


def _capability() -> str | None:
    """cuda:0's compute capability ("9.0"), None without a GPU (CUDA routes are per measured arch)."""
    try:
        if torch.cuda.is_available():
            return "{}.{}".format(*torch.cuda.get_device_capability(0))
    except (RuntimeError, AssertionError):
        pass
    return None


def routes_for(cpu_features=None, capability: str | None = "detect") -> list[Route]:
    """The routes that apply on a machine with these CPU features and GPU compute capability (default: this
    machine's)."""
    if cpu_features is None:
        from ..system import detect

        cpu_features = detect().cpu_features
    if capability == "detect":
        capability = _capability()
    return [r for r in ROUTES if (r.needs_feature is None or r.needs_feature in cpu_features)
            and (r.capability is None or r.capability == capability)]


def _build_table() -> dict:
    table = {}
    for r in routes_for():
        for dt in r.dtypes:
            for windowed in (False, True) if r.windowed else (False,):
                table[(r.device, getattr(torch, dt), r.phase == "decode", windowed)] = r
    return table


def route_class(device: str, dtype: torch.dtype, decode: bool, windowed: bool = False) -> Route | None:
    """The route for a shape class on this machine, whether or not routing is on."""
    global _table
    if _table is None:
        _table = _build_table()
    return _table.get((device, dtype, decode, windowed))


def route(query: torch.Tensor, windowed: bool = False) -> Route | None:
    """The route for this (B, H, S, D) query (``windowed``: a sliding-window call), or None (use the kernel).
    Cheap: one dict lookup per call."""
    if not _enabled:
        return None
    return route_class(query.device.type, query.dtype, query.shape[-2] == 1, windowed)


def describe(cpu_features=None, capability: str | None = "detect") -> list[str]:
    """One line per route in force here, for ``resolve`` and ``doctor``."""
    lines = [r.line() for r in routes_for(cpu_features, capability)]
    if not _enabled:
        lines = [f"(off: KERNEL_LOADER_ROUTING) {x}" for x in lines]
    return lines


def sdpa_call(query, key, value, *, scale: float, causal: bool, window=(-1, -1), softcap: float = 0.0,
              key_padding=None) -> torch.Tensor:
    """Flash semantics (bottom-right causal, windows, softcap, padding) on SDPA, its fastest form where the mask is
    trivial. (B, H, S, D) in and out."""
    sq, sk = query.shape[-2], key.shape[-2]
    plain = window == (-1, -1) and not softcap and key_padding is None
    gqa = query.shape[1] != key.shape[1]
    if plain and (not causal or sq == 1):  # a decode query sees every key under bottom-right causality
        return F.scaled_dot_product_attention(query, key, value, scale=scale, enable_gqa=gqa)
    if plain and sq == sk:
        return F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scale, enable_gqa=gqa)
    if sq == 1 and not softcap and key_padding is None and window[0] >= 0 and window[1] in (-1, 0) and causal:
        # one decode query under a sliding window sees exactly the last window_left + 1 keys: slice, no mask
        keep = min(sk, window[0] + 1)
        return F.scaled_dot_product_attention(query, key[..., sk - keep:, :], value[..., sk - keep:, :], scale=scale,
                                              enable_gqa=gqa)
    from .sdpa import masked_attention

    return masked_attention(query, key, value, scale=scale, causal=causal, window=window, softcap=softcap,
                            key_padding=key_padding)
