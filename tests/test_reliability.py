"""Offline mode, lock files, bundles, many processes, trust records and the fault suite, against real olah servers
(one private Hub per module, so a test may kill or restart it) and a fault-injecting HTTP proxy on loopback
(tests/faultproxy.py) placed between huggingface_hub and olah.

Every fault test ends in a clear error or a successful retry, checks that SDPA (or the kernel) still computes
attention, and checks the cache tree: no snapshot entry pointing at a missing blob, no variant whose files
mismatch its digest. With KERNEL_LOADER_RELIABILITY_REPORT=path, each test appends its outcome row there
(scripts/reliability_table.py renders RELIABILITY.md's table from it).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
from tiny_kernels import make_tiny_kernel
from faultproxy import FaultProxy
from reference import attention_ref
from test_load import PY_FLASH

import kernel_loader
from kernel_loader.api import clear_cache
from kernel_loader.errors import KernelFallbackWarning, KernelUnavailable
from kernel_loader.hub import free_port, start_local_hub
from kernel_loader.publish import publish_local

REPO_ROOT = Path(__file__).resolve().parents[1]
VARIANT = "torch-cpu"
BIG = "weights.bin"  # a file large enough to be cut mid-transfer


# ---------------------------------------------------------------------------------------------- helpers


def report(fault: str, outcome: str, detail: str = "") -> None:
    path = os.environ.get("KERNEL_LOADER_RELIABILITY_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"fault": fault, "outcome": outcome, "detail": detail}) + "\n")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A private olah (this module may stop and restart it)."""
    root = tmp_path_factory.mktemp("reliability-hub")
    h = start_local_hub(root, free_port())
    yield h
    h.stop()


def publish(hub, tmp_path, repo, *, version=1, variant=VARIANT, big=0, value=1, backend="cpu", module_id=None):
    build = tmp_path / f"build-{repo.replace('/', '-')}-{version}-{variant}-{value}"
    extra = {"__init__.py": PY_FLASH + f"\nVALUE = {value}\n"}
    if big:
        extra[BIG] = "w" * big
    vdir = make_tiny_kernel(build, name=repo.split("/")[1], variant=variant, value=value, version=version,
                            extra_files=extra, backend=backend, module_id=module_id)
    # a hostile build id is refused by publish's own checks: skip them to put it on the Hub for the loader to refuse
    return publish_local(build, repo, hub.root, version, verify_digest=module_id is None), vdir


