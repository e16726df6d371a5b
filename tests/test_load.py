"""load() end to end against a real olah Hub on loopback: resolve, trust, download, verify, import, adapt,
and every whole-kernel fallback reason. The kernel here is a small pure-Python flash-attn style package (a real
noarch Hub kernel); the compiled flash-attn2 variant is exercised in test_flash_attn2_e2e.py."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from tiny_kernels import make_tiny_kernel
from reference import attention_ref

import kernel_loader
from kernel_loader.api import clear_cache
from kernel_loader.errors import KernelFallbackWarning, KernelUnavailable
from kernel_loader.publish import publish_local

# A flash_attn_func in plain torch math: enough to check the plumbing (layouts, scale, causal flags).
PY_FLASH = '''
import torch

SUPPORTED = {"dtypes": (torch.float32,), "head_dims": None, "backward": True, "devices": ("cpu",)}
CALLS = []


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                    softcap=0.0, **kw):
    CALLS.append(tuple(q.shape))
    b, sq, hq, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    k = k.repeat_interleave(hq // hk, 2)
    v = v.repeat_interleave(hq // hk, 2)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * (softmax_scale or d ** -0.5)
    i = torch.arange(sq)[:, None] + sk - sq
    j = torch.arange(sk)[None]
    if causal:
        s = s.masked_fill(j > i, float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v)
'''

CPU_NOARCH = "torch-cpu"


@pytest.fixture(autouse=True)
def _fresh_loader(monkeypatch):
    clear_cache()
    monkeypatch.setenv("KERNEL_LOADER_TRUST", "acme")
    monkeypatch.delenv("KERNEL_LOADER_STRICT", raising=False)
    yield
    clear_cache()


def publish(local_hub, tmp_path, repo, *, version=1, variant=CPU_NOARCH, init=PY_FLASH, value=1, **kw):
    build = tmp_path / f"build-{repo.replace('/', '-')}-{version}-{variant}"
    vdir = make_tiny_kernel(build, name=repo.split("/")[1], variant=variant, value=value, version=version,
                            extra_files={"__init__.py": init}, **kw)
    publish_local(build, repo, local_hub.root, version)
    return vdir


def qkv(b=2, h=4, s=8, d=16, hk=None, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(b, h, s, d, generator=g, dtype=dtype), torch.randn(b, hk or h, s, d, generator=g, dtype=dtype),
            torch.randn(b, hk or h, s, d, generator=g, dtype=dtype))


def test_load_resolves_downloads_verifies_and_runs(local_hub, tmp_path):
    publish(local_hub, tmp_path, "acme/pyflash")
    k = kernel_loader.load("acme/pyflash")
    assert k.fallback is None and k.variant == CPU_NOARCH and k.revision == "v1" and len(k.commit) == 40
    assert k.module.__name__.startswith("_pyflash_cpu")
    # Only the chosen variant's files are in the cache, verified.
    assert sorted(p.name for p in k.path.iterdir()) == ["__init__.py", "impl.py", "metadata.json"]
    q, kk, v = qkv(hk=2)
    out = k.sdpa(q, kk, v, is_causal=True, enable_gqa=True)
    ref, _ = attention_ref(q.transpose(1, 2), kk.transpose(1, 2), v.transpose(1, 2), causal=True)
    torch.testing.assert_close(out.transpose(1, 2).double(), ref, atol=1e-5, rtol=1e-5)
    assert k.module.CALLS, "the kernel itself must have run"
    assert kernel_loader.load("acme/pyflash") is k  # cached per process


def test_version_keyword_and_newest_default(local_hub, tmp_path):
    publish(local_hub, tmp_path, "acme/versions", version=1, value=1)
    publish(local_hub, tmp_path, "acme/versions", version=2, value=2)
    # The build id (the module name) encodes version and value in these test kernels.
    assert kernel_loader.load("acme/versions").module.__name__ == "_versions_cpu_v2_2"
    assert kernel_loader.load("acme/versions", version=1).module.__name__ == "_versions_cpu_v1_1"
    assert kernel_loader.load("acme/versions@v1").revision == "v1"


@pytest.mark.parametrize("spec, fragment", [
    ("acme/missing-repo", "not found"),
    ("acme/pyflash2@v9", "has no version v9; have: v1"),
    ("acme/pyflash2@no-such-branch", "revision 'no-such-branch' not found"),
])
def test_missing_things_fall_back_with_reason(local_hub, tmp_path, spec, fragment):
    publish(local_hub, tmp_path, "acme/pyflash2")
    with pytest.warns(KernelFallbackWarning, match=fragment):
        k = kernel_loader.load(spec)
    assert k.variant is None and k.module is None and fragment in k.fallback
    # The fallback still computes attention (torch SDPA).
    q, kk, v = qkv()
    torch.testing.assert_close(k.sdpa(q, kk, v), torch.nn.functional.scaled_dot_product_attention(q, kk, v))
    with pytest.raises(KernelUnavailable, match=fragment):
        kernel_loader.load(spec, strict=True)


def test_strict_from_environment(local_hub, monkeypatch):
    monkeypatch.setenv("KERNEL_LOADER_STRICT", "1")
    with pytest.raises(KernelUnavailable, match="not found"):
        kernel_loader.load("acme/strict-missing")
    monkeypatch.setenv("KERNEL_LOADER_STRICT", "maybe")
    with pytest.raises(ValueError, match="KERNEL_LOADER_STRICT='maybe'"):
        kernel_loader.load("acme/strict-missing")


def test_no_variant_for_this_machine_lists_what_exists(local_hub, tmp_path):
    publish(local_hub, tmp_path, "acme/cuda-only", variant="torch213-cxx11-cu130-x86_64-linux", backend="cuda")
    with pytest.warns(KernelFallbackWarning):
        k = kernel_loader.load("acme/cuda-only")
    from kernel_loader.system import detect

    assert k.fallback.startswith(f"no variant of acme/cuda-only@v1 for {detect().variant}; have: ")
    assert "torch213-cxx11-cu130-x86_64-linux (" in k.fallback and "\n" not in k.fallback


def test_untrusted_publisher_falls_back(local_hub, tmp_path, monkeypatch):
    publish(local_hub, tmp_path, "acme/trusted-check")
    monkeypatch.setenv("KERNEL_LOADER_TRUST", "someone-else,other/repo")
    with pytest.warns(KernelFallbackWarning, match="publisher 'acme' is not trusted"):
        k = kernel_loader.load("acme/trusted-check")
    assert k.variant is None
    assert kernel_loader.load("acme/trusted-check", trust=["acme/trusted-check"]).variant == CPU_NOARCH
    with pytest.raises(ValueError, match="trust entry 'a/b/c'"):
        kernel_loader.load("acme/trusted-check", trust="a/b/c")


def _tamper_blob(path: Path, data: bytes) -> None:
    real = path.resolve()  # the cache's blob behind the snapshot symlink
    real.chmod(0o644)
    real.write_bytes(data)


def test_tampered_file_is_refused_never_imported_and_removed(local_hub, tmp_path):
    publish(local_hub, tmp_path, "acme/tamper", init=PY_FLASH + "\nimport builtins\nbuiltins.TAMPER_RAN = False\n")
    good = kernel_loader.load("acme/tamper", strict=True)
    init = good.path / "__init__.py"
    _tamper_blob(init, init.read_bytes().replace(b"TAMPER_RAN = False", b"TAMPER_RAN = True "))
    import sys

    sys.modules.pop(good.module.__name__)
    clear_cache()
    # Offline the tampered copy cannot be replaced: refused, never imported, removed.
    with kernel_loader.offline(), pytest.warns(KernelFallbackWarning, match=r"digest check failed: .*__init__\.py"):
        bad = kernel_loader.load("acme/tamper")
    import builtins

    assert bad.variant is None and builtins.TAMPER_RAN is False
    assert not good.path.exists(), "a refused variant must not stay in the cache"
    clear_cache()
    assert kernel_loader.load("acme/tamper").variant == CPU_NOARCH  # downloaded again, verified
    # Online a tampered cached copy is refused and replaced by a verified download in the same load.
    init = good.path / "__init__.py"
    _tamper_blob(init, init.read_bytes().replace(b"TAMPER_RAN = False", b"TAMPER_RAN = True "))
    sys.modules.pop(good.module.__name__)
    clear_cache()
    again = kernel_loader.load("acme/tamper", strict=True)
    assert builtins.TAMPER_RAN is False and b"TAMPER_RAN = False" in (again.path / "__init__.py").read_bytes()


def test_unlisted_file_is_refused(local_hub, tmp_path):
    k = publish(local_hub, tmp_path, "acme/unlisted")
    (k / "extra.py").write_text("print('not in the digest')\n")  # added after metadata.json was written
    publish_local(k.parent.parent, "acme/unlisted", local_hub.root, 2, verify_digest=False)
    with pytest.warns(KernelFallbackWarning, match="extra.py"):
        loaded = kernel_loader.load("acme/unlisted", version=2)
    assert loaded.variant is None


def test_import_error_falls_back(local_hub, tmp_path):
    publish(local_hub, tmp_path, "acme/broken", init="raise ImportError('needs libfoo.so')\n")
    with pytest.warns(KernelFallbackWarning, match="import of variant torch-cpu failed: ImportError: needs libfoo"):
        assert kernel_loader.load("acme/broken").variant is None


def test_module_without_attention_entry_falls_back(local_hub, tmp_path):
    publish(local_hub, tmp_path, "acme/no-attn", init="def something():\n    return 1\n")
    with pytest.warns(KernelFallbackWarning, match="no function 'flash_attn_func'; it provides: something"):
        assert kernel_loader.load("acme/no-attn").variant is None
    with pytest.warns(KernelFallbackWarning, match="no function 'nope'"):
        kernel_loader.load("acme/no-attn:nope")


def test_offline_uses_cache_and_empty_cache_falls_back(local_hub, tmp_path, monkeypatch, fresh_caches):
    import huggingface_hub.constants as c

    publish(local_hub, tmp_path, "acme/offline")
    online = kernel_loader.load("acme/offline", strict=True)
    clear_cache()
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    offline = kernel_loader.load("acme/offline", strict=True)
    assert offline.commit == online.commit and offline.resolution.offline
    clear_cache()
    with pytest.warns(KernelFallbackWarning, match="run `kernel-loader download acme/never-downloaded`"):
        assert kernel_loader.load("acme/never-downloaded").variant is None


def test_unreachable_hub_uses_cache_then_falls_back(local_hub, tmp_path, monkeypatch, fresh_caches):
    import huggingface_hub.constants as c

    publish(local_hub, tmp_path, "acme/unreachable")
    kernel_loader.load("acme/unreachable", strict=True)
    clear_cache()
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    monkeypatch.setattr(c, "ENDPOINT", dead)
    k = kernel_loader.load("acme/unreachable", strict=True)
    assert k.resolution.offline and k.variant == CPU_NOARCH
    clear_cache()
    with pytest.warns(KernelFallbackWarning, match=r"Hub http://127\.0\.0\.1:9 unreachable .* not in the cache"):
        assert kernel_loader.load("acme/other-unreachable").variant is None


def test_cli_resolve_json_lists_every_decision(local_hub, tmp_path, capsys):
    from kernel_loader.cli import main

    publish(local_hub, tmp_path, "acme/cli", variant=CPU_NOARCH)
    publish(local_hub, tmp_path, "acme/cli", variant="torch213-cxx11-cu130-x86_64-linux", backend="cuda")
    assert main(["resolve", "acme/cli", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["variant"] == CPU_NOARCH and out["revision"] == "v1"
    by_name = {d["variant"]: d for d in out["decisions"]}
    assert by_name[CPU_NOARCH]["accepted"] and not by_name["torch213-cxx11-cu130-x86_64-linux"]["accepted"]
    assert "backend" in by_name["torch213-cxx11-cu130-x86_64-linux"]["reason"]
    assert main(["resolve", "acme/cli-missing"]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(["resolve", "not a spec"]) == 2
    assert "must be 'org/name'" in capsys.readouterr().err


def test_doctor_reports_machine(capsys):
    from kernel_loader.cli import main

    assert main(["doctor", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["variant"].startswith("torch") and info["backend"] == "cpu"
    assert info["hub_endpoint"].startswith("http://127.0.0.1:") and info["kernels"] == "0.17.2"
