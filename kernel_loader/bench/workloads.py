"""The workloads: prefill, decode through generate(), continuous batching, and attention alone."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import torch

from .calls import KernelCalls, caught_kernel_warnings
from .models import SDPA
from .timing import alternate, sync

# ------------------------------------------------------------------------------------------------ workloads

@dataclass
class Impl:
    """One attention implementation under test: the attn_implementation string and the modules to count."""
    name: str  # attn_implementation string ("sdpa", "org/repo", "paged|org/repo", or a registered name)
    modules: tuple = ()
    label: str | None = None
    routing: bool | None = None  # kernel_loader.adapters.routing on/off while this one runs (None: leave as is)

    @property
    def key(self) -> str:
        return self.label or self.name


def _use(model, impl: Impl) -> None:
    if impl.routing is not None:
        from ..adapters import routing

        routing.set_enabled(impl.routing)
    if model.config._attn_implementation != impl.name:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # transformers on the "paged|" prefix, every switch
            model.set_attn_implementation(impl.name)


def _preparer(model, impls):
    by_key = {i.key: i for i in impls}
    return lambda key: _use(model, by_key[key])


def _check(model, impls, run_once) -> dict:
    """One untimed run per implementation: kernel call counts, fallback warnings, and its output."""
    out = {}
    for impl in impls:
        _use(model, impl)
        with caught_kernel_warnings() as warned, KernelCalls(impl.modules, model) as calls:
            try:
                result = run_once()
            except Exception as e:  # reported, and this implementation is left out of the timing
                if impl is impls[0]:
                    raise
                result = _Failed(f"{type(e).__name__}: {e}"[:400])
        out[impl.key] = {"calls": dict(calls.counts), "kernel_calls": calls.total, "fallback_warnings": warned,
                         "result": result}
    return out


@dataclass
class _Failed:
    error: str


def _timed(impls, check) -> list[Impl]:
    """The implementations whose check run worked."""
    return [i for i in impls if "error" not in check[i.key]]


def _match(check: dict, baseline: str, compare) -> None:
    ref = check[baseline].pop("result")
    for k, v in check.items():
        if k != baseline:
            result = v.pop("result")
            v.update({"error": result.error} if isinstance(result, _Failed) else compare(result, ref))


def _token_match(ours: torch.Tensor, ref: torch.Tensor) -> dict:
    same = (ours == ref).all(-1)
    diff = (ours != ref).any(0).nonzero()
    return {"greedy_tokens_match": bool(same.all()), "sequences_matching": f"{int(same.sum())}/{same.numel()}",
            "first_divergence": int(diff[0]) if diff.numel() else None}


def prefill(model, impls: list[Impl], length: int, *, rounds: int, device: str, batch: int = 1,
            min_run_s: float = 0.0, seed: int = 1) -> dict:
    """Tokens/s of one forward over ``batch x length`` prompt tokens (logits for the last position only)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, length), generator=g).to(device)

    def forward():
        with torch.inference_mode():
            return model(ids, logits_to_keep=1).logits.float()

    check = _check(model, impls, forward)

    def cmp(ours, ref):
        err = (ours - ref).abs().max().item()
        return {"logits_max_abs_diff": err, "argmax_match": bool((ours.argmax(-1) == ref.argmax(-1)).all())}

    _match(check, impls[0].key, cmp)
    repeats = _repeats(model, impls[0], forward, min_run_s, device)

    def run():
        for _ in range(repeats):
            forward()

    impls = _timed(impls, check)
    alt = alternate({i.key: run for i in impls}, rounds, device=device, work=repeats * ids.numel(),
                    prepare=_preparer(model, impls))
    return {"workload": "prefill", "batch": batch, "tokens": length, "repeats_per_round": repeats,
            **alt.summary(impls[0].key), "check": check}


def _repeats(model, impl, fn, min_run_s, device) -> int:
    if min_run_s <= 0:
        return 1
    _use(model, impl)
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return max(1, int(min_run_s / max(time.perf_counter() - t, 1e-6) + 0.999))


class _StepClock:
    """A logits processor that only records when each generation step's logits are ready."""

    def __init__(self):
        self.t: list[float] = []

    def __call__(self, input_ids, scores):
        self.t.append(time.perf_counter())
        return scores


def decode(model, impls: list[Impl], batch: int, context: int, new_tokens: int, *, rounds: int, device: str,
           seed: int = 2) -> dict:
    """Decode tokens/s through ``generate()`` (greedy) after a ``context``-token prompt: the steps after the first
    generated token (the prefill) are timed, ``batch x (new_tokens - 1)`` tokens."""
    from transformers import LogitsProcessorList

    if new_tokens < 2:
        raise ValueError(f"decode needs new_tokens >= 2 (the first token is the prefill's), got {new_tokens}")
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, context), generator=g).to(device)
    mask = torch.ones_like(ids)
    last = {}

    def gen():
        clock = _StepClock()
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 do_sample=False, pad_token_id=0, eos_token_id=None,
                                 logits_processor=LogitsProcessorList([clock]))
        sync(device)
        last["s"] = clock.t[-1] - clock.t[0]
        return out[:, context:].cpu()

    check = _check(model, impls, gen)
    _match(check, impls[0].key, _token_match)

    def run():
        gen()
        return last["s"]

    impls = _timed(impls, check)
    alt = alternate({i.key: run for i in impls}, rounds, device=device, work=batch * (new_tokens - 1),
                    prepare=_preparer(model, impls))
    return {"workload": "decode", "batch": batch, "context": context, "new_tokens": new_tokens,
            **alt.summary(impls[0].key), "check": check}