def point_at(monkeypatch, endpoint: str) -> None:
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "ENDPOINT", endpoint)
    monkeypatch.setattr(c, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setenv("HF_ENDPOINT", endpoint)


@pytest.fixture
def env(monkeypatch, fresh_caches):
    clear_cache()
    monkeypatch.setenv("KERNEL_LOADER_TRUST", "acme")
    monkeypatch.delenv("KERNEL_LOADER_STRICT", raising=False)
    monkeypatch.delenv("KERNEL_LOADER_LOCK", raising=False)
    yield fresh_caches[1]  # KERNELS_CACHE: where kernel_loader keeps kernels
    clear_cache()


@pytest.fixture
def proxy(hub, monkeypatch, env):
    p = FaultProxy(hub.port).start()
    point_at(monkeypatch, p.endpoint)
    yield p
    p.stop()


def attention_still_runs(k) -> None:
    """The model's attention call works whatever happened (kernel or SDPA), checked against float64."""
    g = torch.Generator().manual_seed(int(time.time()) & 0xFFFF)
    q, kk, v = (torch.randn(1, 4, 8, 16, generator=g) for _ in range(3))
    out = k.sdpa(q, kk, v, is_causal=True)
    ref, _ = attention_ref(q.transpose(1, 2), kk.transpose(1, 2), v.transpose(1, 2), causal=True)
    torch.testing.assert_close(out.transpose(1, 2).double(), ref, atol=1e-5, rtol=1e-5)


def cache_problems(cache: Path) -> list[str]:
    """Anything in the cache that could be imported but is not exactly what was published."""
    from kernel_loader.fetch import verify_variant

    problems = []
    for snap in cache.glob("kernels--*/snapshots/*"):
        for p in snap.rglob("*"):
            if p.is_symlink() and not p.exists():
                problems.append(f"dangling snapshot entry {p.relative_to(cache)}")
            elif p.is_file() and not p.is_symlink():
                problems.append(f"snapshot entry {p.relative_to(cache)} is not a link into blobs/")
        for meta in snap.glob("build/*/metadata.json"):
            try:
                verify_variant(meta.parent)
            except KernelUnavailable as e:
                problems.append(e.reason)
    return problems


def load_quietly(spec, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        k = kernel_loader.load(spec, **kw)
    return k, [str(w.message) for w in caught if issubclass(w.category, KernelFallbackWarning)]


# ---------------------------------------------------------------------------------------------- offline


class SocketGuard:
    """Fails (and counts) every socket connect while active."""

    def __init__(self, monkeypatch):
        self.attempts = []
        real = socket.socket.connect

        def connect(sock, address):
            self.attempts.append(address)
            raise OSError(f"socket guard: connect to {address} refused in an offline test")

        monkeypatch.setattr(socket.socket, "connect", connect)
        monkeypatch.setattr(socket.socket, "connect_ex", lambda s, a: connect(s, a))
        self.real = real


def test_offline_warm_cache_opens_no_socket(hub, env, monkeypatch, tmp_path):
    point_at(monkeypatch, hub.endpoint)
    publish(hub, tmp_path, "acme/offline-warm")
    online = kernel_loader.load("acme/offline-warm", strict=True)
    clear_cache()
    guard = SocketGuard(monkeypatch)
    with kernel_loader.offline():
        import huggingface_hub.constants as c

        assert c.HF_HUB_OFFLINE and os.environ["HF_HUB_OFFLINE"] == "1"
        k = kernel_loader.load("acme/offline-warm", strict=True)  # 'v1' newest from cached refs
        k1 = kernel_loader.load("acme/offline-warm@v1", strict=True)
    assert not c.HF_HUB_OFFLINE and "HF_HUB_OFFLINE" not in os.environ  # restored
    assert k.commit == online.commit == k1.commit and k.resolution.offline
    attention_still_runs(k)
    assert k.module.CALLS
    assert guard.attempts == [], f"offline load opened sockets: {guard.attempts}"
    report("offline, warm cache (socket guard)", "kernel loads; 0 sockets opened", f"connect attempts: 0")


def test_offline_miss_falls_back_with_download_hint(hub, env, monkeypatch):
    point_at(monkeypatch, hub.endpoint)
    guard = SocketGuard(monkeypatch)
    with kernel_loader.offline():
        k, warned = load_quietly("acme/never-here@v1")
    assert k.variant is None and "run `kernel-loader download acme/never-here@v1` while online" in k.fallback
    attention_still_runs(k)
    assert guard.attempts == []
    report("offline, cold cache", "sdpa fallback: 'run `kernel-loader download SPEC` while online'", "0 sockets")


# ---------------------------------------------------------------------------------------------- trust records


def test_offline_trust_follows_what_was_trusted_at_download(hub, env, monkeypatch, tmp_path):
    point_at(monkeypatch, hub.endpoint)
    publish(hub, tmp_path, "acme/trust-rec")
    k = kernel_loader.load("acme/trust-rec", strict=True)
    from kernel_loader.cachestate import trust_record

    assert trust_record("acme/trust-rec")[k.commit]["trusted_by"] == "allow-list"
    clear_cache()
    monkeypatch.setenv("KERNEL_LOADER_TRUST", "")  # allow-list gone: the record alone vouches offline
    with kernel_loader.offline():
        assert kernel_loader.load("acme/trust-rec", strict=True).commit == k.commit
    # A repo in the cache that never passed the trust check here (its record is gone) is refused offline.
    record = next((env / ".kernel-loader" / "trust").glob("*trust-rec*"))
    record.unlink()
    clear_cache()
    with kernel_loader.offline(), pytest.raises(KernelUnavailable, match="never trusted when it was downloaded"):
        kernel_loader.load("acme/trust-rec", strict=True)
    with kernel_loader.offline():
        fb, _ = load_quietly("acme/trust-rec")
    assert fb.variant is None and "KERNEL_LOADER_TRUST=acme" in fb.fallback
    # A recorded repo whose cached commit is not the recorded one is refused too.
    from kernel_loader.cachestate import record_trust

    record_trust("acme/trust-rec", "f" * 40, "hub")
    clear_cache()
    with kernel_loader.offline(), pytest.raises(KernelUnavailable, match="was never trusted when downloaded"):
        kernel_loader.load("acme/trust-rec", strict=True)
    report("offline load of a never-trusted cached repo", "refused (sdpa, or KernelUnavailable in strict mode)")


# ---------------------------------------------------------------------------------------------- lock files


def write_project(tmp_path, deps: dict) -> Path:
    proj = tmp_path / "proj"
    proj.mkdir(exist_ok=True)
    lines = ["[project]", 'name = "demo"', "", "[tool.kernels.dependencies]"]
    lines += [f'"{k}" = {v}' for k, v in deps.items()]
    (proj / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return proj


def test_lock_pins_commit_and_refuses_digest_mismatch(hub, env, monkeypatch, tmp_path, capsys):
    from kernels._rust import KernelLocks

    from kernel_loader.cli import main
    from kernel_loader.lockfile import read_lock

    point_at(monkeypatch, hub.endpoint)
    first, _ = publish(hub, tmp_path, "acme/locked", value=1)
    publish(hub, tmp_path, "acme/locked", variant="torch213-cxx11-cu130-x86_64-linux", backend="cuda", value=1)
    first = publish(hub, tmp_path, "acme/locked", value=1)[0]  # same content: branch unchanged
    proj = write_project(tmp_path, {"acme/locked": 1})
    assert main(["lock", str(proj)]) == 0
    lock_path = proj / "kernels.lock"
    # The kernels library reads our lock file as its own.
    locks = KernelLocks.from_json(lock_path.read_text())
    assert [d.repo_id for d in locks.keys()] == ["acme/locked"] and locks.values()[0].commit == first.commit
    lock = read_lock(lock_path)
    assert sorted(lock.kernels["acme/locked"].variants) == sorted([VARIANT, "torch213-cxx11-cu130-x86_64-linux"])

    # v1 moves on after locking: the lock keeps loading the locked commit.
    moved, _ = publish(hub, tmp_path, "acme/locked", value=2)
    assert moved.commit != first.commit
    k = kernel_loader.load("acme/locked", lock=lock_path, strict=True)
    assert k.commit == first.commit and k.module.VALUE == 1
    clear_cache()
    monkeypatch.setenv("KERNEL_LOADER_LISTING_TTL", "0")
    assert kernel_loader.load("acme/locked", strict=True).commit == moved.commit  # unlocked: newest
    clear_cache()
    monkeypatch.setenv("KERNEL_LOADER_LOCK", str(lock_path))
    assert kernel_loader.load("acme/locked", strict=True).commit == first.commit
    clear_cache()
    # The spec may not contradict the lock; repos outside the lock fall back.
    with pytest.raises(KernelUnavailable, match="asks for v2 but .* locks acme/locked to v1"):
        kernel_loader.load("acme/locked@v2", strict=True)
    with pytest.raises(KernelUnavailable, match="acme/other is not in"):
        kernel_loader.load("acme/other", strict=True)
    # A digest in the lock that differs from what the Hub serves: refused, never imported.
    digests = json.loads((proj / "kernels.lock.digests").read_text())
    digests["kernels"]["acme/locked"]["variants"][VARIANT]["metadata.json"] = "A" * 43 + "="
    (proj / "kernels.lock.digests").write_text(json.dumps(digests))
    clear_cache()
    k, warned = load_quietly("acme/locked")
    assert k.variant is None and "differs from the lock file" in k.fallback
    attention_still_runs(k)
    monkeypatch.delenv("KERNEL_LOADER_LOCK")
    # A lock file that is not one is a configuration error, named.
    (tmp_path / "bad.lock").write_text('{"not": "a list"}')
    with pytest.raises(ValueError, match="bad.lock: expected a JSON list"):
        kernel_loader.load("acme/locked", lock=tmp_path / "bad.lock")
    report("lock: Hub serves files differing from the locked digest", "refused before import; sdpa fallback")


def test_download_lock_all_variants_prefetches_then_works_offline(hub, env, monkeypatch, tmp_path):
    from kernel_loader.cli import main

    point_at(monkeypatch, hub.endpoint)
    publish(hub, tmp_path, "acme/prefetch")
    publish(hub, tmp_path, "acme/prefetch", variant="torch213-cxx11-cu130-x86_64-linux", backend="cuda")
    proj = write_project(tmp_path, {"acme/prefetch": 1})
    assert main(["lock", str(proj)]) == 0
    assert main(["download", "--lock", str(proj / "kernels.lock"), "--all-variants"]) == 0
    snap = next(env.glob("kernels--acme--prefetch/snapshots/*"))
    assert sorted(p.name for p in (snap / "build").iterdir()) == sorted([VARIANT, "torch213-cxx11-cu130-x86_64-linux"])
    assert cache_problems(env) == []
    guard = SocketGuard(monkeypatch)
    with kernel_loader.offline():
        k = kernel_loader.load("acme/prefetch@v1", lock=proj / "kernels.lock", strict=True)
    assert k.variant == VARIANT and guard.attempts == []


def test_download_lock_offline_refuses_a_never_trusted_cached_commit(hub, env, monkeypatch, tmp_path, capsys):
    """`download --lock` goes through load's pipeline, so offline it refuses a cached commit that was never
    trusted here exactly as load does (it used to skip that check)."""
    from kernel_loader.cachestate import record_trust
    from kernel_loader.cli import main
    from kernel_loader.lock import download_locked
    from kernel_loader.lockfile import read_lock

    point_at(monkeypatch, hub.endpoint)
    publish(hub, tmp_path, "acme/lock-trust")
    proj = write_project(tmp_path, {"acme/lock-trust": 1})
    assert main(["lock", str(proj)]) == 0
    lock = proj / "kernels.lock"
    assert main(["download", "--lock", str(lock)]) == 0  # online, trusted by the allow-list: recorded
    monkeypatch.setenv("KERNEL_LOADER_TRUST", "")
    with kernel_loader.offline():
        assert main(["download", "--lock", str(lock), "--all-variants"]) == 0  # the record vouches offline
    # The record now names another commit only: the cached, locked commit was never trusted here.
    next((env / ".kernel-loader" / "trust").glob("*lock-trust*")).unlink()
    record_trust("acme/lock-trust", "f" * 40, "hub")
    capsys.readouterr()
    guard = SocketGuard(monkeypatch)
    with kernel_loader.offline():
        for extra in ([], ["--all-variants"]):
            assert main(["download", "--lock", str(lock), *extra]) == 1
            assert "was never trusted when downloaded" in capsys.readouterr().err
        with pytest.raises(KernelUnavailable, match="was never trusted when downloaded") as refused:
            download_locked(read_lock(lock))
        assert refused.value.stage == "trust"
        clear_cache()
        with pytest.raises(KernelUnavailable, match="was never trusted when downloaded"):
            kernel_loader.load("acme/lock-trust", lock=lock, strict=True)
    assert guard.attempts == []
    report("offline `download --lock` of a never-trusted cached commit", "refused like load (exit 1)", "0 sockets")


# ---------------------------------------------------------------------------------------------- bundles


def _bundle_source(hub, env, monkeypatch, tmp_path, repo="acme/bundled"):
    from kernel_loader.cli import main

    point_at(monkeypatch, hub.endpoint)
    publish(hub, tmp_path, repo)
    proj = write_project(tmp_path, {repo: 1})
    assert main(["lock", str(proj), "--variant", VARIANT]) == 0
    assert main(["download", "--lock", str(proj / "kernels.lock"), "--all-variants"]) == 0
    out = tmp_path / "kernels.tar"
    assert main(["bundle", "export", str(out), "--lock", str(proj / "kernels.lock")]) == 0
    return out


def test_bundle_round_trip_loads_through_transformers_with_hub_gone(hub, env, monkeypatch, tmp_path):
    pytest.importorskip("transformers")
    out = _bundle_source(hub, env, monkeypatch, tmp_path)
    second = tmp_path / "air-gapped-cache"
    child = textwrap.dedent(f"""
        import json, socket, sys, warnings
        attempts = []
        def guard(self, address):
            attempts.append(address)
            raise OSError("socket guard")
        socket.socket.connect = guard
        from kernel_loader.cli import main
        assert main(["bundle", "import", {str(out)!r}]) == 0
        import torch, kernel_loader
        from transformers import LlamaConfig, LlamaForCausalLM
        kernel_loader.enable()
        cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=4, num_key_value_heads=2, initializer_range=0.5)
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).eval()
        ids = torch.randint(1, 64, (2, 12))
        with torch.no_grad():
            model.set_attn_implementation("sdpa")
            ref = model(ids).logits
            model.set_attn_implementation("acme/bundled")
            out = model(ids).logits
        k = kernel_loader.load("acme/bundled")
        print(json.dumps({{"fallback": k.fallback, "calls": len(k.module.CALLS) if k.module else 0,
                          "err": (out - ref).abs().max().item(), "sockets": len(attempts),
                          "offline": k.resolution.offline if k.resolution else None}}))
    """)
    hub.stop()
    try:
        env_vars = {**os.environ, "HF_HUB_OFFLINE": "1", "KERNELS_CACHE": str(second), "HF_HUB_CACHE": str(second),
                    "KERNEL_LOADER_TRUST": "", "HF_ENDPOINT": "http://127.0.0.1:9",
                    "PYTHONPATH": str(REPO_ROOT)}
        res = subprocess.run([sys.executable, "-c", child], env=env_vars, capture_output=True, text=True, timeout=300)
    finally:
        hub.process = start_local_hub(hub.root, hub.port).process  # the module's other tests need it back
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["fallback"] is None and got["calls"] > 0 and got["offline"] is True, got
    assert got["err"] < 1e-4 and got["sockets"] == 0, got
    assert cache_problems(second) == []
    report("bundle import on a second cache, Hub stopped, HF_HUB_OFFLINE=1",
           "attn_implementation='acme/bundled' runs the kernel", f"0 sockets; logits max err {got['err']:.1e}")


def _tar_with(tmp_path, name, members):
    """A bundle whose manifest is the real one and whose members are replaced by ``members``."""
    path = tmp_path / name
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            tar.addfile(info, None if data is None else __import__("io").BytesIO(data))
    return path


@pytest.mark.parametrize("attack", ["dotdot", "absolute", "symlink", "hardlink", "device", "huge", "unexpected",
                                    "flipped", "missing", "duplicate"])
def test_bundle_import_rejects_hostile_members(hub, env, monkeypatch, tmp_path, attack):
    import io

    from kernel_loader.bundle import import_bundle

    good = _bundle_source(hub, env, monkeypatch, tmp_path, repo=f"acme/hostile-{attack}")
    with tarfile.open(good) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    manifest, files = members[0], members[1:]
    victim_info, victim_data = files[-1]

    def info(name, **kw):
        i = tarfile.TarInfo(name)
        for k, v in kw.items():
            setattr(i, k, v)
        return i

    bad = {
        "dotdot": [(info("kernels/../../evil.py", size=3), b"bad")],
        "absolute": [(info("/tmp/evil.py", size=3), b"bad")],
        "symlink": [(info(victim_info.name, type=tarfile.SYMTYPE, linkname="/etc/passwd"), None)],
        "hardlink": [(info(victim_info.name, type=tarfile.LNKTYPE, linkname=files[0][0].name), None)],
        "device": [(info(victim_info.name, type=tarfile.CHRTYPE, devmajor=1, devminor=3), None)],
        "huge": [(info(victim_info.name, size=victim_info.size), victim_data)],
        "unexpected": [(info(victim_info.name.rsplit("/", 1)[0] + "/extra.py", size=3), b"bad")],
        "flipped": [(info(victim_info.name, size=victim_info.size), bytes([victim_data[0] ^ 1]) + victim_data[1:])],
        "missing": [],
        "duplicate": [(victim_info, victim_data), (victim_info, victim_data)],
    }[attack]
    if attack == "huge":
        monkeypatch.setenv("KERNEL_LOADER_BUNDLE_MAX_FILE", str(victim_info.size - 1))
    path = _tar_with(tmp_path, f"{attack}.tar", [manifest, *files[:-1], *bad])
    monkeypatch.setenv("KERNELS_CACHE", str(tmp_path / "target"))
    fragment = {"dotdot": "'..' part", "absolute": "absolute", "symlink": "is a symlink", "hardlink": "hard link",
                "device": "is a device", "huge": "limits are", "unexpected": "not a file the bundle's lock lists",
                "flipped": "but the lock says", "missing": "missing from the bundle",
                "duplicate": "appears twice"}[attack]
    with pytest.raises(ValueError, match=fragment) as e:
        import_bundle(path)
    assert str(path) in str(e.value)
    target = tmp_path / "target"
    assert not list(target.glob("kernels--*/snapshots/*/build/*/*")), "nothing may become visible"
    assert not [p for p in target.glob("kernels--*/blobs/*")], "blobs created by a failed import are removed"
    assert not (tmp_path / "evil.py").exists() and not Path("/tmp/evil.py").exists()
    report(f"bundle import: {attack} member", "ValueError naming the member; cache unchanged",
           str(e.value).split(": ", 1)[-1][:110])


# ---------------------------------------------------------------------------------------------- many processes

CHILD = """
import hashlib, json, sys
import kernel_loader
k = kernel_loader.load(sys.argv[1], strict=True)
digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(k.path.iterdir()))).hexdigest()
print(json.dumps({"commit": k.commit, "variant": k.variant, "digest": digest}))
"""


def _child_env(cache: Path, endpoint: str, **extra) -> dict:
    return {**os.environ, "KERNELS_CACHE": str(cache), "HF_HUB_CACHE": str(cache), "HF_ENDPOINT": endpoint,
            "KERNEL_LOADER_TRUST": "acme", "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", **extra}


def test_16_cold_processes_download_each_file_once(hub, proxy, tmp_path):
    n = 16
    publish(hub, tmp_path, "acme/crowd", big=200_000)
    cache = tmp_path / "crowd-cache"
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, "acme/crowd"], env=_child_env(cache, proxy.endpoint),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
    results = [p.communicate(timeout=600) for p in procs]
    ok = [json.loads(out.strip().splitlines()[-1]) for (out, err), p in zip(results, procs) if p.returncode == 0]
    errors = [err[-500:] for (out, err), p in zip(results, procs) if p.returncode != 0]
    assert len(ok) == n, errors
    assert len({(r["commit"], r["digest"]) for r in ok}) == 1
    downloads = proxy.downloads()
    assert sorted(Path(p).name for p in downloads) == sorted(["__init__.py", "impl.py", "metadata.json", BIG])
    assert set(downloads.values()) == {1}, downloads
    refs = [r for r in proxy.log if r.path.endswith("/refs")]
    assert len(refs) == 1, f"refs listed {len(refs)} times; the TTL listing cache should make it once"
    assert cache_problems(cache) == []
    report(f"{n} concurrent cold processes, one node", f"{len(ok)}/{n} succeed, identical digests",
           f"GETs per file: {sorted(set(downloads.values()))} over {len(downloads)} files; refs listed {len(refs)}x")


DIST_CHILD = """
import json, os, sys, torch, torch.distributed as dist
dist.init_process_group("gloo", init_method=sys.argv[2], rank=int(os.environ["RANK"]),
                        world_size=int(os.environ["WORLD_SIZE"]))
from kernel_loader.distributed import load_on_local_rank0
k = load_on_local_rank0(sys.argv[1], strict=True)
q = torch.randn(1, 2, 6, 8)
torch.testing.assert_close(k.sdpa(q, q, q), torch.nn.functional.scaled_dot_product_attention(q, q, q))
got = [None] * dist.get_world_size()
dist.all_gather_object(got, (k.commit, k.resolution.offline))
print(json.dumps({"rank": dist.get_rank(), "all": got}))
dist.destroy_process_group()
"""


def test_distributed_local_rank0_fetches_others_load_offline(hub, proxy, tmp_path):
    pytest.importorskip("torch.distributed")
    publish(hub, tmp_path, "acme/dist")
    cache = tmp_path / "dist-cache"
    world = 3
    init = f"file://{tmp_path / 'dist-init'}"
    procs = [subprocess.Popen([sys.executable, "-c", DIST_CHILD, "acme/dist", init],
                              env=_child_env(cache, proxy.endpoint, RANK=str(r), LOCAL_RANK=str(r),
                                             WORLD_SIZE=str(world)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(world)]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-800:] for _, e in results]
    got = json.loads(results[0][0].strip().splitlines()[-1])["all"]
    assert len({c for c, _ in got}) == 1
    assert [off for _, off in got] == [False] + [True] * (world - 1)  # only local rank 0 went to the Hub
    assert set(proxy.downloads().values()) == {1}
    assert len([r for r in proxy.log if r.path.endswith("/refs")]) == 1
    report("torch.distributed (gloo, 3 ranks): load_on_local_rank0", "rank 0 fetches, ranks 1-2 load offline",
           "one GET per file, refs listed once")


# ---------------------------------------------------------------------------------------------- faults


@pytest.mark.parametrize("kind, kw, expect", [
    ("truncate", {}, "retry"),
    ("flip", {}, "retry"),
    ("stall", {"stall_s": 4.0}, "retry"),
    ("status", {"code": 429}, "retry"),
    ("status", {"code": 500}, "error"),
    ("status", {"code": 500, "times": 50}, "error"),
])
def test_proxy_faults_end_in_retry_or_clear_error(hub, proxy, env, monkeypatch, tmp_path, kind, kw, expect):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_DOWNLOAD_TIMEOUT", 1)
    repo = f"acme/fault-{kind}-{kw.get('code', 0)}-{kw.get('times', 1)}"
    publish(hub, tmp_path, repo, big=300_000)
    proxy.arm(kind, BIG, **kw)
    k, warned = load_quietly(repo)
    attention_still_runs(k)
    assert cache_problems(env) == []
    label = (f"proxy: {kind}" + (f" {kw['code']}" if "code" in kw else "")
             + (" (every request)" if kw.get("times") else ""))
    if expect == "retry":
        assert k.fallback is None and k.module.CALLS, k.fallback
        served = [r for r in proxy.log if r.method == "GET" and r.path.endswith(BIG) and r.fault is None]
        assert proxy.faults[0].fired == 1 and served, "the fault must have hit and a clean retry followed"
        report(label, "successful retry, kernel runs", f"1 faulted + {len(served)} clean GET(s) of the file")
    else:
        assert k.variant is None and "HTTP 500" in k.fallback, k.fallback
        clear_cache()
        for f in proxy.faults:
            f.fired = f.times  # the Hub recovers
        again = kernel_loader.load(repo, strict=True)
        assert again.module.CALLS == [] and again.fallback is None
        attention_still_runs(again)
        report(label, "clear error -> sdpa; next load succeeds", k.fallback)
    assert cache_problems(env) == []


def test_olah_killed_mid_download(hub, proxy, env, monkeypatch, tmp_path):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_DOWNLOAD_TIMEOUT", 2)
    publish(hub, tmp_path, "acme/killed", big=24 << 20)
    proxy.arm("throttle", BIG)
    killed = threading.Event()

    def kill_once(sent):
        if sent >= (1 << 20) and not killed.is_set():
            killed.set()
            os.kill(hub.pid, signal.SIGKILL)

    proxy.on_body_chunk = kill_once
    try:
        with pytest.raises(KernelUnavailable) as e:
            kernel_loader.load("acme/killed", strict=True)
        assert killed.is_set(), (e.value.reason, proxy.log[-5:])
        reason = e.value.reason
        assert "acme/killed" in reason and e.value.stage in ("fetch", "resolve"), reason
        assert cache_problems(env) == []
        assert not list(env.glob(f"kernels--acme--killed/snapshots/*/build/*/{BIG}")), "no partial file visible"
        clear_cache()
        fb, _ = load_quietly("acme/killed")
        attention_still_runs(fb)
    finally:
        proxy.on_body_chunk = None
        hub.process.wait(timeout=10)
        hub.process = start_local_hub(hub.root, hub.port).process
    clear_cache()
    k = kernel_loader.load("acme/killed", strict=True)  # the Hub is back: the retry completes
    assert k.fallback is None and (k.path / BIG).stat().st_size == 24 << 20
    assert cache_problems(env) == []
    report("olah killed mid-download (SIGKILL after 1 MiB of 24 MiB)",
           "clear error -> sdpa; no partial file visible; retry after restart succeeds", reason)


DISK_CHILD = """
import json, resource, signal, sys, torch, warnings
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write over the limit fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
import kernel_loader
with warnings.catch_warnings(record=True):
    warnings.simplefilter("always")
    k = kernel_loader.load(sys.argv[1])
q = torch.randn(1, 2, 5, 8)
torch.testing.assert_close(k.sdpa(q, q, q), torch.nn.functional.scaled_dot_product_attention(q, q, q))
print(json.dumps({"fallback": k.fallback}))
"""


def test_disk_full_during_download(hub, proxy, env, tmp_path):
    publish(hub, tmp_path, "acme/diskfull", big=300_000)
    cache = tmp_path / "full-cache"
    res = subprocess.run([sys.executable, "-c", DISK_CHILD, "acme/diskfull"], env=_child_env(cache, proxy.endpoint),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    fallback = json.loads(res.stdout.strip().splitlines()[-1])["fallback"]
    assert fallback and "File too large" in fallback and "acme/diskfull" in fallback, fallback
    assert cache_problems(cache) == []
    assert not list(cache.glob(f"kernels--acme--diskfull/snapshots/*/build/*/{BIG}"))
    ok = subprocess.run([sys.executable, "-c", CHILD, "acme/diskfull"], env=_child_env(cache, proxy.endpoint),
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert cache_problems(cache) == []
    report("disk full during download (RLIMIT_FSIZE 100 kB, file 300 kB)",
           "clear error -> sdpa, model runs; retry with space succeeds", fallback)


READONLY_CHILD = """
import json, os, sys, torch, warnings
import kernel_loader
with warnings.catch_warnings(record=True):
    warnings.simplefilter("always")
    k = kernel_loader.load(sys.argv[1])
q = torch.randn(1, 2, 5, 8)
out = k.sdpa(q, q, q)
torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, q, q), atol=1e-5, rtol=1e-5)
print(json.dumps({"fallback": k.fallback, "variant": k.variant}))
"""


def _ro_mount_command(folder: Path, argv: list[str]) -> list[str]:
    """Run ``argv`` in a private mount namespace where ``folder`` is a read-only bind mount (EROFS on write)."""
    import shlex

    f = shlex.quote(str(folder))
    return ["unshare", "-m", "sh", "-c",
            f"mount --bind {f} {f} && mount -o remount,bind,ro {f} {f} && exec {shlex.join(argv)}"]


def _ro_mount_works(tmp_path) -> bool:
    probe = tmp_path / "ro-probe"
    probe.mkdir()
    try:
        res = subprocess.run(_ro_mount_command(probe, ["sh", "-c", f"! touch {probe}/x"]), capture_output=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0 and not (probe / "x").exists()


def test_read_only_cache(hub, proxy, env, tmp_path):
    if not _ro_mount_works(tmp_path):
        pytest.skip("needs unshare + a read-only bind mount (root or user namespaces) for a truly read-only cache")
    publish(hub, tmp_path, "acme/readonly")
    warm, cold = tmp_path / "ro-warm", tmp_path / "ro-cold"
    cold.mkdir()
    assert subprocess.run([sys.executable, "-c", CHILD, "acme/readonly"], env=_child_env(warm, proxy.endpoint),
                          capture_output=True, timeout=300).returncode == 0
    out = {}
    for name, cache, offline in (("warm", warm, "0"), ("warm-offline", warm, "1"), ("cold", cold, "0")):
        res = subprocess.run(_ro_mount_command(cache, [sys.executable, "-c", READONLY_CHILD, "acme/readonly"]),
                             env=_child_env(cache, proxy.endpoint, HF_HUB_OFFLINE=offline),
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, (name, res.stderr[-2000:])
        out[name] = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["warm"]["variant"] == VARIANT and out["warm-offline"]["variant"] == VARIANT, out
    assert out["cold"]["variant"] is None and "acme/readonly" in out["cold"]["fallback"], out
    assert "Read-only file system" in out["cold"]["fallback"], out
    assert cache_problems(warm) == [] and not list(cold.rglob("*")), "nothing may be written to a read-only cache"
    report("read-only cache (ro bind mount), warm, online and offline", "kernel loads from the cache; nothing written")
    report("read-only cache (ro bind mount), cold", "clear error -> sdpa, model runs", out["cold"]["fallback"])
