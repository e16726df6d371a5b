#!/usr/bin/env python3
"""The loader's own costs, on the embedded local Hub (olah on loopback), each against the stock path:

1. warm-cache ``kernel_loader.load()`` vs ``kernels.get_kernel`` -- fresh processes, alternated, the clock started
   after ``import torch`` / the libraries (what a second run of a user's program pays);
2. cold download: bytes that land in an empty cache for each client vs the files of the one variant this machine
   needs (``build/<variant>/``) and vs the whole repo revision;
3. the first ``from_pretrained(attn_implementation=SPEC)`` vs ``attn_implementation="sdpa"`` -- fresh processes,
   alternated, warm cache (resolve + verify + import + register, on top of building the model);
4. per-call adapter overhead: ``LoadedKernel.attention`` (transformers' signature) vs calling the kernel's own API
   on the same tensors (dense prefill, padded batch -> varlen, decode with routing off and as routed), medians of
   alternated blocks of calls.

    python scripts/bench_loader.py [--quick] [--out DIR]

Writes OUT/bench_loader_<machine>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

REPO = "kernels-community/flash-attn2"

# Child programs: imports first (not timed), then one timed step; they print one JSON line.
LOAD_CHILD = r"""
import json, sys, time
import torch, kernel_loader.api, kernels
which = sys.argv[1]
t = time.perf_counter()
if which == "kernel_loader":
    k = kernel_loader.api.load(sys.argv[2], version=1, strict=True)
    mod = k.module
else:
    mod = kernels.get_kernel(sys.argv[2], version=1, trust_remote_code=True)
s = time.perf_counter() - t
assert callable(mod.flash_attn_func)
print(json.dumps({"s": s}))
"""

PRETRAINED_CHILD = r"""
import json, sys, time
import torch, transformers, kernel_loader
from transformers import AutoModelForCausalLM
kernel_loader.enable()
impl, path = sys.argv[1], sys.argv[2]
t = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=impl, dtype=torch.float32)
s = time.perf_counter() - t
print(json.dumps({"s": s, "impl": model.config._attn_implementation}))
"""


def child(code: str, *args: str, env=None) -> dict:
    env = dict(os.environ if env is None else env)
    # kernels 0.17.2 with HF_HUB_DISABLE_TELEMETRY=1 sends a user agent ending in "; ", which httpx refuses
    # ("Illegal header value"); both clients run without it, so they send the same requests
    env.pop("HF_HUB_DISABLE_TELEMETRY", None)
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"child {args} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def stat(xs) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def warm_load(rounds: int) -> dict:
    """Alternated fresh processes: kernel_loader.load vs kernels.get_kernel, both with a warm cache."""
    child(LOAD_CHILD, "kernel_loader", REPO)  # warm both caches (they share the HF cache layout)
    child(LOAD_CHILD, "kernels", REPO)
    ours, stock = [], []
    for _ in range(rounds):
        ours.append(child(LOAD_CHILD, "kernel_loader", REPO)["s"])
        stock.append(child(LOAD_CHILD, "kernels", REPO)["s"])
    ratios = [a / b for a, b in zip(ours, stock)]
    return {"kernel_loader_load_ms": stat([x * 1e3 for x in ours]), "kernels_get_kernel_ms": stat(
        [x * 1e3 for x in stock]), "ratio_load_over_get_kernel": stat(ratios),
            "how": "fresh process per call, clock started after import torch/kernel_loader/kernels; online "
                   "(both ask the Hub for the version's ref), cache warm"}


def dir_bytes(path: Path, state: bool = False) -> tuple[int, int]:
    """Bytes and files under ``path``; kernel_loader's own state folder (listings, trust records, the variant's
    bytecode: written here, never downloaded) counts only with ``state=True``, and then alone."""
    files = [p for p in Path(path).rglob("*") if p.is_file() and not p.is_symlink()
             and (".kernel-loader" in p.relative_to(path).parts) == state]
    return sum(p.stat().st_size for p in files), len(files)


def cold_download(cache: Path, variant_dir: Path, hub_repo: Path) -> dict:
    """Bytes each client puts into an empty cache, against the variant's files and the whole revision."""
    out = {}
    for which in ("kernel_loader", "kernels"):
        fresh = Path(tempfile.mkdtemp(prefix=f"cold-{which}-", dir=cache.parent))
        env = dict(os.environ, HF_HUB_CACHE=str(fresh), KERNELS_CACHE=str(fresh))
        s = child(LOAD_CHILD, which, REPO, env=env)["s"]
        nbytes, nfiles = dir_bytes(fresh)
        out[which] = {"bytes": nbytes, "files": nfiles, "seconds": round(s, 3),
                      "state_bytes": dir_bytes(fresh, state=True)[0]}
    vbytes, vfiles = dir_bytes(variant_dir)
    out["one_variant_files"] = {"bytes": vbytes, "files": vfiles, "variant": variant_dir.name}
    tree = subprocess.run(["git", "--git-dir", str(hub_repo), "ls-tree", "-r", "-l", "v1"], capture_output=True,
                          text=True, check=True).stdout
    sizes = [int(line.split()[3]) for line in tree.splitlines() if line.split()[3] != "-"]
    out["whole_revision"] = {"bytes": sum(sizes), "files": len(sizes)}
    for which in ("kernel_loader", "kernels"):
        out[which]["over_variant"] = round(out[which]["bytes"] / max(vbytes, 1), 3)
    return out


