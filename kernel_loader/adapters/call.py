"""What one transformers attention call carries, read from its arguments (never from the transformers version).

The adapters ask three questions of every call (the contracts are in TRANSFORMERS.md):

- which keyword arguments change the math, and can the kernel honour them all? (``score_modifiers``; an argument
  nobody knows raises :class:`UnknownAttentionArguments` naming it, instead of being ignored);
- is the input packed (``cu_seq_lens_q/k``), and has the paged cache of continuous batching been written yet?
  (:func:`normalize_paged`: a ``PagedAttentionCache`` that arrives is updated here, the 5.22/5.23 contract; a
  per-layer ``cu_seq_lens_k`` dict without a cache is a call nobody can place and raises);
- what does the sdpa floor compute for such a call? (:func:`reference_attention` with flash-attn semantics,
  per sequence for packed input, with any bias or sinks applied), so a fallback never drops a mask or a bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..reference import flash_visibility

# Keyword arguments the adapters consume or that never change the attention output.
HANDLED = frozenset({
    "dropout", "scaling", "sliding_window", "softcap", "is_causal", "output_attentions",
    "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k",
    "cache", "read_index", "write_index", "block_table", "k_cache", "v_cache",
})
INERT = frozenset({
    "position_ids",  # read only to find packed sequences
    "use_cache", "output_hidden_states", "return_dict", "cache_position", "deterministic", "layer_idx",
    "logits_indices", "logits_processor_args", "input_ids", "token_type_ids", "past_key_values",
})
# Arguments that change the scores and that a flash kernel cannot apply: the call goes to the reference math.
SCORE_MODIFIERS = {
    "position_bias": "an additive position bias (position_bias)",
    "attention_bias": "an additive attention bias (attention_bias)",
    "s_aux": "attention sinks (s_aux)",
    "sinks": "attention sinks (sinks)",
}


class UnknownAttentionArguments(TypeError):
    """An attention call carried arguments the adapter cannot place: computing without them could be wrong."""


@dataclass(frozen=True)
class ScoreModifiers:
    bias: torch.Tensor | None = None  # additive, broadcastable to (B, H, Sq, Sk)
    sinks: torch.Tensor | None = None  # (H,) one extra logit per head, dropped after the softmax
    reasons: tuple[str, ...] = ()

    @property
    def any(self) -> bool:
        return bool(self.reasons)


_KNOWN = HANDLED | INERT | frozenset(SCORE_MODIFIERS)
_NO_MODIFIERS = ScoreModifiers()


def score_modifiers(label: str, module, kwargs: dict) -> ScoreModifiers:
    """Pop the score-changing arguments out of ``kwargs``; raise on any argument nobody here knows."""
    if not kwargs.keys() - INERT - HANDLED:  # the common call (once per layer): nothing to pop or refuse
        return _NO_MODIFIERS
    unknown = sorted(n for n, v in kwargs.items() if n not in _KNOWN and v is not None)
    if unknown:
        shown = ", ".join(f"{n}={_describe(kwargs[n])}" for n in unknown)
        raise UnknownAttentionArguments(
            f"{label}: {type(module).__name__} passed {shown} to the attention function; the kernel adapter does "
            f"not know whether it changes the attention, so it will not guess. Known arguments: "
            f"{', '.join(sorted(HANDLED | INERT | set(SCORE_MODIFIERS)))}. Use attn_implementation='sdpa' for this "
            "model, or report the model so the argument can be supported")
    bias = sinks = None
    reasons = []
    for name in SCORE_MODIFIERS:
        value = kwargs.pop(name, None)
        if value is None:
            continue
        reasons.append(SCORE_MODIFIERS[name])
        if name in ("s_aux", "sinks"):
            sinks = value
        else:
            bias = _add(bias, value)
    return ScoreModifiers(bias=bias, sinks=sinks, reasons=tuple(reasons))


def _add(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"Tensor{tuple(value.shape)}"
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__}[{len(value)}]"
    if isinstance(value, dict):
        return f"dict[{', '.join(map(str, value))}]"
    return type(value).__name__


# ---------------------------------------------------------------------------------------------- continuous batching

def is_paged_cache(cache) -> bool:
    return cache is not None and hasattr(cache, "layer_to_allocator") and callable(getattr(cache, "update", None))


def normalize_paged(label: str, module, key, value, kwargs: dict):
    """Bring a continuous-batching call to one shape: ``cu_seq_lens_k`` a tensor and ``max_length_k`` an int for
    this layer, the paged cache written (index path: key/value are then past + new) or, on the block-table path,
    ``block_table``/``k_cache``/``v_cache`` set for this layer. Returns (key, value).

    - a ``PagedAttentionCache`` in ``cache`` (transformers 5.22/5.23 pass it and expect the attention function to
      update it): ``cache.update`` runs here, exactly as transformers' own sdpa/flash functions do;
    - no cache and a tensor ``cu_seq_lens_k`` (5.24: the layer ran ``cache.update`` itself): nothing to do;
    - no cache and a per-layer-type dict: nobody wrote the cache and the layer's lengths are unknown -> error.
    """
    cache = kwargs.pop("cache", None)
    cu_k = kwargs.get("cu_seq_lens_k")
    if is_paged_cache(cache):
        key, value = cache.update(key_states=key, value_states=value, layer_idx=module.layer_idx, kwargs=kwargs)
    elif cache is not None:
        raise UnknownAttentionArguments(f"{label}: cache={type(cache).__name__} is not a paged cache; a dense "
                                        "cache is updated by the layer and never passed to attention")
    elif isinstance(cu_k, dict):
        raise UnknownAttentionArguments(
            f"{label}: cu_seq_lens_k is a per-layer-type dict ({', '.join(map(str, cu_k))}) but no paged cache "
            "arrived to select this layer's entry and write the new tokens; attention over the packed batch would "
            "be computed without its cache")
    for name in ("cu_seq_lens_k", "max_length_k"):
        if isinstance(kwargs.get(name), dict):
            raise UnknownAttentionArguments(f"{label}: {name} is still a per-layer dict after the cache update")
    return key, value


# ---------------------------------------------------------------------------------------------- reference math

def reference_attention(q, k, v, *, scale: float, causal: bool, window=(-1, -1), softcap: float = 0.0,
                        key_padding=None, bias=None, sinks=None) -> torch.Tensor:
    """Flash-attn semantics in plain torch, (B, H, S, D) in and out: bottom-right causal and windows, ``key_padding``
    (B, Sk) real tokens, softcap, an additive ``bias`` and per-head ``sinks``. Rows that see no key give 0, as the
    flash kernels do. SDPA does the work when there is no softcap and no sinks; eager math otherwise."""
    allowed = flash_visibility(q.shape[-2], k.shape[-2], causal=causal, window=window, device=q.device)[None, None]
    if key_padding is not None:
        allowed = allowed & key_padding.bool()[:, None, None, :]
    empty = ~allowed.any(-1, keepdim=True)
    allowed = allowed | empty  # avoid NaN rows; they are zeroed below
    if q.shape[1] != k.shape[1]:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    if (softcap and softcap > 0) or sinks is not None:
        s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
        if softcap and softcap > 0:
            s = softcap * torch.tanh(s / softcap)
        if bias is not None:
            s = s + bias.float()
        s = s.masked_fill(~allowed, float("-inf"))
        if sinks is not None:
            sink = sinks.float().reshape(1, -1, 1, 1).expand(s.shape[0], s.shape[1], s.shape[2], 1)
            p = torch.softmax(torch.cat([s, sink], -1), -1)[..., :-1]
        else:
            p = torch.softmax(s, -1)
        out = torch.matmul(p, v.float()).to(q.dtype)
    else:
        mask = allowed
        if bias is not None:
            mask = torch.where(allowed, bias.to(q.dtype), torch.finfo(q.dtype).min)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out.masked_fill(empty, 0.0)


def packed_reference(q, k, v, cu_q, cu_k, **kw) -> torch.Tensor:
    """Packed sequences (batch 1, (1, H, total, D)), each attended alone: its own bottom-right causal alignment and
    window. Returns (1, H, total_q, D)."""
    if kw.get("bias") is not None:
        raise UnknownAttentionArguments("a bias over packed sequences cannot be split per sequence here")
    out = q.new_zeros(q.shape)
    cu_q, cu_k = cu_q.tolist(), cu_k.tolist()
    for i in range(len(cu_q) - 1):
        a, b, c, d = cu_q[i], cu_q[i + 1], cu_k[i], cu_k[i + 1]
        if b > a:
            out[:, :, a:b] = reference_attention(q[:, :, a:b], k[:, :, c:d], v[:, :, c:d], **kw)
    return out
