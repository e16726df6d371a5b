"""Tiny pure-Python test kernels, a tiny Llama, and repo paths, importable by name from any test module.

(Test modules must not `from conftest import ...`: several conftest.py files exist in this repo and the one
Python finds under that name depends on collection order.)"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
FLASH_ATTN2_DIR = REPO_ROOT / "kernel_repos" / "flash-attn2"
FLASH_ATTN2_REPO = "kernels-community/flash-attn2"

TINY_VARIANT = "torch-cpu"  # noarch: accepted by kernels on any torch/CPU


def _sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def make_tiny_kernel(
    build_dir: Path,
    *,
    name: str = "tiny-kernel",
    variant: str = TINY_VARIANT,
    value: int = 1,
    version: int = 1,
    extra_files: dict[str, str] | None = None,
    backend: str = "cpu",
    module_id: str | None = None,
) -> Path:
    """Write a pure-Python variant at ``build_dir/build/<variant>/`` and return the variant dir.

    The package exposes ``value() -> int`` (returns ``value``) and ``add(a, b)``; metadata.json carries a
    sha256 digest computed by kernels' own ``Digest.hash_variant``, so it is what a real build would ship.
    Any existing variant dir is replaced (so removed files really disappear).
    """
    from kernels._rust import Digest, DigestAlgorithm, Metadata

    vdir = Path(build_dir) / "build" / variant
    if vdir.exists():
        shutil.rmtree(vdir)
    vdir.mkdir(parents=True)
    module_id = module_id or f"_{name.replace('-', '_')}_{backend}_v{version}_{value}"
    (vdir / "__init__.py").write_text(
        f'"""Tiny test kernel {name} ({variant})."""\n'
        "from .impl import add\n\n"
        f"VALUE = {value}\n\n\n"
        "def value() -> int:\n"
        "    return VALUE\n"
    )
    (vdir / "impl.py").write_text("def add(a, b):\n    return a + b\n")
    for rel, text in (extra_files or {}).items():
        (vdir / rel).parent.mkdir(parents=True, exist_ok=True)
        (vdir / rel).write_text(text)
    digest = Digest.hash_variant(DigestAlgorithm.SHA256, vdir)
    assert digest.files["impl.py"] == _sha256_b64((vdir / "impl.py").read_bytes())  # what we rely on
    meta = {
        "name": name,
        "id": module_id,
        "version": version,
        "license": "Apache-2.0",
        "backend": {"type": backend},
        "python-depends": [],
        "digest": {"algorithm": str(digest.algorithm), "files": dict(digest.files)},
    }
    raw = json.dumps(meta, indent=2, sort_keys=True).encode()
    Metadata.from_bytes(raw)  # fail here, not in the test, if the format drifts
    (vdir / "metadata.json").write_bytes(raw)
    return vdir


def count_module_calls(module, names) -> dict[str, int]:
    """Wrap ``module``'s Python entry points ``names`` (adapters look them up on the module at call time) and
    return the live call counts."""
    counts = dict.fromkeys(names, 0)
    for n in names:
        real = getattr(module, n)

        def wrapped(*a, _real=real, _n=n, **k):
            counts[_n] += 1
            return _real(*a, **k)

        setattr(module, n, wrapped)
    return counts


def tiny_llama(seed: int = 0):
    """A 2-layer Llama (GQA 4/2, head dim 32, vocab 160) with seeded random weights, in eval mode."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=160, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=512)
    return LlamaForCausalLM(cfg).eval()