def first_from_pretrained(rounds: int, work: Path) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    import torch

    path = work / "tiny-llama"
    if not path.exists():
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
        LlamaForCausalLM(cfg).save_pretrained(path)
    child(PRETRAINED_CHILD, REPO, str(path))  # warm cache and page cache
    ours, sdpa = [], []
    for _ in range(rounds):
        r = child(PRETRAINED_CHILD, REPO, str(path))
        assert r["impl"] == REPO, r
        ours.append(r["s"])
        sdpa.append(child(PRETRAINED_CHILD, "sdpa", str(path))["s"])
    extra = [(a - b) * 1e3 for a, b in zip(ours, sdpa)]
    return {"kernel_ms": stat([x * 1e3 for x in ours]), "sdpa_ms": stat([x * 1e3 for x in sdpa]),
            "overhead_ms": stat(extra), "how": "fresh process each, alternated, warm cache, clock around "
                                               "from_pretrained only (2-layer Llama, fp32)"}


class Timed:
    """Wraps a kernel entry point and keeps the duration of its last call (two perf_counter reads, ~0.1 us)."""

    def __init__(self, fn):
        self.fn, self.last = fn, 0.0

    def __call__(self, *a, **k):
        t = time.perf_counter()
        out = self.fn(*a, **k)
        self.last = time.perf_counter() - t
        return out


