"""torch.library custom ops (forward, backward, kv-cache) with fake impls and autograd, so the API composes with
torch.compile(fullgraph=True). Each op picks its implementation per device, eagerly, when it runs:

- CPU tensors: the compiled CPU kernel (``ops.fwd``/``ops.varlen_fwd``); backward by float32 recompute.
- CUDA tensors: the precompiled cubins of an AOT variant (``_aot_dispatch``: no Triton, no JIT) when the variant
  has them for this GPU, else Triton (the noarch ``torch-cuda`` variant). ``FLASH_ATTN2_CUDA_IMPL=auto|aot|triton``
  forces one (``aot`` raises when this GPU has no cubins).
- ``FLASH_ATTN2_CPU_IMPL=triton`` runs CPU tensors through the Triton kernels too; with ``TRITON_INTERPRET=1``
  that is how CI checks the GPU kernels on a machine without a GPU.

The namespace is ``<build namespace>_api`` (from ``_ops``) or derived from the package name, so two builds of
this kernel register side by side.
"""

import os
import re
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from . import _aot_dispatch, _kvcache, _reference

_triton_error: Optional[str] = None


def triton_launch():
    """The Triton host module, imported on first use (CPU-only installs need no Triton)."""
    global _triton_error
    try:
        from . import _triton_launch
        return _triton_launch
    except Exception as e:  # ImportError, or a Triton that cannot initialise here
        _triton_error = f"{type(e).__name__}: {e}"
        return None


_triton_found: Optional[bool] = None


def triton_available() -> bool:
    """Triton is installed (found, not imported: importing it is deferred to the first CUDA call). The search
    runs once: it walks sys.path, too slow for every call."""
    global _triton_found
    if _triton_found is None:
        import importlib.util
        _triton_found = importlib.util.find_spec("triton") is not None
    return _triton_error is None and _triton_found


def triton_shipped() -> bool:
    """This variant carries the Triton kernels (AOT variants leave them out) and Triton is installed."""
    import importlib.util
    return triton_available() and importlib.util.find_spec(f"{__package__}._triton_launch") is not None


def has_kernel(ops, name: str, key: str) -> bool:
    if ops is None:
        return False
    try:
        op = getattr(ops, name)
        return torch._C._dispatch_has_kernel_for_dispatch_key(op.default.name(), key)
    except (AttributeError, RuntimeError):
        return False


def namespace(package_name: str) -> str:
    try:
        from ._ops import add_op_namespace_prefix
        base = add_op_namespace_prefix("x").split("::", 1)[0]
    except Exception:
        base = re.sub(r"\W", "_", package_name.split(".", 1)[0]).strip("_") or "flash_attn2"
    return f"{base}_api"


@dataclass
class Ops:
    """The custom ops (what torch.compile, autograd and dispatch modes see) and their plain implementations."""
    fwd: Callable
    varlen_fwd: Callable
    kvcache_fwd: Callable
    fwd_impl: Optional[Callable] = None
    varlen_fwd_impl: Optional[Callable] = None
    kvcache_fwd_impl: Optional[Callable] = None


def direct(*tensors) -> bool:
    """A call may run the implementation without the custom-op dispatcher (about 10 us of host time per call, a
    third of a decode step's attention launch): plain tensors, nothing traced or transformed, no gradient needed.
    Anything else (torch.compile, FakeTensor, vmap, dispatch/function modes, autograd) goes through the op."""
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() or \
            torch._C._is_torch_function_mode_enabled():
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is not None and (type(t) is not torch.Tensor or (grad and t.requires_grad)
                              or torch._C._functorch.is_functorch_wrapped_tensor(t)):
            return False
    return True


_AOT = None  # the variant's CubinTable (set by register), None for variants without precompiled kernels
CUDA_IMPLS = ("auto", "aot", "triton")


