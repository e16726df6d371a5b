"""Host side of the Gluon Hopper forward (_gluon_fwd.py): which inputs it takes, its tile configs, TMA
descriptors, the launch, and an ahead-of-time compile for sm_90a that needs no GPU.

Configs are data (one per head dim, tuned on a GPU), never autotuned at run time, so every kernel a dispatch can
pick is known in advance and can be precompiled to a cubin.
"""

from dataclasses import dataclass, replace
from typing import Optional

import torch

from . import _gluon_fwd as gf

HEAD_DIMS = (64, 128, 256)
DTYPES = (torch.float16, torch.bfloat16)
# A CTA runs 12 warps (two consumer warpgroups + the producer's warpgroup): 65536 / 384 = 170 registers each on
# average, so the launch asks for 168 and setmaxnreg moves them: producer 24, consumers 240.
MAXNREG = 168


@dataclass(frozen=True)
class FwdConfig:
    """One compiled forward kernel: tile shape and pipeline, mask flags, dtype, and the ablation switches."""
    head_dim: int
    dtype: str = "bf16"  # "bf16" | "fp16"
    block_n: int = 128
    stages: int = 2
    has_left: bool = False
    has_right: bool = False
    pingpong: bool = True
    overlap: bool = True
    unroll: int = 1  # unmasked tiles per loop trip (2: P in two register sets; see _gluon_fwd._consumer)
    consumer_regs: int = 240
    producer_regs: int = 24
    maxnreg: int = MAXNREG

    @property
    def name(self) -> str:
        flags = ("L" if self.has_left else "") + ("R" if self.has_right else "")
        extra = ("" if self.pingpong else "-nopp") + ("" if self.overlap else "-noovl") + (f"-u{self.unroll}" if self.unroll > 1 else "")
        return f"d{self.head_dim}-{self.dtype}-n{self.block_n}-s{self.stages}{'-' + flags if flags else ''}{extra}"

    def constexprs(self) -> dict:
        return dict(HEAD_DIM=self.head_dim, BLOCK_N=self.block_n, STAGES=self.stages, HAS_LEFT=self.has_left,
                    HAS_RIGHT=self.has_right, PINGPONG=self.pingpong, OVERLAP=self.overlap, UNROLL=self.unroll,
                    CONSUMER_REGS=self.consumer_regs, PRODUCER_REGS=self.producer_regs)


# Shared memory per CTA: 2 Q tiles (64 x d) + STAGES x (K + V) tiles (block_n x d), 16-bit elements.
_BASE = {64: dict(block_n=128, stages=4), 128: dict(block_n=128, stages=2), 256: dict(block_n=64, stages=2)}


def config_for(head_dim: int, dtype: torch.dtype, has_left: bool, has_right: bool, **overrides) -> FwdConfig:
    return replace(FwdConfig(head_dim, _DTYPE_NAMES[dtype], has_left=has_left, has_right=has_right,
                             **_BASE[head_dim]), **overrides)


_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16"}
_GL_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def smem_bytes(cfg: FwdConfig) -> int:
    return 2 * (gf.CONSUMERS.value * gf.BLOCK_M.value * cfg.head_dim + 2 * cfg.stages * cfg.block_n * cfg.head_dim)


def unsupported_reason(q, k, v, softcap: float) -> Optional[str]:
    """None when the Gluon kernel computes this call exactly; else why the Triton tl kernel takes it."""
    if softcap:
        return "softcap"
    if q.dtype not in DTYPES:
        return f"dtype {q.dtype}"
    d = q.shape[-1]
    if d not in HEAD_DIMS:
        return f"head dim {d}"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not _rows_2d(t):
            return f"{name} strides {t.stride()} cannot be viewed as (batch*seqlen, heads*head_dim)"
        if t.data_ptr() % 16:
            return f"{name} is not 16-byte aligned"
    if q.shape[0] * max(q.shape[1], k.shape[1]) >= 2 ** 31:
        return "batch*seqlen does not fit int32 TMA coordinates"
    return None


