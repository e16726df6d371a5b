"""flash_attn_func / flash_attn_varlen_func on top of the compiled CPU ops."""

from typing import Optional, Sequence, Tuple

import torch

from . import _reference
from ._ops import ops

SUPPORTED = {
    "dtypes": (torch.float32, torch.bfloat16),
    "head_dims": tuple(range(8, 257, 8)),
    "devices": ("cpu",),
}


def cpu_isa(head_dim: int = 128) -> str:
    """Kernel a call with this head dim uses now: "avx512" or "portable" (see FLASH_ATTN2_CPU_ISA)."""
    return ops.cpu_isa(int(head_dim))


def _reject_unsupported(dropout_p: float, alibi_slopes, return_attn_probs: bool) -> None:
    if dropout_p != 0.0:
        raise NotImplementedError(
            f"flash_attn2 (cpu): dropout_p={dropout_p} is not supported; only dropout_p=0.0 is")
    if alibi_slopes is not None:
        raise NotImplementedError("flash_attn2 (cpu): alibi_slopes is not supported; pass alibi_slopes=None")
    if return_attn_probs:
        raise NotImplementedError(
            "flash_attn2 (cpu): return_attn_probs=True is not supported (probabilities are never "
            "materialised); use return_softmax_lse=True to get the log-sum-exp")


def _check_devices(**tensors: torch.Tensor) -> None:
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.device.type not in SUPPORTED["devices"]:
            raise ValueError(
                f"flash_attn2 (cpu): {name} is on device '{t.device}'; this build runs on "
                f"{', '.join(SUPPORTED['devices'])} tensors only")


def _window(window_size: Sequence[int]) -> Tuple[int, int]:
    try:
        left, right = (int(w) for w in window_size)
    except (TypeError, ValueError):
        raise ValueError(
            f"flash_attn2 (cpu): window_size must be a pair (left, right) of ints, -1 = unbounded; "
            f"got {window_size!r}") from None
    return left, right


def _scale(q: torch.Tensor, softmax_scale: Optional[float]) -> float:
    return q.shape[-1] ** -0.5 if softmax_scale is None else float(softmax_scale)


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _grads(inputs, outputs, grad_outputs):
    """Gradients of the reference recomputation with respect to the inputs that need them."""
    wanted = [t for t in inputs if t.requires_grad]
    got = iter(torch.autograd.grad(outputs, wanted, grad_outputs, allow_unused=True))
    return [next(got) if t.requires_grad else None for t in inputs]


class _FlashAttnFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale, causal, window, softcap):
        out, lse = ops.fwd(q, k, v, scale, causal, window[0], window[1], softcap, True)
        ctx.save_for_backward(q, k, v)
        ctx.args = (scale, causal, window, softcap)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_(n) for t, n in zip(ctx.saved_tensors, ctx.needs_input_grad)]
            out, lse = _reference.attention(*inputs, *ctx.args)
            grads = _grads(inputs, (out, lse), (grad_out, grad_lse))
        return (*grads, None, None, None, None)


class _FlashAttnVarlenFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_q, cu_k, max_q, max_k, scale, causal, window, softcap):
        out, lse = ops.varlen_fwd(q, k, v, cu_q, cu_k, max_q, max_k, scale, causal, window[0],
                                  window[1], softcap, True)
        ctx.save_for_backward(q, k, v, cu_q, cu_k)
        ctx.args = (scale, causal, window, softcap)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        q, k, v, cu_q, cu_k = ctx.saved_tensors
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_(n) for t, n in zip((q, k, v), ctx.needs_input_grad)]
            out, lse = _reference.varlen_attention(*inputs, cu_q, cu_k, *ctx.args)
            grads = _grads(inputs, (out, lse), (grad_out, grad_lse))
        return (*grads, None, None, None, None, None, None, None, None)


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                    softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False,
                    return_softmax_lse=False):
    """q (B, Sq, Hq, D), k/v (B, Sk, Hk, D) -> out (B, Sq, Hq, D) [, lse float32 (B, Hq, Sq)].

    Causal and windows are aligned bottom-right (query i sits on key i + Sk - Sq); rows that see
    no key give out 0 and lse -inf. ``deterministic`` is accepted and ignored (the forward is
    deterministic).
    """
    _reject_unsupported(dropout_p, alibi_slopes, return_attn_probs)
    _check_devices(q=q, k=k, v=v)
    scale, window = _scale(q, softmax_scale), _window(window_size)
    if _needs_grad(q, k, v):
        out, lse = _FlashAttnFn.apply(q, k, v, scale, bool(causal), window, float(softcap))
    else:
        out, lse = ops.fwd(q, k, v, scale, bool(causal), window[0], window[1], float(softcap),
                           bool(return_softmax_lse))
    return (out, lse) if return_softmax_lse else out


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                           dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                           softcap=0.0, alibi_slopes=None, deterministic=False,
                           return_attn_probs=False, return_softmax_lse=False):
    """Packed q (total_q, Hq, D), k/v (total_k, Hk, D), int32 cu_seqlens (batch+1)
    -> out (total_q, Hq, D) [, lse float32 (Hq, total_q)]."""
    _reject_unsupported(dropout_p, alibi_slopes, return_attn_probs)
    _check_devices(q=q, k=k, v=v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k)
    scale, window = _scale(q, softmax_scale), _window(window_size)
    if _needs_grad(q, k, v):
        out, lse = _FlashAttnVarlenFn.apply(q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q),
                                            int(max_seqlen_k), scale, bool(causal), window,
                                            float(softcap))
    else:
        out, lse = ops.varlen_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q),
                                  int(max_seqlen_k), scale, bool(causal), window[0], window[1],
                                  float(softcap), bool(return_softmax_lse))
    return (out, lse) if return_softmax_lse else out
