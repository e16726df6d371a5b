"""``kernel-loader bench SPEC``: one spec against sdpa on a model shape, every problem reported."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import torch

from .models import SDPA, build_model
from .timing import machine
from .workloads import Impl, continuous_batching, decode, prefill

# ------------------------------------------------------------------------------------------------ one spec (CLI)

def kernel_impls(name: str, module, label: str, device: str, dtype: torch.dtype, phase: str) -> list[Impl]:
    """The kernel alone (routing off) and, where a route sends this class to sdpa here, what the model gets."""
    from ..adapters import routing

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
    from ..integrations import transformers as transformers_hook
    from ..api import load
    from ..spec import parse_spec

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
    from ..adapters import routing

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
    from ..adapters import is_paged_module

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
