#!/usr/bin/env python3
"""Soak: many loads in one process and many processes against one cache, with the Hub restarted in the middle.

    python scripts/soak.py                                # the full soak: 1,000 loads, 200 processes (~6 min, 2 cores)
    python scripts/soak.py --loads 100 --procs 12 --json out.json   # what CI runs (tests/test_soak.py)

A real olah Hub on loopback serves ``--repos`` tiny pure-Python kernels (published here, in a temp folder).

1. One process: ``--loads`` times ``clear_cache(); load(spec)``, rotating over the repos and one repo that does not
   exist; the Hub is stopped for a fiftieth of the loads half way, then started again. Every load must give a kernel or a named fallback; open
   file descriptors and RSS are sampled, and growth after the first tenth is reported (and bounded).
2. ``--procs`` processes, ``--parallel`` at a time, against one cache: the first half use half the repos, the
   second half all of them, so the cache is warm for some and cold for others in each half; when half the
   processes have started the Hub is stopped for ``--outage`` seconds (processes keep starting) and restarted. A scanner thread checks the cache throughout: no variant visible (its
   metadata.json linked) whose files are missing or differ from its digest, no dangling snapshot link.
   Every process must end in a kernel or a named fallback.
Prints one JSON object (``--json PATH`` also writes it) with the numbers RELIABILITY.md quotes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

INIT = '''
import torch
VALUE = {value}
CALLS = []


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **kw):
    CALLS.append(1)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * (softmax_scale or q.shape[-1] ** -0.5)
    if causal:
        i = torch.arange(q.shape[1])[:, None] + k.shape[1] - q.shape[1]
        s = s.masked_fill(torch.arange(k.shape[1])[None] > i, float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v)
'''

CHILD = r"""
import json, os, resource, sys, warnings
import kernel_loader
fds0 = len(os.listdir("/proc/self/fd"))
with warnings.catch_warnings(record=True):
    warnings.simplefilter("always")
    k = kernel_loader.load(sys.argv[1])
