"""scripts/gpu_check.py on this GPU-less machine: the dry run over the noarch variants of the kernels it checks, and
its paged-attention and sliding-window case code run on CPU tensors (the torch path) against the same float64
references it uses on the GPU, so a broken case is found here, not in the GPU run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiny_kernels import FLASH_ATTN2_DIR

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
REPOS = ("paged-attention", "sliding-window")


@pytest.fixture(scope="module")
def variants(tmp_path_factory) -> Path:
    from kernel_loader.build import build_variant

    root = tmp_path_factory.mktemp("gpu-check")
    for repo in REPOS:
        build_variant(FLASH_ATTN2_DIR.parent / repo, out_dir=root / repo, variant="torch-cuda",
                      progress=lambda _m: None)
    return root


def test_dry_run_imports_the_variants_and_calls_them_on_cpu(variants, tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPTS / "gpu_check.py"), "--variants", str(variants), "--out",
                           str(tmp_path), "--dry-run", "--kernels", ",".join(REPOS)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = {r["impl"]: r for r in json.loads((tmp_path / "gpu_check.json").read_text())["dry_run"]}
    assert set(rows) == {"paged-attention jit", "sliding-window jit"}
    assert all(r["imported"] for r in rows.values())
    assert rows["paged-attention jit"]["cpu_call"] == "ran (torch path, finite=True)"
    assert "gpu_check summary" in (tmp_path / "gpu_check.log").read_text()


def test_paged_and_ring_decode_cases_pass_on_the_torch_path(variants):
    sys.path.insert(0, str(SCRIPTS))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(SCRIPTS))
    pa = gpu_check.load_variant(variants / "paged-attention" / "torch-cuda")
    rows = [r for r in gpu_check.paged_correctness(pa, torch.device("cpu"), "cpu") if "device check" not in r["case"]]
    assert len(rows) == len(gpu_check.PAGED_CASES) + 4 and all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]
    sw = gpu_check.load_variant(variants / "sliding-window" / "torch-cuda")
    rows = [r for r in gpu_check.sliding_window_correctness(sw, torch.device("cpu"), "cpu") if "ring" in r["case"]]
    assert len(rows) == 5 and all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]
