"""Model-level benchmark: what a transformers user gets from a Hub kernel against sdpa, in one process.

Method (the only one whose ratios we print): the implementations run alternately, round by round (A B A B ...,
or A B C A B C ... for three), on one model with random weights, so drift in the machine's load hits both sides
alike. Each implementation reports the median and min-max of its rounds; each round gives one ratio (sdpa time /
ours, > 1 = ours faster) and the median of those per-round ratios is the figure. Before timing, one untimed run per
implementation counts the kernel's calls (its torch ops seen by a dispatch mode, plus its Python entry points) and
records the greedy tokens, so a figure always comes with proof the kernel ran and that its output matched sdpa's.

Workloads: prefill (one forward of S tokens, ``logits_to_keep=1``), decode through ``generate()`` (tokens/s of the
steps after the first, timed by a logits processor), continuous batching through ``generate_batch`` (generated
tokens/s over many requests of mixed lengths). ``kernel-loader bench SPEC`` and ``scripts/bench_model.py`` wrap it.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

SDPA = "sdpa"

# ------------------------------------------------------------------------------------------------ model shapes

# name -> (description, config kwargs). "small" sizes keep the attention shape of the real model (head dim, GQA
# ratio, window layers) with fewer, narrower layers so a 2-core CPU measures attention rather than the MLP.
MODELS = {
    "llama-1b": ("Llama-3.2-1B shape: hidden 2048, 16 layers, 32 q / 8 kv heads x 64, MLP 8192, vocab 128256",
                 dict(family="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
                      rope_theta=500000.0, tie_word_embeddings=True, max_position_embeddings=32768)),
    "llama-small": ("Llama-3.2-1B attention shape (head dim 64, GQA 4:1), narrow: hidden 512, 4 layers, 8 q / 2 kv "
                    "heads, MLP 1024, vocab 1000",
                    dict(family="llama", hidden_size=512, intermediate_size=1024, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=2, head_dim=64, vocab_size=1000,
                         rope_theta=500000.0, max_position_embeddings=8192)),
    "qwen3-small": ("Qwen3-like: head dim 128, GQA 2:1, q/k norms, sliding-window (512) and full layers "
                    "alternating; hidden 512, 4 layers, 4 q / 2 kv heads, MLP 1024, vocab 1000",
                    dict(family="qwen3", hidden_size=512, intermediate_size=1024, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=128, vocab_size=1000,
                         use_sliding_window=True, sliding_window=512, max_window_layers=0,
                         layer_types=["sliding_attention", "full_attention"] * 2, max_position_embeddings=8192)),
    "tiny": ("tiny Llama for tests: hidden 128, 2 layers, 4 q / 2 kv heads x 32, vocab 160",
             dict(family="llama", hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=32, vocab_size=160, max_position_embeddings=2048)),
}


def build_model(name: str, dtype: torch.dtype, device: str, *, head_dim: int | None = None, seed: int = 0):
    """A transformers causal LM with random weights from one of :data:`MODELS` (``head_dim`` overrides)."""
    if name not in MODELS:
        raise ValueError(f"unknown model shape {name!r}; valid: {', '.join(MODELS)}")
    kw = dict(MODELS[name][1])
    family = kw.pop("family")
    if head_dim is not None:
        kw["head_dim"] = int(head_dim)
    if family == "llama":
        from transformers import LlamaConfig as Config, LlamaForCausalLM as Model
    else:
        from transformers import Qwen3Config as Config, Qwen3ForCausalLM as Model
    torch.manual_seed(seed)
    cfg = Config(**kw)
    with torch.device(device):
        model = Model(cfg)
    return model.to(dtype).eval()


# ------------------------------------------------------------------------------------------------ timing

@dataclass
class Stat:
    median: float
    min: float
    max: float

    @classmethod
    def of(cls, xs):
        return cls(statistics.median(xs), min(xs), max(xs))


@dataclass
class Alternated:
    """Seconds per round for each implementation, measured alternately; ratios are baseline / impl per round."""
    order: list[str]
    seconds: dict[str, list[float]]
    work: float  # tokens per run (to turn seconds into tokens/s)

    def tokens_per_s(self, impl: str) -> Stat:
        xs = [self.work / s for s in self.seconds[impl]]
        return Stat.of(xs)

    def ratios(self, impl: str, baseline: str = SDPA) -> list[float]:
        return [b / a for a, b in zip(self.seconds[impl], self.seconds[baseline])]

    def summary(self, baseline: str = SDPA) -> dict:
        out = {"rounds": len(self.seconds[self.order[0]]), "order": self.order}
        for impl in self.order:
            out[impl] = {"tokens_per_s": asdict(self.tokens_per_s(impl)),
                         "seconds": [round(s, 6) for s in self.seconds[impl]]}
            if impl != baseline and baseline in self.seconds:
                r = self.ratios(impl, baseline)
                out[impl]["ratio_vs_" + baseline] = asdict(Stat.of(r))
                out[impl]["ratio_per_round"] = [round(x, 4) for x in r]
        return out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def alternate(runs: dict[str, Callable[[], float | None]], rounds: int, *, warmup: int = 1, device: str = "cpu",
              work: float = 1.0, prepare: Callable[[str], None] | None = None) -> Alternated:
    """Run each callable once per round, in order, ``rounds`` times (after ``warmup`` untimed rounds).
    ``prepare(name)`` runs untimed before each call (switching the model's implementation). A callable may return
    its own measured seconds (e.g. decode steps only); otherwise its wall time is used."""
    seconds = {k: [] for k in runs}
    for r in range(warmup + rounds):
        for name, fn in runs.items():
            if prepare is not None:
                prepare(name)
            sync(device)
            t = time.perf_counter()
            own = fn()
            sync(device)
            if r >= warmup:
                seconds[name].append(own if own is not None else time.perf_counter() - t)
    return Alternated(order=list(runs), seconds=seconds, work=work)


# ------------------------------------------------------------------------------------------------ proof it ran

_BUILTIN_NAMESPACES = {"aten", "prims", "prim", "_c10d_functional", "profiler", "quantized", "debugprims"}


class KernelCalls(contextlib.AbstractContextManager):
    """Counts, while active, the kernel's torch ops (every op outside aten/prims seen by a dispatch mode, e.g.
    ``_flash_attn2_cpu_<id>_api::fwd``) and calls of the Python entry points of ``modules`` (for kernels written
    in plain torch ops, e.g. the paged kernel's CPU path, which the adapter looks up per call). Dispatch modes are
    per thread: with ``model`` its forward enters the mode in whichever thread runs it (continuous batching runs
    the model in a worker thread)."""

    def __init__(self, modules=(), model=None):
        self.modules = [m for m in modules if m is not None]
        self.model = model
        self.counts: dict[str, int] = {}
        self._saved = []
        self._active = threading.local()

    def _mode(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        counts = self.counts

        class _Count(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func.namespace not in _BUILTIN_NAMESPACES:
                    key = f"{func.namespace}::{func._opname}"
                    counts[key] = counts.get(key, 0) + 1
                return func(*args, **(kwargs or {}))

        return _Count()

    @contextlib.contextmanager
    def counting(self):
        """The dispatch mode in this thread, once (nested entries do not count twice)."""
        if getattr(self._active, "on", False):
            yield
            return
        self._active.on = True
        try:
            with self._mode():
                yield
        finally:
            self._active.on = False

    def __enter__(self):
        counts = self.counts
        for m in self.modules:
            for n in [n for n in getattr(m, "__all__", ()) if callable(getattr(m, n, None))
                      and not isinstance(getattr(m, n), type)]:
                real = getattr(m, n)

                def wrapped(*a, _real=real, _key=f"{m.__name__}.{n}", **k):
                    counts[_key] = counts.get(_key, 0) + 1
                    return _real(*a, **k)

                self._saved.append((m, n, real))
                setattr(m, n, wrapped)
        if self.model is not None:
            forward = self.model.forward

            def counted_forward(*a, **k):
                with self.counting():
                    return forward(*a, **k)

            self.model.forward = counted_forward
        self._outer = self.counting()
        self._outer.__enter__()
        return self

    def __exit__(self, *exc):
        self._outer.__exit__(*exc)
        if self.model is not None:
            del self.model.forward  # back to the class's method
        for m, n, real in reversed(self._saved):
            setattr(m, n, real)
        self._saved.clear()
        return False

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@contextlib.contextmanager
def caught_kernel_warnings():
    """Collect kernel_loader's per-call fallback warnings ("...; using sdpa for such calls") as strings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seen: list[str] = []
        yield seen
    for w in caught:
        msg = str(w.message)
        if msg.startswith("kernel_loader:") and msg not in seen:
            seen.append(msg)


# ------------------------------------------------------------------------------------------------ workloads

@dataclass
class Impl:
    """One attention implementation under test: the attn_implementation string and the modules to count."""
    name: str  # attn_implementation string ("sdpa", "org/repo", "paged|org/repo", or a registered name)
    modules: tuple = ()
    label: str | None = None
    routing: bool | None = None  # kernel_loader.routing on/off while this one runs (None: leave as is)

    @property
    def key(self) -> str:
        return self.label or self.name


def _use(model, impl: Impl) -> None:
    if impl.routing is not None:
        from . import routing

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
    cb = ContinuousBatchingConfig(block_size=page_size, num_blocks=need, max_batch_tokens=max_batch_tokens,
                                  max_blocks_per_request=0)

    def run_batch():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            out = model.generate_batch(inputs=prompts, generation_config=gen, continuous_batching_config=cb,
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


# ------------------------------------------------------------------------------------------------ machine

def machine() -> dict:
    """What the figures were measured on, including how busy the machine was."""
    info = {"host": platform.node(), "cpu": _cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version()}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    info["load_average"] = list(os.getloadavg())
    return info


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def contention(before: list[float], after: list[float], cores: int | None) -> str:
    """One line on how contended the run was: load averages (1 min) around it against the core count."""
    cores = cores or 1
    peak = max(before[0], after[0])
    word = "quiet" if peak < 0.5 * cores else ("busy" if peak < 1.5 * cores else "heavily contended")
    return (f"load average {before[0]:.2f} -> {after[0]:.2f} (1 min) on {cores} cores: {word}; "
            f"A/B alternation spreads it over both sides")


# ------------------------------------------------------------------------------------------------ one spec (CLI)

def kernel_impls(name: str, module, label: str, device: str, dtype: torch.dtype, phase: str) -> list[Impl]:
    """The kernel alone (routing off) and, where a route sends this class to sdpa here, what the model gets."""
    from . import routing

    if routing.route_class(device.split(":")[0], dtype, phase == "decode") is None:
        return [Impl(name, (module,), label, routing=False)]
    return [Impl(name, (module,), f"{label} (kernel alone)", routing=False),
            Impl(name, (module,), f"{label} (as routed)", routing=True)]


@dataclass
class SpecBench:
    """What ``kernel-loader bench SPEC`` measures."""
    spec: str
    device: str = "cpu"
    dtype: str = "bfloat16"
    model: str = "llama-small"
    head_dim: int | None = None
    prefill: list = field(default_factory=lambda: [512, 2048])
    decode: list = field(default_factory=lambda: [(1, 256), (8, 256)])
    new_tokens: int = 16
    requests: int = 16
    rounds: int = 5


def check_device(device: str) -> str | None:
    """Why ``device`` cannot be used here, or None."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        return f"{device!r} is not a torch device ({e}); valid: cpu, cuda, cuda:N"
    if dev.type == "cpu":
        return None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return f"device {device!r} is not available here (torch {torch.__version__}: no CUDA device)"
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            return f"device {device!r} is not available here ({torch.cuda.device_count()} CUDA device(s))"
        return None
    return f"device type {dev.type!r} is not benchmarked; valid: cpu, cuda, cuda:N"


def bench_spec(req: SpecBench, log=print) -> dict:
    """Benchmark ``req.spec`` against sdpa on a model shape. Every problem (a spec that does not load, a device
    that is not there, a shape the kernel does not take) is reported in ``problems`` and sdpa is still measured."""
    from . import transformers_hook
    from .api import load
    from .spec import parse_spec

    problems: list[str] = []
    report = {"spec": req.spec, "request": asdict(req), "machine": machine(), "problems": problems, "runs": []}
    if req.dtype not in ("bfloat16", "float16", "float32"):
        raise ValueError(f"dtype {req.dtype!r}: valid are bfloat16, float16, float32")
    dtype = getattr(torch, req.dtype)
    device = req.device
    why = check_device(device)
    if why is not None:
        problems.append(f"{why}; measuring sdpa on cpu instead")
        device = "cpu"
    kernel = None
    try:
        spec = parse_spec(req.spec)
    except ValueError as e:
        problems.append(f"{e}; measuring sdpa only")
        spec = None
    if spec is not None and why is None:
        loaded = load(spec)
        if loaded.fallback is not None:
            problems.append(f"{req.spec} did not load: {loaded.fallback}; measuring sdpa only")
        else:
            kernel = loaded
            report["kernel"] = {"variant": loaded.variant, "commit": loaded.commit, "revision": loaded.revision}
    elif spec is not None:
        problems.append(f"{req.spec} not loaded: the kernel would have to run on {req.device}")
    hooked_before = transformers_hook.is_enabled()
    from . import routing

    routing_before = routing.enabled()
    if kernel is not None:
        transformers_hook.enable(force=True)
    model = build_model(req.model, dtype, device, head_dim=req.head_dim)
    paged = kernel is not None and (spec.paged or (kernel.module is not None and _is_paged(kernel.module)))
    jobs = [("cb", None)] if paged else [("prefill", n) for n in req.prefill] + [("decode", bc) for bc in req.decode]
    try:
        for workload, shape in jobs:
            impls = [Impl(SDPA)]
            if kernel is not None:
                phase = "decode" if workload == "decode" else "prefill"
                impls += ([Impl(str(req.spec), (kernel.module,), "ours")] if workload == "cb" else
                          kernel_impls(str(req.spec), kernel.module, "ours", device, dtype, phase))
            if workload == "prefill":
                r = prefill(model, impls, shape, rounds=req.rounds, device=device, min_run_s=0.1)
            elif workload == "decode":
                r = decode(model, impls, shape[0], shape[1], req.new_tokens, rounds=req.rounds, device=device)
            else:
                r = continuous_batching(model, impls, req.requests, (16, 256), req.new_tokens, rounds=req.rounds,
                                        device=device)
            for impl in impls[1:]:
                chk = r["check"][impl.key]
                if chk["kernel_calls"] == 0 and not (impl.routing and "routed" in impl.key):
                    reasons = "; ".join(chk["fallback_warnings"]) or "no kernel op or entry point was called"
                    msg = f"{workload} {shape}: the kernel did not run ({reasons}); its figure is sdpa's"
                    if msg not in problems:
                        problems.append(msg)
            report["runs"].append(r)
            log(_spec_line(r))
    finally:
        routing.set_enabled(routing_before)
        if not hooked_before:
            transformers_hook.disable()
    report["machine"]["load_average_after"] = list(os.getloadavg())
    return report


def _is_paged(module) -> bool:
    from .adapters import is_paged_module

    return is_paged_module(module)


def _spec_line(r: dict) -> str:
    shape = (f"{r['tokens']} tokens" if r["workload"] == "prefill" else
             f"batch {r['batch']} context {r['context']}" if r["workload"] == "decode" else
             f"{r['requests']} requests")
    parts = []
    for impl in r["order"]:
        d = r[impl]
        ratio = d.get("ratio_vs_sdpa")
        parts.append(f"{impl} {d['tokens_per_s']['median']:,.0f} tok/s"
                     + (f" = {ratio['median']:.2f}x [{ratio['min']:.2f}-{ratio['max']:.2f}] "
                        f"(calls {r['check'][impl]['kernel_calls']})" if ratio else ""))
    return f"{r['workload']:<8} {shape:<22} " + "; ".join(parts)


# ------------------------------------------------------------------------------------------------ kernel alone

def attention_alone(module, batch: int, q_len: int, kv_len: int, heads: tuple[int, int], head_dim: int, *,
                    dtype: torch.dtype, device: str, rounds: int, min_run_s: float = 0.05, seed: int = 4) -> dict:
    """The kernel's ``flash_attn_func`` against ``F.scaled_dot_product_attention`` on the same causal attention
    (bottom-right: a decode query sees every key), no model around it; what kernel_loader/routing.py cites."""
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