ok = k.variant is not None and k.module is not None and k.module.VALUE >= 1
print(json.dumps({"spec": sys.argv[1], "kernel": ok, "fallback": k.fallback,
                  "fds_opened": len(os.listdir("/proc/self/fd")) - fds0,
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def publish_repos(hub_root: Path, work: Path, n: int) -> list[str]:
    from kernel_loader.publish import publish_local

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_kernels import make_tiny_kernel

    repos = []
    for i in range(n):
        repo = f"acme/soak-{i}"
        build = work / f"build-{i}"
        make_tiny_kernel(build, name=f"soak-{i}", value=i + 1, extra_files={"__init__.py": INIT.format(value=i + 1),
                                                                           "weights.bin": "w" * 50_000})
        publish_local(build, repo, hub_root, 1)
        repos.append(repo)
    return repos


def cache_problems(cache: Path) -> list[str]:
    """Variants visible in the cache (metadata.json linked) that are not exactly what was published."""
    from kernel_loader.errors import KernelUnavailable
    from kernel_loader.fetch import verify_variant

    problems = []
    for meta in cache.glob("kernels--*/snapshots/*/build/*/metadata.json"):
        try:
            verify_variant(meta.parent)
        except KernelUnavailable as e:
            if meta.exists():  # not a discard racing with the scan
                problems.append(e.reason)
    for link in cache.glob("kernels--*/snapshots/*/build/*/*"):
        if link.is_symlink() and not link.exists():
            problems.append(f"dangling {link.relative_to(cache)}")
    return problems


def _restart(hub):
    from kernel_loader.hub import start_local_hub

    hub.stop()
    return start_local_hub(hub.root, hub.port)


class _Outage:
    """Stops the Hub, and starts it again ``seconds`` later (checked by ``tick``)."""

    def __init__(self, holder: list, seconds: float):
        self.holder, self.seconds, self.since, self.done_at = holder, seconds, None, None

    def begin(self, t: float) -> None:
        self.holder[0].stop()
        self.since = t

    def tick(self, t: float) -> None:
        if self.since is not None and self.done_at is None and t - self.since >= self.seconds:
            self.holder[0] = _restart(self.holder[0])
            self.done_at = t


def soak_one_process(hub_holder: list, repos: list[str], loads: int) -> dict:
    import warnings

    import kernel_loader
    from kernel_loader.api import clear_cache

    specs = repos + ["acme/soak-missing"]
    kernels = fallbacks = 0
    unnamed = []
    samples = []
    t0 = time.perf_counter()
    down = range(loads // 2, loads // 2 + max(1, loads // 50))  # the Hub is stopped for these loads
    during_outage = []
    for i in range(loads):
        if i == down.start:
            hub_holder[0].stop()
        if i == down.stop:
            hub_holder[0] = _restart(hub_holder[0])
        clear_cache()
        spec = specs[i % len(specs)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            k = kernel_loader.load(spec)
        if k.variant is not None and k.module is not None:
            kernels += 1
        elif k.fallback:
            fallbacks += 1
        else:
            unnamed.append(spec)
        if i in down:
            during_outage.append(k.fallback[:100] if k.fallback else "kernel")
        if (i + 1) % max(1, loads // 10) == 0:
            samples.append({"load": i + 1, "fds": _fds(), "rss_mb": round(_rss_mb(), 1)})
    first, last = samples[0], samples[-1]
    return {"loads": loads, "kernels": kernels, "named_fallbacks": fallbacks, "unnamed": unnamed,
            "during_outage": {"loads": len(down), "kernels": during_outage.count("kernel"),
                              "fallbacks": sorted({r for r in during_outage if r != "kernel"})},
            "seconds": round(time.perf_counter() - t0, 1), "samples": samples,
            "fd_growth": last["fds"] - first["fds"], "rss_growth_mb": round(last["rss_mb"] - first["rss_mb"], 1)}


def soak_processes(hub_holder: list, repos: list[str], cache: Path, procs: int, parallel: int,
                   outage_s: float = 15.0) -> dict:
    half = procs // 2
    resume = procs - max(1, procs // 4)  # the last quarter starts only once the Hub is back (a restart mid-way)
    plan = [repos[i % max(1, len(repos) // 2)] if i < half else repos[i % len(repos)] for i in range(procs)]
    env = {**os.environ, "KERNELS_CACHE": str(cache), "HF_HUB_CACHE": str(cache), "KERNEL_LOADER_TRUST": "acme",
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    problems: list[str] = []
    scans = [0]
    stop = threading.Event()

    def scanner():
        while not stop.is_set():
            problems.extend(cache_problems(cache))
            scans[0] += 1
            stop.wait(0.3)

    scan = threading.Thread(target=scanner, daemon=True)
    scan.start()
    results, running, started = [], [], 0
    t0 = time.perf_counter()
    outage = _Outage(hub_holder, outage_s)
    while started < procs or running:
        outage.tick(time.perf_counter() - t0)
        while started < procs and len(running) < parallel:
            if started == half and outage.since is None:  # the first half's last processes still run
                outage.begin(time.perf_counter() - t0)
            if started >= resume and outage.done_at is None:
                break  # wait for the restart (tick) before starting the rest
            env["HF_ENDPOINT"] = hub_holder[0].endpoint
            hub_down = outage.since is not None and outage.done_at is None
            running.append((subprocess.Popen([sys.executable, "-c", CHILD, plan[started]], env=env,
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), hub_down))
            started += 1
        for item in list(running):
            p, hub_down = item
            if p.poll() is not None:
                out, err = p.communicate()
                running.remove(item)
                try:
                    r = json.loads(out.strip().splitlines()[-1])
                except (ValueError, IndexError):
                    r = {"kernel": False, "fallback": None, "crash": err[-500:]}
                r["during_outage"] = hub_down
                results.append(r)
        time.sleep(0.05)
    stop.set()
    scan.join()
    problems.extend(cache_problems(cache))
    kernels = sum(1 for r in results if r.get("kernel"))
    named = sum(1 for r in results if not r.get("kernel") and r.get("fallback"))
    return {"processes": procs, "parallel": parallel, "kernels": kernels, "named_fallbacks": named,
            "other": [r for r in results if not r.get("kernel") and not r.get("fallback")][:5],
            "fallback_reasons": sorted({r["fallback"][:120] for r in results if r.get("fallback")})[:5],
            "started_during_outage": sum(1 for r in results if r.get("during_outage")),
            "hub_down_s": [round(outage.since, 1), round(outage.done_at or -1, 1)], "seconds": round(time.perf_counter() - t0, 1),
            "cache_scans": scans[0], "partial_or_bad_visible": sorted(set(problems))[:5],
            "max_child_fds_opened": max((r.get("fds_opened", 0) for r in results), default=0),
            "max_child_rss_mb": round(max((r.get("maxrss_mb", 0) for r in results), default=0), 1)}


def run(loads: int, procs: int, parallel: int, repos: int, outage_s: float = 15.0) -> dict:
    import huggingface_hub.constants as c

    from kernel_loader.hub import start_local_hub

    work = Path(tempfile.mkdtemp(prefix="kernel-loader-soak-"))
    hub = start_local_hub(work / "hub")
    hub_holder = [hub]
    cache = work / "cache"
    os.environ.update({"HF_ENDPOINT": hub.endpoint, "KERNELS_CACHE": str(cache), "HF_HUB_CACHE": str(cache),
                       "KERNEL_LOADER_TRUST": "acme"})
    os.environ.pop("HF_HUB_OFFLINE", None)
    c.ENDPOINT = hub.endpoint
    c.HUGGINGFACE_CO_URL_TEMPLATE = hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    c.HF_HUB_CACHE = str(cache)
    try:
        names = publish_repos(hub.root, work, repos)
        one = soak_one_process(hub_holder, names, loads)
        many = soak_processes(hub_holder, names, work / "shared-cache", procs, parallel, outage_s)
    finally:
        hub_holder[0].stop()
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return {"one_process": one, "many_processes": many}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loads", type=int, default=1000)
    ap.add_argument("--procs", type=int, default=200)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--repos", type=int, default=8)
    ap.add_argument("--outage", type=float, default=15.0, help="seconds the Hub is down half way (processes)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    out = run(args.loads, args.procs, args.parallel, args.repos, args.outage)
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    one, many = out["one_process"], out["many_processes"]
    ok = (not one["unnamed"] and one["fd_growth"] <= 2 and one["rss_growth_mb"] < 64
          and many["kernels"] + many["named_fallbacks"] == many["processes"] and not many["partial_or_bad_visible"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
