"""Stock transformers + stock kernels, no ``enable()``, against ``kernel-loader hub serve`` (the front that answers the
publisher-trust check for orgs the administrator marks trusted): ``attn_implementation="kernels-community/flash-attn2"``
loads our published kernel -- through the ``vN`` branch transformers pins for that name, which publishing created --
and its logits match sdpa's.

Runs where the installed transformers' own hub-kernel path accepts the installed kernels (5.22.x with kernels
0.17.2; 5.23/5.24 want kernels >= 0.18.2, not on the registry we reach): the matrix runs it on each release, and it
skips with the reason elsewhere. The stock client runs in a subprocess with only HF_ENDPOINT and fresh caches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")

from tiny_kernels import FLASH_ATTN2_REPO  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _native_path_usable() -> str | None:
    from transformers.utils.import_utils import is_kernels_available

    if not is_kernels_available():
        import kernels

        return (f"transformers {transformers.__version__}'s own hub-kernel path does not accept kernels "
                f"{kernels.__version__}")
    return None


@pytest.fixture(scope="module")
def stock_hub(built_flash_attn2, tmp_path_factory):
    why = _native_path_usable()
    if why:
        pytest.skip(why)
    from kernel_loader.hub import free_port, start_local_hub
    from kernel_loader.publish import publish_local

    root = tmp_path_factory.mktemp("stock-transformers-hub")
    published = publish_local(built_flash_attn2.path.parent.parent, FLASH_ATTN2_REPO, root, 1, allow_dirty=True)
    hub = start_local_hub(root, free_port(), front=True, trusted_orgs=["kernels-community"])
    yield hub, published
    hub.stop()


CHILD = textwrap.dedent("""
    import json, sys, tempfile, torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.integrations import hub_kernels
    spec = sys.argv[1]
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, initializer_range=0.5, pad_token_id=0)
    torch.manual_seed(0)
    path = tempfile.mkdtemp()
    LlamaForCausalLM(cfg).save_pretrained(path)
    model = LlamaForCausalLM.from_pretrained(path, attn_implementation=spec).eval()
    ref = LlamaForCausalLM.from_pretrained(path, attn_implementation="sdpa").eval()
    ids = torch.randint(1, 128, (2, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    with torch.no_grad(), torch.profiler.profile() as prof:
        got = model(ids, attention_mask=mask).logits
    with torch.no_grad():
        want = ref(ids, attention_mask=mask).logits
    keep = mask.bool()
    import kernels
    loaded = [m for n, m in sys.modules.items() if getattr(m, "__file__", None) and "flash_attn2" in n
              and hasattr(m, "flash_attn_varlen_func")]
    ns = {e.key.split("::")[0] for e in prof.key_averages() if "::" in e.key and "flash_attn2" in e.key}
    print("RESULT " + json.dumps({
        "max_abs_diff": (got[keep] - want[keep]).abs().max().item(),
        "modules": sorted({m.__file__ for m in loaded}), "op_namespaces": sorted(ns),
        "kernel_loader_imported": "kernel_loader" in sys.modules, "kernels": kernels.__version__,
        "pinned": hub_kernels.get_attn_kernel_version(spec)}))
""")


def test_stock_transformers_loads_our_kernel_by_the_plain_string(stock_hub, tmp_path):
    hub, published = stock_hub
    assert published.pinned_branch == f"v{_pinned()}"  # the branch transformers asks for exists
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KERNEL_LOADER_", "HF_HUB_DISABLE_TELEMETRY", "HF_ENDPOINT", "HF_HUB_CACHE",
                                "KERNELS_CACHE", "HF_HOME"))}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "home"), HF_HUB_CACHE=str(tmp_path / "hub-cache"),
               KERNELS_CACHE=str(tmp_path / "kernels-cache"), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", CHILD, FLASH_ATTN2_REPO], env=env,
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["kernel_loader_imported"] is False, result  # the stock path alone
    assert result["modules"] and all(str(tmp_path / "kernels-cache") in f or str(tmp_path / "hub-cache") in f
                                     for f in result["modules"]), result
    assert result["op_namespaces"], result  # our build's ops ran (namespace _flash_attn2_cpu_<rev>)
    assert result["max_abs_diff"] < 1e-4, result


def _pinned() -> int:
    from transformers.integrations.hub_kernels import get_attn_kernel_version

    return get_attn_kernel_version(FLASH_ATTN2_REPO)
