#!/usr/bin/env python3
"""Model-level benchmark: transformers models with random weights, our kernels vs sdpa, alternated in one process.

    python scripts/bench_model.py [--quick] [--out DIR]                  # CPU: kernels from the embedded local Hub
    python scripts/bench_model.py --device cuda --out $OUT               # GPU: kernel packages imported from paths
    python scripts/bench_model.py --dry-run                              # the GPU code path, tiny, on this CPU

Workloads per model shape and dtype: prefill tokens/s at several lengths, decode tokens/s through ``generate()``
(batch x context), continuous batching through ``generate_batch`` (sdpa, flash-attn2, ``paged|paged-attention``).
Each workload alternates the implementations round by round (kernel_loader/bench.py says how, and how the call
counts and greedy-token checks are made). Where kernel_loader routes a shape class to sdpa on purpose
(kernel_loader/adapters/routing.py), the kernel alone (routing off) and what the model gets (routing on) are both measured.

On CPU the kernels are built from kernel_repos/, published to a fresh local Hub (olah on loopback) and loaded by the
model through ``attn_implementation="kernels-community/flash-attn2"`` -- the path a user takes. With ``--device cuda``
(or ``--dry-run``) there is no Hub: ``--kernel-path NAME=DIR`` imports a built variant folder (``build/<variant>/``
with metadata.json) or a kernel's ``torch-ext/<package>`` source (the Triton path on CUDA); defaults: the sources in
kernel_repos/ on CUDA, this machine's builds on CPU. Needs transformers >= 5.22 (5.23 checked).

Writes OUT/bench_model_<machine>.json, OUT/bench_model_<machine>.md (table) and OUT/bench_model_<machine>.png.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

FLASH, PAGED = "flash-attn2", "paged-attention"
HUB_NAMES = {FLASH: "kernels-community/flash-attn2", PAGED: "paged|kernels-community/paged-attention"}
PACKAGES = {FLASH: "flash_attn2", PAGED: "paged_attention"}

PROFILES = {
    # name: models, dtypes, prefill lengths, decode (batch, context) pairs, new tokens, CB (requests, lengths), rounds
    "cpu": dict(models=["llama-small", "qwen3-small"], dtypes=["bfloat16", "float32"], prefill=[512, 2048],
                decode=[(1, 256), (1, 1024), (8, 256)], new_tokens=16, cb=(16, (16, 256)), cb_new=16, rounds=5,
                attention=[(1, 2048, 2048, 8, 2, 64), (1, 2048, 2048, 4, 2, 128), (1, 1, 256, 8, 2, 64),
                           (8, 1, 256, 8, 2, 64), (8, 1, 1024, 8, 2, 64)]),
    "cpu-quick": dict(models=["llama-small"], dtypes=["bfloat16"], prefill=[2048], decode=[(1, 256), (8, 256)],
                      new_tokens=12, cb=(12, (16, 128)), cb_new=12, rounds=3,
                      attention=[(1, 2048, 2048, 8, 2, 64), (8, 1, 256, 8, 2, 64)]),
    "cuda": dict(models=["llama-1b"], dtypes=["bfloat16"], prefill=[1024, 4096, 16384],
                 decode=[(1, 1024), (16, 1024)], new_tokens=64, cb=(32, (64, 1024)), cb_new=32, rounds=5,
                 cb_rounds=3, deadline=210, attention=[(1, 4096, 4096, 32, 8, 64), (16, 1, 1024, 32, 8, 64)]),
    "dry-run": dict(models=["tiny"], dtypes=["float32"], prefill=[64], decode=[(1, 32), (2, 32)], new_tokens=4,
                    cb=(4, (5, 40)), cb_new=4, rounds=1, attention=[(1, 64, 64, 4, 2, 32), (2, 1, 32, 4, 2, 32)]),
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--quick", action="store_true", help="one model, bf16, fewer shapes and rounds")
    ap.add_argument("--dry-run", action="store_true", help="tiny model, one round, kernels imported from paths "
                    "(the --device cuda code path, runnable on a CPU machine)")
    ap.add_argument("--models", help="comma list of model shapes (kernel_loader.bench.MODELS)")
    ap.add_argument("--dtypes", help="comma list: bfloat16, float32, float16")
    ap.add_argument("--prefill", help="comma list of prompt lengths")
    ap.add_argument("--decode", help="comma list of BATCHxCONTEXT, e.g. 1x256,8x256")
    ap.add_argument("--rounds", type=int, help="timed rounds per implementation (alternated)")
    ap.add_argument("--skip", default="", help="comma list of workloads to skip: attention, prefill, decode, cb")
    ap.add_argument("--kernel-path", action="append", default=[], metavar="NAME=DIR",
                    help=f"import kernel NAME ({FLASH} or {PAGED}) from DIR instead of the Hub")
    ap.add_argument("--out", type=Path, default=ROOT / ".bench", help="output folder")
    ap.add_argument("--tag", help="machine tag in file names (default: from the device)")
    ap.add_argument("--deadline", type=float, default=0, help="seconds; skip the remaining workloads after this "
                    "(cuda profile default: 210)")
    ap.add_argument("--plot-from", type=Path, metavar="JSON", help="only write the table and PNG of a results file "
                    "(needs matplotlib, not torch)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default on cpu: 1 -- on a shared machine two "
                    "OpenMP threads spin against other jobs and decode slows 20x; default on cuda: torch's)")
    return ap.parse_args(argv)


def profile(args) -> dict:
    name = "dry-run" if args.dry_run else ("cuda" if args.device.startswith("cuda") else
                                           ("cpu-quick" if args.quick else "cpu"))
    p = dict(PROFILES[name], profile=name)
    if args.models:
        p["models"] = args.models.split(",")
    if args.dtypes:
        p["dtypes"] = args.dtypes.split(",")
    if args.prefill:
        p["prefill"] = [int(x) for x in args.prefill.split(",")]
    if args.decode:
        p["decode"] = [tuple(int(v) for v in x.lower().split("x")) for x in args.decode.split(",")]
    if args.rounds:
        p["rounds"] = args.rounds
        p.pop("cb_rounds", None)  # one number for every workload when given
    return p


# ------------------------------------------------------------------------------------------------ kernels

def hub_kernels(args, log):
    """CPU: build + publish to a local Hub, load through kernel_loader like a user (returns a stop function)."""
    import tempfile

    import demo_hub

    work = tempfile.TemporaryDirectory(prefix="bench-model-hub-")
    ctx = demo_hub.serve(Path(work.name), (FLASH, PAGED), log=log)
    served = ctx.__enter__()
    import kernel_loader

    kernel_loader.enable()
    modules, info = {}, {"how": f"local Hub {served.endpoint} (olah), kernel_loader.enable() + attn_implementation"}
    for name, spec in HUB_NAMES.items():
        loaded = kernel_loader.load(spec)
        if not loaded.ok:
            raise SystemExit(f"error: {spec} did not load: {loaded.fallback}")
        modules[name] = (spec, loaded.module)
        info[name] = {"spec": spec, "variant": loaded.variant, "commit": loaded.commit}
    return modules, info, lambda: (ctx.__exit__(None, None, None), work.cleanup())


def import_path(name: str, path: Path):
    """A built variant folder (metadata.json: imported under its build id) or a torch-ext package source."""
    import importlib.util

    path = Path(path).resolve()
    if (path / "metadata.json").is_file():
        module_name = json.loads((path / "metadata.json").read_text())["id"]
        spec = importlib.util.spec_from_file_location(module_name, path / "__init__.py",
                                                      submodule_search_locations=[str(path)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        return module
    if not (path / "__init__.py").is_file():
        raise SystemExit(f"error: --kernel-path {name}={path}: neither a variant folder (metadata.json) nor a "
                         "package (__init__.py)")
    return import_source(path, f"_{path.name}_bench")


def import_source(package: Path, namespace: str):
    """A kernel's torch-ext package imported as top-level ``namespace`` from a scratch copy whose ``_ops.py`` names
    the op namespace and holds no compiled library (CUDA then runs the Triton path)."""
    import importlib.util
    import shutil
    import tempfile

    dest = Path(tempfile.mkdtemp(prefix="bench-kernel-")) / namespace
    shutil.copytree(package, dest, ignore=shutil.ignore_patterns("__pycache__", "_ops.py"))
    (dest / "_ops.py").write_text(f"ops = None\n\n\ndef add_op_namespace_prefix(op_name):\n"
                                  f"    return f\"{namespace}::{{op_name}}\"\n")
    spec = importlib.util.spec_from_file_location(namespace, dest / "__init__.py",
                                                  submodule_search_locations=[str(dest)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[namespace] = module
    spec.loader.exec_module(module)
    return module


def path_kernels(args, device, log):
    """No Hub: import each kernel from a path and hand it to kernel_loader's transformers hook through its loader
    seam, so the model takes the same strings and the same adapters as on the Hub path."""

    from kernel_loader import adapters
    from kernel_loader.integrations import transformers as transformers_hook
    from kernel_loader.api import LoadedKernel
    from kernel_loader.spec import parse_spec

    given = dict(kv.split("=", 1) for kv in args.kernel_path)
    unknown = set(given) - {FLASH, PAGED}
    if unknown:
        raise SystemExit(f"error: --kernel-path names {sorted(unknown)}; valid: {FLASH}, {PAGED}")
    table, modules = {}, {}
    info = {"how": "kernel packages imported from paths; kernel_loader.adapters via the transformers hook"}
    for name in (FLASH, PAGED):
        path = Path(given[name]) if name in given else default_path(name, device)
        module = import_path(name, path)
        spec = parse_spec(HUB_NAMES[name])
        adapt = adapters.adapt_paged if name == PAGED else adapters.adapt
        attention, sdpa_fn, mask_format = adapt(module, spec, device.split(":")[0])
        loaded = LoadedKernel(spec=spec, repo_id=spec.repo_id, revision=None, commit=None, variant=path.name,
                              module=module, fallback=None, attention=attention, sdpa=sdpa_fn,
                              mask_format=mask_format, path=path)
        table[HUB_NAMES[name]] = table[spec.repo_id] = loaded  # transformers strips "paged|" before the hook
        modules[name] = (HUB_NAMES[name], module)
        info[name] = {"path": _rel(path), "module": module.__name__}
        log(f"   {name}: {module.__name__} from {_rel(path)}")

    def load_from_paths(spec, strict=None):
        if spec not in table:
            raise SystemExit(f"error: {spec} asked for, but only {sorted(table)} were imported from paths")
        return table[spec]

    transformers_hook._loader = load_from_paths
    transformers_hook.enable()  # installs where transformers' seams match (warns on releases newer than tested)
    return modules, info, lambda: (transformers_hook.disable(), setattr(transformers_hook, "_loader", None))


def default_path(name: str, device: str) -> Path:
    kernel = ROOT / "kernel_repos" / name
    if device.startswith("cuda"):
        return kernel / "torch-ext" / PACKAGES[name]
    builds = sorted((kernel / "build").glob("torch*-cpu*")) if (kernel / "build").is_dir() else []
    if name == PAGED:
        return kernel / "torch-ext" / PACKAGES[name]
    if not builds:
        raise SystemExit(f"error: no CPU build of {name} in {kernel / 'build'}; run `kernel-loader build "
                         f"kernel_repos/{name}` or pass --kernel-path {name}=DIR")
    return builds[-1]


def _rel(p: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(ROOT))
    except ValueError:
        return Path(p).name


# ------------------------------------------------------------------------------------------------ run

def impls_for(workload, dtype, device, modules):
    """sdpa first (the baseline), then the kernel alone, then as routed when a route covers this class here."""
    import torch

    from kernel_loader.bench import SDPA, Impl, kernel_impls

    impls = [Impl(SDPA)]
    if workload == "cb":
        impls.append(Impl(modules[FLASH][0], (modules[FLASH][1],), FLASH))
        impls.append(Impl(modules[PAGED][0], (modules[PAGED][1],), PAGED))
        return impls
    phase = "decode" if workload == "decode" else "prefill"
    return impls + kernel_impls(modules[FLASH][0], modules[FLASH][1], FLASH, device, getattr(torch, dtype), phase)


def run(args, log=print) -> dict:
    import torch

    from kernel_loader import bench

    prof = profile(args)
    device = args.device
    threads = args.threads or (1 if device == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch.cuda.is_available() is False on this machine")
    before = list(os.getloadavg())
    started = time.monotonic()
    from kernel_loader.adapters import routing

    routing_before = routing.enabled()
    path_mode = args.dry_run or device.startswith("cuda") or bool(args.kernel_path)
    log(f"== kernels ({'paths' if path_mode else 'local Hub'})")
    modules, kinfo, stop = path_kernels(args, device, log) if path_mode else hub_kernels(args, log)
    results = {"machine": bench.machine(), "profile": prof, "kernels": kinfo, "routes": _routes(), "runs": []}
    skip = set(filter(None, args.skip.split(",")))
    results["attention"] = []
    try:
        for dtype_name in prof["dtypes"] if "attention" not in skip else []:
            for b, sq, sk, hq, hk, d in prof.get("attention", []):
                a = bench.attention_alone(modules[FLASH][1], b, sq, sk, (hq, hk), d, dtype=getattr(torch, dtype_name),
                                          device=device, rounds=prof["rounds"] + 2)
                results["attention"].append(a)
                log("   attention alone " + attention_line(a))
        for model_name in prof["models"]:
            for dtype_name in prof["dtypes"]:
                dtype = getattr(torch, dtype_name)
                model = bench.build_model(model_name, dtype, device)
                where = {"model": model_name, "dtype": dtype_name, "description": bench.MODELS[model_name][0]}
                jobs = []
                if "prefill" not in skip:
                    jobs += [("prefill", n) for n in prof["prefill"]]
                if "decode" not in skip:
                    jobs += [("decode", bc) for bc in prof["decode"]]
                if "cb" not in skip:
                    jobs.append(("cb", prof["cb"]))
                for workload, shape in jobs:
                    deadline = args.deadline or prof.get("deadline", 0)
                    if deadline and time.monotonic() - started > deadline:
                        log(f"   deadline reached: skipping {workload} {shape}")
                        continue
                    impls = impls_for(workload, dtype_name, device, modules)
                    t = time.monotonic()
                    try:
                        if workload == "prefill":
                            r = bench.prefill(model, impls, shape, rounds=prof["rounds"], device=device,
                                              min_run_s=0.0 if args.dry_run else 0.2)
                        elif workload == "decode":
                            r = bench.decode(model, impls, shape[0], shape[1], prof["new_tokens"],
                                             rounds=prof["rounds"], device=device)
                        else:
                            r = bench.continuous_batching(model, impls, shape[0], shape[1], prof["cb_new"],
                                                          rounds=prof.get("cb_rounds", prof["rounds"]),
                                                          device=device)
                    except Exception as e:
                        traceback.print_exc()
                        r = {"workload": workload, "shape": str(shape), "error": f"{type(e).__name__}: {e}"[:400]}
                    r.update(where, wall_s=round(time.monotonic() - t, 1), load_average=list(os.getloadavg()))
                    results["runs"].append(r)
                    log("   " + one_line(r))
                del model
    finally:
        routing.set_enabled(routing_before)
        stop()
    after = list(os.getloadavg())
    results["machine"]["load_average_after"] = after
    results["contention"] = bench.contention(before, after, os.cpu_count())
    results["wall_s"] = round(time.monotonic() - started, 1)
    return results


def _routes():
    from kernel_loader.adapters import routing

    return routing.describe()


# ------------------------------------------------------------------------------------------------ report

def shape_of(r) -> str:
    if r["workload"] == "prefill":
        return f"{r['tokens']} tokens" + (f" x{r['batch']}" if r.get("batch", 1) > 1 else "")
    if r["workload"] == "decode":
        return f"batch {r['batch']}, context {r['context']}"
    if r["workload"] == "continuous_batching":
        lo, hi = r["prompt_lengths"]
        return f"{r['requests']} requests, prompts {lo}-{hi}, {r['new_tokens']} new"
    return r.get("shape", "?")


def rows(results):
    """(model, dtype, workload, shape, impl, tok/s median [min-max], ratio median [min-max], calls, tokens match)"""
    out = []
    for r in results["runs"]:
        if "error" in r:
            out.append((r["model"], r["dtype"], r["workload"], r.get("shape", "?"), "error", r["error"], "", "", ""))
            continue
        for impl in [*r["order"], *(k for k in r["check"] if k not in r["order"])]:
            if impl not in r["order"]:  # its check run failed: no figure
                out.append((r["model"], r["dtype"], r["workload"], shape_of(r), impl, "failed: "
                            + r["check"][impl]["error"][:160], "", str(r["check"][impl]["kernel_calls"]), ""))
                continue
            d = r[impl]
            tps = d["tokens_per_s"]
            ratio = d.get("ratio_vs_sdpa")
            chk = r["check"][impl]
            match = chk.get("greedy_tokens_match", chk.get("argmax_match"))
            out.append((r["model"], r["dtype"], r["workload"], shape_of(r), impl,
                        f"{tps['median']:,.0f} [{tps['min']:,.0f}-{tps['max']:,.0f}]",
                        f"{ratio['median']:.2f}x [{ratio['min']:.2f}-{ratio['max']:.2f}]" if ratio else "1 (baseline)",
                        str(chk["kernel_calls"]) if impl != "sdpa" else "-",
                        "-" if impl == "sdpa" else ("yes" if match else _mismatch(chk))))
    return out


def attention_line(a) -> str:
    k, r = a["kernel"]["us_per_call"], a["kernel"]["ratio_vs_sdpa"]
    return (f"{a['dtype']} B{a['batch']} q{a['q_len']} kv{a['kv_len']} heads {a['heads'][0]}/{a['heads'][1]}x"
            f"{a['head_dim']}: kernel {k['median']:,.0f} us, sdpa {a['sdpa']['us_per_call']['median']:,.0f} us, "
            f"{r['median']:.2f}x [{r['min']:.2f}-{r['max']:.2f}]")


def _mismatch(chk) -> str:
    if "sequences_matching" in chk:
        return f"no ({chk['sequences_matching']} sequences)"
    return f"argmax differs (max logit diff {chk.get('logits_max_abs_diff', float('nan')):.2g})"


def one_line(r) -> str:
    if "error" in r:
        return f"{r['model']} {r['dtype']} {r['workload']}: ERROR {r['error']}"
    parts = [f"{k} FAILED ({v['error'][:120]})" for k, v in r["check"].items() if "error" in v]
    for impl in r["order"]:
        d = r[impl]
        ratio = d.get("ratio_vs_sdpa")
        parts.append(f"{impl} {d['tokens_per_s']['median']:,.0f} tok/s" +
                     (f" ({ratio['median']:.2f}x, calls {r['check'][impl]['kernel_calls']})" if ratio else ""))
    return f"{r['model']} {r['dtype']} {r['workload']} {shape_of(r)}: " + "; ".join(parts) + f" [{r['wall_s']}s]"


def markdown(results) -> str:
    m = results["machine"]
    head = (f"Machine: {m['cpu']}, {m['cores']} cores ({m['threads']} torch threads)"
            + (f", {m['gpu']} (CUDA {m['cuda']})" if m.get("gpu") else "")
            + f"; torch {m['torch']}, transformers {m.get('transformers')}; host {m['host']}.\n"
            f"Contention: {results['contention']}. Profile `{results['profile']['profile']}`, "
            f"{results['profile']['rounds']} alternated rounds per implementation; wall {results['wall_s']} s.\n")
    if results["routes"]:
        head += "Routed to sdpa on purpose here (kernel_loader/adapters/routing.py):\n" + "".join(
            f"- {x}\n" for x in results["routes"])
    lines = [head, "| model | dtype | workload | shape | implementation | tokens/s median [min-max] | "
             "vs sdpa, per-round median [min-max] | kernel calls (check run) | greedy tokens = sdpa |",
             "|---|---|---|---|---|---:|---:|---:|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows(results)]
    if results.get("attention"):
        lines += ["", "Attention alone (the kernel's flash_attn_func vs F.scaled_dot_product_attention, causal, "
                  "no model; alternated; what kernel_loader/adapters/routing.py cites):", "",
                  "| dtype | batch | q len | kv len | heads q/kv x dim | kernel us | sdpa us | vs sdpa [min-max] | "
                  "max abs diff |", "|---|---:|---:|---:|---|---:|---:|---:|---:|"]
        for a in results["attention"]:
            k, sd, r = a["kernel"]["us_per_call"], a["sdpa"]["us_per_call"], a["kernel"]["ratio_vs_sdpa"]
            lines.append(f"| {a['dtype']} | {a['batch']} | {a['q_len']} | {a['kv_len']} | {a['heads'][0]}/"
                         f"{a['heads'][1]} x {a['head_dim']} | {k['median']:,.0f} | {sd['median']:,.0f} | "
                         f"{r['median']:.2f}x [{r['min']:.2f}-{r['max']:.2f}] | {a['max_abs_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def plot(results, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    runs = [r for r in results["runs"] if "error" not in r]
    labels, groups = [], {}
    for r in runs:
        labels.append(f"{r['model']}\n{r['dtype'][:4]} {r['workload'][:7]}\n{shape_of(r)[:22]}")
        for impl in r["order"][1:]:
            groups.setdefault(impl.split(" (")[0] + (" (routed)" if "as routed" in impl else ""), {})[
                len(labels) - 1] = r[impl]["ratio_vs_sdpa"]
    if not labels:
        return False
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(labels)), 4.5))
    width = 0.8 / max(1, len(groups))
    for gi, (name, vals) in enumerate(groups.items()):
        xs = [i + (gi - (len(groups) - 1) / 2) * width for i in vals]
        med = [v["median"] for v in vals.values()]
        err = [[v["median"] - v["min"] for v in vals.values()], [v["max"] - v["median"] for v in vals.values()]]
        ax.bar(xs, med, width, yerr=err, capsize=2, label=name)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=6)
    ax.set_ylabel("speed vs sdpa (per-round ratio, median, min-max)")
    m = results["machine"]
    ax.set_title(f"{m.get('gpu') or m['cpu']}: load {m['load_average'][0]:.1f}->{m['load_average_after'][0]:.1f}",
                 fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def machine_tag(results, args) -> str:
    if args.tag:
        return args.tag
    m = results["machine"]
    base = m.get("gpu") or m["cpu"]
    return re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-")[:40] + ("-dry-run" if args.dry_run else "")


def main(argv=None) -> int:
    import signal

    # SIGTERM (a timeout) unwinds like Ctrl-C, so the local Hub is stopped and partial results are kept
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    args = parse_args(argv)
    if args.plot_from:
        results = json.loads(args.plot_from.read_text())
        stem = args.plot_from.with_suffix("")
        stem.with_suffix(".md").write_text(markdown(results))
        print(f"wrote {stem}.md" + (f", {stem}.png" if plot(results, stem.with_suffix(".png")) else " (no matplotlib)"))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    results = run(args)
    tag = machine_tag(results, args)
    stem = args.out / f"bench_model_{tag}"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    table = markdown(results)
    stem.with_suffix(".md").write_text(table)
    png = plot(results, stem.with_suffix(".png"))
    print("\n" + table)
    print(f"wrote {stem}.json, {stem}.md" + (f", {stem}.png" if png else " (no matplotlib: no plot)"))
    bad = [r for r in results["runs"] if "error" in r]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