def cuda_impl(device: torch.device) -> str:
    """"aot" or "triton" for a call on CUDA ``device``; RuntimeError naming what is missing when neither can run."""
    impl = os.environ.get("FLASH_ATTN2_CUDA_IMPL", "auto")
    if impl not in CUDA_IMPLS:
        raise ValueError(f"FLASH_ATTN2_CUDA_IMPL={impl!r}; valid: {', '.join(CUDA_IMPLS)}")
    if impl != "triton" and _AOT is not None and _AOT.covers(device):
        return "aot"
    aot_why = _aot_dispatch.why_unavailable() or (
        f"no precompiled kernels for compute capability {'.'.join(map(str, torch.cuda.get_device_capability(device)))}"
        f" (this build has sm_{', sm_'.join(a.replace('.', '') for a in _AOT.archs)})" if _AOT is not None else "")
    if impl == "aot":
        raise RuntimeError(f"flash_attn2: FLASH_ATTN2_CUDA_IMPL=aot but {aot_why}")
    if triton_available() and triton_launch() is not None:
        return "triton"
    raise RuntimeError(f"flash_attn2: no kernel for this GPU: {aot_why or 'no precompiled kernels'}, and Triton "
                       f"is not usable ({_triton_error or 'not installed'})")


def _use_triton(device: torch.device, ops) -> bool:
    if device.type == "cpu":
        return os.environ.get("FLASH_ATTN2_CPU_IMPL", "compiled") == "triton"
    return cuda_impl(device) == "triton"


def _use_aot(device: torch.device) -> bool:
    return device.type == "cuda" and cuda_impl(device) == "aot"


def _triton():
    t = triton_launch()
    if t is None:
        raise RuntimeError(f"flash_attn2: Triton is needed for this call and cannot be imported ({_triton_error})")
    return t


_cpu_kernel: dict = {}  # id(ops) -> whether the build registered a CPU kernel (asked once: ~6 us per ask)


def _need_compiled_cpu(ops):
    found = _cpu_kernel.get(id(ops))
    if found is None:
        found = _cpu_kernel[id(ops)] = has_kernel(ops, "fwd", "CPU")
    if not found:
        raise RuntimeError("flash_attn2: this build has no compiled CPU kernel (a GPU-only variant); CPU tensors "
                           "are not supported by it")


