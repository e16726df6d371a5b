"""The dense forward custom op of flash-attn3: the Gluon warp-specialized kernel on sm90 when it computes the
call exactly (see ``_gluon_launch.unsupported_reason``), else the shared Triton ``tl`` kernel (``ops.fwd``).

The choice is made inside the op, eagerly, on real tensors (it reads strides and alignment), so torch.compile
traces one op either way. Gradients come from the shared backward op, which needs only (q, k, v, out, lse).
``FLASH_ATTN3_GLUON=0`` turns the Gluon path off. If the Gluon kernel cannot be compiled by the installed Triton
(its experimental API moves between releases), the reason is kept, said once, and the ``tl`` kernel runs.
The Gluon kernel is JIT-only: the precompiled (AOT) variants leave its modules out (they import Triton), and
there the dense forward is the shared op itself (:func:`shipped` is False).
"""

import importlib.util
import os
import warnings
from typing import Callable, Optional

import torch

_broken: Optional[str] = None  # why the Gluon kernel cannot be built with this Triton (set on first failure)


_shipped: Optional[bool] = None


def shipped() -> bool:
    """This variant carries the Gluon kernel's modules (the noarch Triton variant does; AOT variants do not)."""
    global _shipped
    if _shipped is None:
        _shipped = importlib.util.find_spec(f"{__package__}._gluon_launch") is not None
    return _shipped


def gluon_reason(q, k, v, scale: float, softcap: float) -> Optional[str]:
    """None when this call goes to the Gluon kernel; else why the tl kernel takes it."""
    if os.environ.get("FLASH_ATTN3_GLUON", "1") == "0":
        return "FLASH_ATTN3_GLUON=0"
    if _broken is not None:
        return _broken
    if not shipped():
        return "this build ships no Gluon kernel (a precompiled variant)"
    if not q.is_cuda or torch.cuda.get_device_capability(q.device)[0] != 9:
        return "not an sm90 CUDA tensor"
    if not scale > 0:
        return f"softmax_scale {scale} (the kernel takes row maxima on unscaled scores)"
    if k.shape[1] == 0:
        return "no keys"
    try:
        from . import _gluon_launch
    except Exception as e:  # no Gluon in this Triton
        return _disable(f"Gluon unavailable ({type(e).__name__}: {e})")
    return _gluon_launch.unsupported_reason(q, k, v, softcap)


def _disable(reason: str) -> str:
    global _broken
    _broken = reason
    warnings.warn(f"flash_attn3: Hopper Gluon kernel off, using the Triton tl kernel: {reason}", stacklevel=3)
    return reason


def register(ns: str, tl_fwd: Callable):
    """``{ns}::dense_fwd`` with the signature of the shared ``fwd`` op; autograd through ``{ns}::bwd``."""
    existing = getattr(torch.ops, ns)
    if hasattr(existing, "dense_fwd"):
        return existing.dense_fwd

    @torch.library.custom_op(f"{ns}::dense_fwd", mutates_args=())
    def dense_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool, window_left: int,
                  window_right: int, softcap: float) -> tuple[torch.Tensor, torch.Tensor]:
        if gluon_reason(q, k, v, scale, softcap) is None:
            from . import _gluon_launch
            try:
                return _gluon_launch.forward(q, k, v, scale=scale, causal=causal, window=(window_left, window_right))
            except Exception as e:
                if not _gluon_launch.is_compile_error(e):
                    raise
                _disable(f"Gluon compile failed ({str(e).strip().splitlines()[-1][:200]})")
        return tl_fwd(q, k, v, scale, causal, window_left, window_right, softcap)

    @dense_fwd.register_fake
    def _(q, k, v, scale, causal, window_left, window_right, softcap):
        return torch.empty_like(q), q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32)

    def setup(ctx, inputs, output):
        q, k, v, *args = inputs
        ctx.save_for_backward(q, k, v, *output)
        ctx.args = args

    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = getattr(torch.ops, ns).bwd(dout, q, k, v, out, lse, dlse, *ctx.args)
        return dq, dk, dv, None, None, None, None, None

    dense_fwd.register_autograd(backward, setup_context=setup)
    return dense_fwd
