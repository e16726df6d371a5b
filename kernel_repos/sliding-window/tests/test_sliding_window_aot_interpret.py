"""sliding-window's precompiled-prefill dispatch (_aot_dispatch.prefill) through Triton's interpreter, with each
configuration's exact constexprs from aot/spec.py (both window edges on, run-time GQA group) -- the one piece
replaced is the cubin launch (kernel_loader.build.aot.interpret) -- against the float64 reference."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")
KERNEL_DIR = Path(__file__).resolve().parents[1]
REPO = KERNEL_DIR.parents[1]
sys.path.insert(0, str(REPO))

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter checks are for machines without a GPU")

CASES = [  # (b, sq, sk, hq, hk, d, left, right, softcap)
    (2, 70, 70, 4, 2, 64, 15, 0, 0.0),
    (1, 40, 90, 2, 1, 64, -1, 0, 0.0),       # causal, no window, Sq < Sk, MQA
    (1, 90, 40, 2, 2, 96, 20, 10, 5.0),      # both edges + softcap, padded head dim, Sq > Sk
    (1, 50, 50, 4, 4, 64, -1, -1, 0.0),      # no window at all
]

CODE = r"""
import importlib, json, os, sys, torch
sys.path[:0] = [sys.argv[1], sys.argv[2]]
from kernel_loader.build.aot.interpret import InterpreterTable, small_tiles
import sliding_window as sw
from sliding_window import _aot_dispatch, _torch_impl
import tomllib
tiles = small_tiles(("prefill",), ("8.0", "9.0", "10.0"))
tiles["decode"] = tomllib.loads(open(sys.argv[3] + "/aot/tiles.toml").read())["decode"]  # decode: its own test
tbl = InterpreterTable(__import__("pathlib").Path(sys.argv[3]), "sliding_window", tiles)
worst = 0.0
for b, sq, sk, hq, hk, d, left, right, cap in json.loads(sys.argv[4]):
    torch.manual_seed(sq * 7 + d)
    q, k, v = (torch.randn(b, s, h, d).half() for s, h in ((sq, hq), (sk, hk), (sk, hk)))
    out = _aot_dispatch.prefill(tbl, q, k, v, d ** -0.5, left, right, cap)
    ref = _torch_impl.prefill(q.double(), k.double(), v.double(), d ** -0.5, left, right, cap)
    err = float((out.double() - ref).norm() / ref.norm())
    assert not out.isnan().any() and err < 2e-3, (b, sq, sk, d, left, right, cap, err)
    worst = max(worst, err)
assert _aot_dispatch.prefill(tbl, q[..., :32], k[..., :32], v[..., :32], 1.0, 4, 0, 0.0) is None  # d32: torch path
print(json.dumps({"launched": tbl.launched, "worst": worst}))
"""


def test_prefill_dispatch_through_the_interpreter():
    import json

    env = dict(os.environ, TRITON_INTERPRET="1")  # before triton's import, in a fresh process
    proc = subprocess.run([sys.executable, "-c", CODE, str(REPO), str(KERNEL_DIR / "torch-ext"), str(KERNEL_DIR),
                           json.dumps(CASES)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["launched"] == ["prefill/d64/fp16/nocap", "prefill/d64/fp16/nocap", "prefill/d96/fp16/softcap",
                                  "prefill/d64/fp16/nocap"]