def register(package_name: str, ops, hopper_tiles: bool = False) -> Ops:
    ns = namespace(package_name)
    existing = getattr(torch.ops, ns)
    try:  # the package imported twice under one name: reuse what is registered
        return Ops(existing.fwd, existing.varlen_fwd, existing.kvcache_fwd)
    except (AttributeError, RuntimeError):
        pass
    tma = hopper_tiles  # flash-attn3 style (JIT): TMA descriptors and larger tiles on sm90
    global _AOT
    _AOT = _aot_dispatch.table(ops)  # this package's own cubins (flash-attn3's variants carry their own TMA ones)

    # ------------------------------------------------------------------------------------------- dense
    def fwd_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool, window_left: int,
            window_right: int, softcap: float) -> tuple[torch.Tensor, torch.Tensor]:
        if _use_aot(q.device):
            return _aot_dispatch.forward(_AOT, q, k, v, scale=scale, causal=causal,
                                         window=(window_left, window_right), softcap=softcap)
        if _use_triton(q.device, ops):
            hopper = tma and q.is_cuda and torch.cuda.get_device_capability(q.device)[0] == 9
            return _triton().forward(q, k, v, scale=scale, causal=causal, window=(window_left, window_right),
                                     softcap=softcap, use_tma=hopper, hopper_tiles=hopper)
        _need_compiled_cpu(ops)
        return ops.fwd(q, k, v, scale, causal, window_left, window_right, softcap, True)

    fwd = torch.library.custom_op(f"{ns}::fwd", mutates_args=())(fwd_impl)

    @fwd.register_fake
    def _(q, k, v, scale, causal, window_left, window_right, softcap):
        return torch.empty_like(q), q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32)

    @torch.library.custom_op(f"{ns}::bwd", mutates_args=())
    def bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
            lse: torch.Tensor, dlse: Optional[torch.Tensor], scale: float, causal: bool, window_left: int,
            window_right: int, softcap: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        window = (window_left, window_right)
        if q.device.type == "cpu" and not _use_triton(q.device, ops):
            return _reference.attention_grads(q, k, v, dout, scale, causal, window, softcap, dlse)
        if _use_aot(q.device):
            return _aot_dispatch.backward(_AOT, dout, q, k, v, out, lse, scale=scale, causal=causal, window=window,
                                          softcap=softcap, dlse=dlse)
        return _triton().backward(dout, q, k, v, out, lse, scale=scale, causal=causal, window=window,
                                  softcap=softcap, dlse=dlse)

    @bwd.register_fake
    def _(dout, q, k, v, out, lse, dlse, scale, causal, window_left, window_right, softcap):
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    def fwd_setup(ctx, inputs, output):
        q, k, v, *args = inputs
        ctx.save_for_backward(q, k, v, *output)
        ctx.args = args

    def fwd_backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = bwd(dout, q, k, v, out, lse, dlse, *ctx.args)
        return dq, dk, dv, None, None, None, None, None

    fwd.register_autograd(fwd_backward, setup_context=fwd_setup)

    # ------------------------------------------------------------------------------------------ varlen
    def varlen_fwd_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
                   max_q: int, max_k: int, scale: float, causal: bool, window_left: int, window_right: int,
                   softcap: float) -> tuple[torch.Tensor, torch.Tensor]:
        from ._checks import cu_values, values_now
        end = None
        if values_now("flash_attn_varlen_func", q.device):
            end = cu_values("flash_attn_varlen_func", cu_q, cu_k, q.shape[0], k.shape[0], max_q, max_k)
        window = (window_left, window_right)
        if _use_aot(q.device):
            out, lse = _aot_dispatch.forward(_AOT, q, k, v, scale=scale, causal=causal, window=window,
                                             softcap=softcap, cu_q=cu_q, cu_k=cu_k, max_q=max_q, max_k=max_k)
        elif _use_triton(q.device, ops):
            out, lse = _triton().forward(q, k, v, scale=scale, causal=causal, window=window, softcap=softcap,
                                         cu_q=cu_q, cu_k=cu_k, max_q=max_q, max_k=max_k)
        else:
            _need_compiled_cpu(ops)
            return ops.varlen_fwd(q, k, v, cu_q, cu_k, max_q, max_k, scale, causal, window_left, window_right,
                                  softcap, True)
        # Packed rows after the last sequence: out 0, lse -inf (every element written). Where the end was not
        # read on the host (CUDA, see _checks.values_now) it is compared on the device: no sync, graph-capturable.
        if end is None:
            tail = torch.arange(q.shape[0], device=q.device) >= cu_q[-1]
            out.masked_fill_(tail[:, None, None], 0)
            lse.masked_fill_(tail[None, :], float("-inf"))
        elif end < q.shape[0]:
            out[end:] = 0
            lse[:, end:] = float("-inf")
        return out, lse

    varlen_fwd = torch.library.custom_op(f"{ns}::varlen_fwd", mutates_args=())(varlen_fwd_impl)

    @varlen_fwd.register_fake
    def _(q, k, v, cu_q, cu_k, max_q, max_k, scale, causal, window_left, window_right, softcap):
        return torch.empty_like(q), q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)

    @torch.library.custom_op(f"{ns}::varlen_bwd", mutates_args=())
    def varlen_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                   lse: torch.Tensor, dlse: Optional[torch.Tensor], cu_q: torch.Tensor, cu_k: torch.Tensor,
                   max_q: int, max_k: int, scale: float,
                   causal: bool, window_left: int, window_right: int,
                   softcap: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        window = (window_left, window_right)
        if q.device.type == "cpu" and not _use_triton(q.device, ops):
            return _reference.varlen_attention_grads(q, k, v, dout, cu_q, cu_k, scale, causal, window, softcap,
                                                     dlse)
        if _use_aot(q.device):
            return _aot_dispatch.backward(_AOT, dout, q, k, v, out, lse, scale=scale, causal=causal, window=window,
                                          softcap=softcap, cu_q=cu_q, cu_k=cu_k, max_q=max_q, max_k=max_k,
                                          dlse=dlse)
        return _triton().backward(dout, q, k, v, out, lse, scale=scale, causal=causal, window=window,
                                  softcap=softcap, cu_q=cu_q, cu_k=cu_k, max_q=max_q, max_k=max_k, dlse=dlse)

    @varlen_bwd.register_fake
    def _(dout, q, k, v, out, lse, dlse, cu_q, cu_k, max_q, max_k, scale, causal, window_left, window_right,
          softcap):
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    def varlen_setup(ctx, inputs, output):
        q, k, v, cu_q, cu_k, *args = inputs
        ctx.save_for_backward(q, k, v, *output, cu_q, cu_k)
        ctx.args = args

    def varlen_backward(ctx, dout, dlse):
        q, k, v, out, lse, cu_q, cu_k = ctx.saved_tensors
        dq, dk, dv = varlen_bwd(dout, q, k, v, out, lse, dlse, cu_q, cu_k, *ctx.args)
        return (dq, dk, dv) + (None,) * 9

    varlen_fwd.register_autograd(varlen_backward, setup_context=varlen_setup)

    # ------------------------------------------------------------------------------------------ kv cache
    def kvcache_fwd_impl(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, k: Optional[torch.Tensor],
                    v: Optional[torch.Tensor], cache_seqlens: Optional[torch.Tensor],
                    block_table: Optional[torch.Tensor], scale: float, causal: bool, window_left: int,
                    window_right: int, softcap: float) -> tuple[torch.Tensor, torch.Tensor]:
        s_new = 0 if k is None else k.shape[1]
        if cache_seqlens is None:
            cache_seqlens = torch.full((q.shape[0],), _kvcache.capacity(k_cache, block_table), dtype=torch.int32,
                                       device=q.device)
        from ._checks import values_now
        if values_now(_kvcache.WHO, q.device):  # reading values syncs a GPU (see _checks.values_now)
            _kvcache.check_values(k_cache, cache_seqlens, s_new, block_table)
        _kvcache.append(k_cache, v_cache, k, v, cache_seqlens, block_table)
        seqlens = (cache_seqlens + s_new).to(torch.int32)
        window = (window_left, window_right)
        if _use_aot(q.device):
            return _aot_dispatch.forward(_AOT, q, k_cache, v_cache, scale=scale, causal=causal, window=window,
                                         softcap=softcap, seqused_k=seqlens, block_table=block_table)
        if _use_triton(q.device, ops):
            return _triton().forward(q, k_cache, v_cache, scale=scale, causal=causal, window=window,
                                     softcap=softcap, seqused_k=seqlens, block_table=block_table)
        _need_compiled_cpu(ops)
        b, sq, hq, d = q.shape
        kp, vp, cu_k, max_k = _kvcache.gather_packed(k_cache, v_cache, seqlens, block_table)
        cu_q = torch.arange(b + 1, dtype=torch.int32) * sq
        out, lse = ops.varlen_fwd(q.reshape(b * sq, hq, d), kp, vp, cu_q, cu_k, sq, max_k, scale, causal,
                                  window_left, window_right, softcap, True)
        return out.view(b, sq, hq, d), lse.view(hq, b, sq).permute(1, 0, 2).contiguous()

    kvcache_fwd = torch.library.custom_op(f"{ns}::kvcache_fwd", mutates_args=("k_cache", "v_cache"))(kvcache_fwd_impl)

    @kvcache_fwd.register_fake
    def _(q, k_cache, v_cache, k, v, cache_seqlens, block_table, scale, causal, window_left, window_right,
          softcap):
        return torch.empty_like(q), q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32)

    return Ops(fwd, varlen_fwd, kvcache_fwd, fwd_impl, varlen_fwd_impl, kvcache_fwd_impl)
