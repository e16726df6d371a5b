"""The soak, small enough for CI: scripts/soak.py with 100 loads in one process and 8 processes against one cache
(warm and cold mixed), the Hub stopped for a while in the middle of each and started again. The full soak (1,000 loads, 200 processes) is
`python scripts/soak.py`; RELIABILITY.md quotes its numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_reliability import report

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_soak_small(tmp_path):
    out = tmp_path / "soak.json"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("KERNEL_LOADER_TRUST", None)
    res = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "soak.py"), "--loads", "100", "--procs", "8",
                          "--repos", "4", "--outage", "8", "--json", str(out)], env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    data = json.loads(out.read_text())
    one, many = data["one_process"], data["many_processes"]
    assert one["unnamed"] == [] and one["kernels"] + one["named_fallbacks"] == 100
    assert one["kernels"] >= 70 and one["named_fallbacks"] >= 20  # 4 repos + 1 missing, rotating
    assert one["fd_growth"] <= 2 and one["rss_growth_mb"] < 64, one
    assert many["kernels"] + many["named_fallbacks"] == 8 and many["other"] == []
    assert many["partial_or_bad_visible"] == [] and many["cache_scans"] > 0
    assert many["hub_down_s"][1] > many["hub_down_s"][0] > 0  # stopped, and started again
    assert one["during_outage"]["loads"] == 2
    report("soak (CI size): 100 loads in one process, 8 processes on one cache, Hub down mid-way then restarted",
           "every load a kernel or a named fallback; no fd/RSS growth; no partial file visible",
           f"1 process: {one['kernels']} kernels + {one['named_fallbacks']} named fallbacks, fd growth "
           f"{one['fd_growth']}, RSS growth {one['rss_growth_mb']} MB, {one['seconds']} s; {many['processes']} "
           f"processes: {many['kernels']} kernels + {many['named_fallbacks']} named fallbacks, "
           f"{many['cache_scans']} cache scans clean, {many['seconds']} s")
