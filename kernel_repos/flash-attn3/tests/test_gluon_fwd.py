"""The Gluon Hopper forward: which calls it takes, its sm_90a compile (no GPU needed), and on an sm90 GPU its
results against float64 with NaN-poisoned outputs."""

import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "torch-ext"))
triton = pytest.importorskip("triton")
from flash_attn3 import _gluon_launch as L  # noqa: E402
from flash_attn3 import _gluon_op  # noqa: E402

from kernel_loader.reference import attention_reference  # noqa: E402

SM90 = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9
TRITON_36 = triton.__version__.startswith("3.6.")


def _bshd(b, s, h, d, dtype=torch.bfloat16):
    return torch.empty(b, s, h, d, dtype=dtype)


def test_unsupported_inputs_name_why():
    q = _bshd(2, 64, 4, 128)
    assert L.unsupported_reason(q, q, q, 0.0) is None
    assert L.unsupported_reason(q, q, q, 30.0) == "softcap"
    assert "head dim 96" in L.unsupported_reason(_bshd(1, 8, 2, 96), _bshd(1, 8, 2, 96), _bshd(1, 8, 2, 96), 0.0)
    assert "dtype" in L.unsupported_reason(*(_bshd(1, 8, 2, 64, torch.float32),) * 3, 0.0)
    bhsd = torch.empty(2, 4, 64, 128, dtype=torch.bfloat16).transpose(1, 2)  # heads not adjacent
    assert "q strides" in L.unsupported_reason(bhsd, q, q, 0.0)
    packed = torch.empty(2, 64, 3, 4, 128, dtype=torch.bfloat16)  # qkv packed: uniform row stride, still 2-D
    assert L.unsupported_reason(packed[:, :, 0], packed[:, :, 1], packed[:, :, 2], 0.0) is None


def test_cpu_tensors_never_take_the_gluon_path():
    q = _bshd(1, 8, 2, 64)
    assert _gluon_op.gluon_reason(q, q, q, 0.125, 0.0) == "not an sm90 CUDA tensor"


def test_configs_fit_shared_memory():
    for d in L.HEAD_DIMS:
        cfg = L.config_for(d, torch.bfloat16, False, True)
        assert L.smem_bytes(cfg) <= 227 * 1024, cfg.name


_COMPILE = """
import json, re, subprocess, sys
from pathlib import Path
import torch
import triton.backends.nvidia as nv
sys.path.insert(0, sys.argv[1])
from flash_attn3 import _gluon_launch as L
cfg = L.config_for(int(sys.argv[2]), torch.bfloat16, False, sys.argv[3] == "1")
k = L.compile_for_target(cfg, 90)
out = Path(sys.argv[4])
(out / "k.cubin").write_bytes(k.asm["cubin"])
(out / "k.ptx").write_text(k.asm["ptx"])
bin_dir = Path(nv.__file__).parent / "bin"
sass = subprocess.run([str(bin_dir / "cuobjdump"), "-sass", str(out / "k.cubin")], capture_output=True,
                      text=True).stdout
ptxas = subprocess.run([str(bin_dir / "ptxas"), "-v", "--gpu-name", "sm_90a", "-maxrregcount", str(cfg.maxnreg),
                        str(out / "k.ptx"), "-o", str(out / "x.cubin")], capture_output=True, text=True).stderr
print(json.dumps({"num_warps": k.metadata.num_warps, "shared": k.metadata.shared, "ptx": k.asm["ptx"],
                  "sass": sass, "ptxas": ptxas}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not TRITON_36, reason=f"written against Triton 3.6's Gluon API (the GPU machine's); this is "
                                          f"Triton {triton.__version__}, whose experimental Gluon API differs")
@pytest.mark.parametrize("d,causal", [(128, True), (256, False)])
def test_compiles_to_a_warp_specialized_sm90a_cubin(d, causal, tmp_path):
    """The precompilable form: triton.compile for sm_90a here, then the SASS shows wgmma, TMA loads and register
    reallocation between the partitions, and ptxas spills nothing. In a child process: Gluon does not compile
    under TRITON_INTERPRET=1, which the test session sets on machines without a GPU."""
    import json
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", _COMPILE, str(ROOT / "torch-ext"), str(d), str(int(causal)),
                          str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    r = json.loads(res.stdout.strip().splitlines()[-1])
    assert r["num_warps"] == 12 and r["shared"] <= 227 * 1024
    assert re.search(r"setmaxnreg\.inc\.sync\.aligned\.u32\s+240;", r["ptx"])  # consumers grow
    assert re.search(r"setmaxnreg\.dec\.sync\.aligned\.u32\s+24;", r["ptx"])  # the producer shrinks
    assert "HGMMA.64x" in r["sass"] and "UTMALDG" in r["sass"] and "USETMAXREG" in r["sass"]
    assert "0 bytes spill stores, 0 bytes spill loads" in r["ptxas"]




@pytest.mark.skipif(not SM90, reason="needs an sm90 (Hopper) GPU")
@pytest.mark.parametrize("b,sq,sk,hq,hk,d,dtype,causal,window", [
    (2, 1000, 1000, 8, 2, 128, torch.bfloat16, False, (-1, -1)),
    (2, 300, 1100, 4, 4, 128, torch.bfloat16, True, (-1, -1)),
    (1, 1100, 300, 4, 1, 64, torch.float16, True, (-1, -1)),  # first rows see no key: out 0, lse -inf
    (1, 1500, 1500, 4, 2, 128, torch.float16, False, (100, 50)),
    (1, 700, 900, 4, 4, 256, torch.bfloat16, True, (255, 0)),
])
def test_matches_float64_and_writes_every_element(b, sq, sk, hq, hk, d, dtype, causal, window):
    torch.manual_seed(0)
    q = torch.randn(b, sq, hq, d, device="cuda", dtype=dtype)
    k, v = (torch.randn(b, sk, hk, d, device="cuda", dtype=dtype) for _ in range(2))
    out = torch.full_like(q, float("nan"))
    o, lse = L.forward(q, k, v, scale=d ** -0.5, causal=causal, window=window, out=out)
    ref_o, ref_lse = attention_reference(q, k, v, causal=causal, window=window, scale=d ** -0.5, return_lse=True)
    assert torch.isfinite(o).all()
    assert (o.double() - ref_o).abs().max() < (2.5e-2 if dtype == torch.bfloat16 else 4e-3)
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))
    assert (lse.double() - ref_lse).masked_fill(torch.isinf(ref_lse), 0).abs().max() < 2e-3