def _rows_2d(t) -> bool:
    """(B, S, H, D) -> one 2-D matrix with a uniform row stride: heads adjacent, batches back to back."""
    b, s, h, d = t.shape
    row = t.stride(1)
    return (t.stride(3) == 1 and t.stride(2) == d and (b == 1 or t.stride(0) == s * row)
            and (row * t.element_size()) % 16 == 0)


def _descriptor(t, block_rows: int, cfg: FwdConfig):
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    b, s, h, d = t.shape
    block = [block_rows, d]
    layout = gl.NVMMASharedLayout.get_default_for(block, getattr(gl, _GL_DTYPES[cfg.dtype]))
    return TensorDescriptor(t, [b * s, h * d], [t.stride(1), 1], block, layout)


def _args(q, k, v, out, lse, cfg, scale, left, right):
    b, sq, hq, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    return (_descriptor(q, gf.BLOCK_M.value, cfg), _descriptor(k, cfg.block_n, cfg), _descriptor(v, cfg.block_n, cfg),
            out, lse, sq, sk, hq, hq // hk, out.stride(0), out.stride(1), out.stride(2), lse.stride(0),
            lse.stride(1), scale * gf.LOG2E, left, right)


def forward(q, k, v, *, scale: float, causal: bool, window, cfg: Optional[FwdConfig] = None, out=None):
    """q (B, Sq, Hq, D), k/v (B, Sk, Hk, D) on an sm90 GPU -> out (B, Sq, Hq, D), lse float32 (B, Hq, Sq)."""
    left, right = int(window[0]), int(window[1])
    if causal:
        right = 0
    b, sq, hq, d = q.shape
    if cfg is None:
        cfg = config_for(d, q.dtype, left >= 0, right >= 0)
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty((b, hq, sq), device=q.device, dtype=torch.float32)
    if out.numel() == 0:
        return out, lse.fill_(float("-inf"))
    grid = (triton_cdiv(sq, gf.CONSUMERS.value * gf.BLOCK_M.value), b * hq)
    gf.attn_fwd_kernel[grid](*_args(q, k, v, out, lse, cfg, scale, max(left, 0), max(right, 0)),
                             **cfg.constexprs(), num_warps=4, maxnreg=cfg.maxnreg)
    return out, lse


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


# --------------------------------------------------------------------------------------- ahead of time
def _signature(cfg: FwdConfig) -> dict:
    """The kernel's argument types as the Triton JIT would specialize them for a real call (descriptor block
    shapes and shared layouts included), taken from dummy CPU tensors so no GPU is needed."""
    from triton.runtime.jit import mangle_type
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16}[cfg.dtype]
    x = torch.empty((1, 256, 1, cfg.head_dim), dtype=dt)
    qd, kd = _descriptor(x, gf.BLOCK_M.value, cfg), _descriptor(x, cfg.block_n, cfg)
    ptr = "*" + ("bf16" if cfg.dtype == "bf16" else "fp16")
    sig = {"q_desc": mangle_type(qd), "k_desc": mangle_type(kd), "v_desc": mangle_type(kd), "o_ptr": ptr,
           "lse_ptr": "*fp32"}
    for n in ("seqlen_q", "seqlen_k", "n_heads", "group", "stride_ob", "stride_om", "stride_oh", "stride_lb",
              "stride_lh"):
        sig[n] = "i32"
    sig.update(qk_scale="fp32", left="i32", right="i32")
    for n, val in cfg.constexprs().items():
        sig[n] = "constexpr"
    return sig


def compile_for_target(cfg: FwdConfig, capability: int = 90):
    """triton.compile for sm_{capability}a without a GPU: -> the CompiledKernel (asm: ttgir, ptx, cubin)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    src = GluonASTSource(gf.attn_fwd_kernel, _signature(cfg), constexprs=cfg.constexprs())
    return triton.compile(src, target=GPUTarget("cuda", capability, 32),
                          options=dict(num_warps=4, maxnreg=cfg.maxnreg))


def is_compile_error(e: Exception) -> bool:
    """``e`` is Triton's refusal to compile the Gluon kernel (then the op falls back to the tl kernel)."""
    from triton.compiler.errors import CompilationError

    return isinstance(e, CompilationError)