def _fields(cls) -> set:
    import dataclasses
    import inspect
    if dataclasses.is_dataclass(cls):
        return {f.name for f in dataclasses.fields(cls)}
    return set(inspect.signature(cls).parameters)


def continuous_batching(model, impls: list[Impl], requests: int, lengths: tuple[int, int], new_tokens: int, *,
                        rounds: int, device: str, page_size: int = 16, max_batch_tokens: int = 256,
                        seed: int = 3) -> dict:
    """Generated tokens/s of ``generate_batch`` over ``requests`` prompts with lengths uniform in ``lengths``."""
    from transformers import ContinuousBatchingConfig, GenerationConfig

    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(lengths[0], lengths[1] + 1, (requests,), generator=g).tolist()
    prompts = [torch.randint(1, model.config.vocab_size, (n,), generator=g).tolist() for n in lens]
    need = sum(-(-(n + new_tokens) // page_size) for n in lens) + requests
    gen = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=-1, pad_token_id=0)
    # max_blocks_per_request=0: the index-based cache path for every implementation (the block-table decode path
    # needs flash_attn_with_kvcache semantics that transformers wires only for its own flash kernels)
    cb = dict(block_size=page_size, num_blocks=need, max_batch_tokens=max_batch_tokens, max_blocks_per_request=0)

    def config():
        # The paged-attention adapter lays the cache out into its own pages on the host each call, which a CUDA
        # graph cannot hold: graphs off for it (where this transformers has the switch), transformers' choice else.
        paged = "paged-attention" in str(model.config._attn_implementation)
        graphs = {"use_cuda_graph": False} if paged and "use_cuda_graph" in _fields(ContinuousBatchingConfig) else {}
        return ContinuousBatchingConfig(**cb, **graphs)

    def run_batch():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            out = model.generate_batch(inputs=prompts, generation_config=gen, continuous_batching_config=config(),
                                       progress_bar=False)
        by_index = sorted(out, key=lambda r: int(r.split("_")[-1]))
        tokens = [list(out[k].generated_tokens) for k in by_index]
        done = sum(len(t) == new_tokens for t in tokens)
        if done != requests:  # a failed request ends early: its "throughput" would be a lie
            raise RuntimeError(f"continuous batching with {model.config._attn_implementation}: {done} of {requests} "
                               f"requests generated {new_tokens} tokens (the others failed; see the log above)")
        return tokens

    def cmp(ours, ref):
        same = [a == b for a, b in zip(ours, ref)]
        return {"greedy_tokens_match": all(same) and len(ours) == len(ref),
                "sequences_matching": f"{sum(same)}/{len(ref)}",
                "generated_tokens": sum(len(x) for x in ours)}

    check = _check(model, impls, run_batch)
    _match(check, impls[0].key, cmp)

    def run():
        run_batch()

    impls = _timed(impls, check)
    alt = alternate({i.key: run for i in impls}, rounds, device=device, work=requests * new_tokens,
                    prepare=_preparer(model, impls))
    return {"workload": "continuous_batching", "requests": requests, "prompt_lengths": list(lengths),
            "new_tokens": new_tokens, "page_size": page_size, "max_batch_tokens": max_batch_tokens,
            **alt.summary(impls[0].key), "check": check}

# ------------------------------------------------------------------------------------------------ kernel alone

def attention_alone(module, batch: int, q_len: int, kv_len: int, heads: tuple[int, int], head_dim: int, *,
                    dtype: torch.dtype, device: str, rounds: int, min_run_s: float = 0.05, seed: int = 4) -> dict:
    """The kernel's ``flash_attn_func`` against ``F.scaled_dot_product_attention`` on the same causal attention
    (bottom-right: a decode query sees every key), no model around it; what kernel_loader/adapters/routing.py cites."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    hq, hk = heads
    q = torch.randn(batch, q_len, hq, head_dim, generator=g).to(device, dtype)
    k = torch.randn(batch, kv_len, hk, head_dim, generator=g).to(device, dtype)
    v = torch.randn(batch, kv_len, hk, head_dim, generator=g).to(device, dtype)
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    causal = q_len > 1

    def kernel():
        return module.flash_attn_func(q, k, v, causal=causal)

    def sdpa():
        return F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal and q_len == kv_len,
                                              enable_gqa=hq != hk).transpose(1, 2)

    with torch.inference_mode():
        err = float((kernel().float() - sdpa().float()).abs().max())
        sync(device)
        t = time.perf_counter()
        sdpa()
        sync(device)
        reps = max(1, int(min_run_s / max(time.perf_counter() - t, 1e-6) + 0.999))

        def many(fn):
            def run():
                for _ in range(reps):
                    fn()
            return run

        alt = alternate({SDPA: many(sdpa), "kernel": many(kernel)}, rounds, device=device, work=reps)
    s = alt.summary()
    for impl in alt.order:  # calls per second -> microseconds per call
        s[impl]["us_per_call"] = {k: 1e6 / v for k, v in s[impl].pop("tokens_per_s").items()}
        s[impl]["us_per_call"]["min"], s[impl]["us_per_call"]["max"] = (s[impl]["us_per_call"]["max"],
                                                                       s[impl]["us_per_call"]["min"])
    return {"workload": "attention", "batch": batch, "q_len": q_len, "kv_len": kv_len, "heads": list(heads),
            "head_dim": head_dim, "dtype": str(dtype).removeprefix("torch."), "calls_per_round": reps,
            "max_abs_diff": err, **s}