def per_call(calls: int) -> dict:
    """Adapter overhead per call, measured inside each call: the adapter's wall time minus the time spent in the
    kernel entry point it called (the real adapter code around the real kernel; the entry point is wrapped in a
    timer). Noise from other jobs mostly lands inside the kernel and cancels. The adapter against calling the
    kernel's own API directly on the same tensors is given too (alternated blocks, noisier). One torch thread."""
    import types

    import torch
    import torch.nn.functional as F

    import kernel_loader
    from kernel_loader import adapters
    from kernel_loader.adapters import routing
    from kernel_loader.spec import parse_spec

    torch.set_num_threads(1)
    fa = kernel_loader.load(REPO, version=1, strict=True).module
    timed = types.SimpleNamespace(flash_attn_func=Timed(fa.flash_attn_func),
                                  flash_attn_varlen_func=Timed(fa.flash_attn_varlen_func), SUPPORTED=fa.SUPPORTED,
                                  __name__=fa.__name__, __all__=list(fa.__all__))
    attn, _, _ = adapters.adapt(timed, parse_spec(REPO), "cpu")
    timed_sdpa = Timed(F.scaled_dot_product_attention)

    class Layer:  # what transformers passes as `module`
        is_causal, training, layer_idx = True, False, 0

    layer = Layer()
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float32)

    cases = {}
    q, k, v = rnd(1, 8, 32, 64), rnd(1, 2, 32, 64), rnd(1, 2, 32, 64)
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    cases["dense prefill B1 S32 8/2x64"] = (lambda: attn(layer, q, k, v, None, scaling=0.125),
                                            lambda: fa.flash_attn_func(qt, kt, vt, softmax_scale=0.125, causal=True),
                                            timed.flash_attn_func, False)
    pad = [0, 5, 11, 20]  # left padding per row: the adapter unpads and calls varlen
    mask = torch.ones(4, 32, dtype=torch.bool)
    for i, p in enumerate(pad):
        mask[i, :p] = False
    qp, kp, vp = rnd(4, 8, 32, 64), rnd(4, 2, 32, 64), rnd(4, 2, 32, 64)
    idx = mask.flatten().nonzero().squeeze(1)
    qv, kv, vv = (x.transpose(1, 2).reshape(128, x.shape[1], 64)[idx] for x in (qp, kp, vp))
    lens = mask.sum(1)
    cu = torch.nn.functional.pad(torch.cumsum(lens, 0, dtype=torch.int32), (1, 0))
    mx = int(lens.max())
    cases["padded B4 S32 -> varlen"] = (
        lambda: attn(layer, qp, kp, vp, mask, scaling=0.125),
        lambda: fa.flash_attn_varlen_func(qv, kv, vv, cu, cu, mx, mx, softmax_scale=0.125, causal=True),
        timed.flash_attn_varlen_func, False)
    qd, kd, vd = rnd(8, 8, 1, 64), rnd(8, 2, 256, 64), rnd(8, 2, 256, 64)
    qdt, kdt, vdt = qd.transpose(1, 2), kd.transpose(1, 2), vd.transpose(1, 2)
    cases["decode B8 ctx256, routing off (kernel)"] = (
        lambda: attn(layer, qd, kd, vd, None, scaling=0.125),
        lambda: fa.flash_attn_func(qdt, kdt, vdt, softmax_scale=0.125, causal=True), timed.flash_attn_func, False)
    cases["decode B8 ctx256, as routed (sdpa)"] = (
        lambda: attn(layer, qd, kd, vd, None, scaling=0.125),
        lambda: F.scaled_dot_product_attention(qd, kd, vd, scale=0.125, enable_gqa=True).transpose(1, 2).contiguous(),
        timed_sdpa, True)

    out = {}
    routing_before = routing.enabled()
    real_F = routing.F
    routing.F = types.SimpleNamespace(scaled_dot_product_attention=timed_sdpa)  # time the routed SDPA call inside
    try:
        with torch.inference_mode():
            for name, (adapter, direct, inner, route_on) in cases.items():
                routing.set_enabled(route_on)
                a_ref, d_ref = adapter()[0], direct()
                if "padded" in name:  # compare the real tokens only
                    a_ref = a_ref.reshape(128, 8, 64)[idx]
                err = float((a_ref - d_ref).abs().max())
                over = []
                for _ in range(calls):
                    t = time.perf_counter()
                    adapter()
                    over.append((time.perf_counter() - t - inner.last) * 1e6)
                ta, td = [], []
                for _ in range(5):  # alternated blocks, adapter vs direct
                    for fn, acc in ((adapter, ta), (direct, td)):
                        t = time.perf_counter()
                        for _ in range(max(1, calls // 10)):
                            fn()
                        acc.append((time.perf_counter() - t) / max(1, calls // 10) * 1e6)
                over.sort()
                out[name] = {"overhead_us": {"median": statistics.median(over), "p10": over[len(over) // 10],
                                             "p90": over[9 * len(over) // 10], "n": len(over)},
                             "adapter_us": stat(ta), "direct_us": stat(td), "max_abs_diff": err}
    finally:
        routing.F = real_F
        routing.set_enabled(routing_before)
    return out


def markdown(res: dict) -> str:
    m = res["machine"]
    w = res["warm_load"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores; torch {m['torch']}. {res['contention']}.", "",
             "| cost | kernel_loader | stock / reference | ratio or difference |", "|---|---:|---:|---:|"]
    lines.append(f"| warm-cache load, ms (median [min-max], n={w['kernel_loader_load_ms']['n']}) | "
                 f"{_fmt(w['kernel_loader_load_ms'])} | kernels.get_kernel {_fmt(w['kernels_get_kernel_ms'])} | "
                 f"{w['ratio_load_over_get_kernel']['median']:.2f}x |")
    c = res["cold_download"]
    lines.append(f"| cold download, bytes into an empty cache | {c['kernel_loader']['bytes']:,} "
                 f"({c['kernel_loader']['files']} files; plus {c['kernel_loader']['state_bytes']:,} of own state: "
                 f"listings, trust record, bytecode) | kernels {c['kernels']['bytes']:,} "
                 f"({c['kernels']['files']} files); one variant {c['one_variant_files']['bytes']:,}; whole revision "
                 f"{c['whole_revision']['bytes']:,} | {c['kernel_loader']['over_variant']:.2f}x the variant |")
    f = res["from_pretrained"]
    lines.append(f"| first from_pretrained, ms | {_fmt(f['kernel_ms'])} | sdpa {_fmt(f['sdpa_ms'])} | "
                 f"+{f['overhead_ms']['median']:.0f} ms |")
    for name, r in res["per_call"].items():
        o = r["overhead_us"]
        lines.append(f"| adapter overhead per call, {name}, us (inside each call; median [p10-p90], n={o['n']}) | "
                     f"{o['median']:.1f} [{o['p10']:.1f}-{o['p90']:.1f}] | adapter {_fmt(r['adapter_us'], 0)} vs "
                     f"direct {_fmt(r['direct_us'], 0)} (alternated blocks) | max diff {r['max_abs_diff']:.0e} |")
    return "\n".join(lines) + "\n"


def _fmt(s, nd=0) -> str:
    return f"{s['median']:.{nd}f} [{s['min']:.{nd}f}-{s['max']:.{nd}f}]"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / ".bench")
    ap.add_argument("--quick", action="store_true", help="fewer rounds (for tests)")
    ap.add_argument("--rounds", type=int, default=7, help="alternated process pairs (default 7)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rounds = 2 if args.quick else args.rounds
    import demo_hub

    before = list(os.getloadavg())
    scratch = tempfile.TemporaryDirectory(prefix="bench-loader-")
    work = Path(scratch.name)
    with scratch, demo_hub.serve(work, ("flash-attn2",), log=lambda m: print(m, flush=True)) as hub:
        from kernel_loader.bench import contention, machine
        from kernel_loader.hub import kernel_repo_path

        res = {"machine": machine()}
        print("== warm-cache load vs kernels.get_kernel", flush=True)
        res["warm_load"] = warm_load(rounds)
        print(json.dumps(res["warm_load"]), flush=True)
        print("== cold download bytes", flush=True)
        variant = next((ROOT / "kernel_repos" / "flash-attn2" / "build").glob("torch*-cpu-*"))
        res["cold_download"] = cold_download(hub.cache, variant, kernel_repo_path(hub.root, REPO))
        print(json.dumps(res["cold_download"]), flush=True)
        print("== first from_pretrained vs sdpa", flush=True)
        res["from_pretrained"] = first_from_pretrained(rounds, work)
        print(json.dumps(res["from_pretrained"]), flush=True)
        print("== per-call adapter overhead", flush=True)
        res["per_call"] = per_call(calls=200 if args.quick else 2000)
        print(json.dumps(res["per_call"]), flush=True)
    res["contention"] = contention(before, list(os.getloadavg()), os.cpu_count())
    tag = re.sub(r"[^a-z0-9]+", "-", res["machine"]["cpu"].lower()).strip("-")[:40]
    stem = args.out / f"bench_loader_{tag}"
    stem.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    table = markdown(res)
    stem.with_suffix(".md").write_text(table)
    print("\n" + table + f"\nwrote {stem}.json, {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
