"""The local Hub end to end: publish with git, serve with a real olah on loopback, read with the stock clients
(huggingface_hub and kernels 0.17.2). Every test uses its own repo id because the Hub is session-wide."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TINY_VARIANT = "torch-cpu"  # the default variant of the tiny_kernel fixture (tests/conftest.py)
from kernel_loader.hub import kernel_repo_path, port_open, start_local_hub
from kernel_loader.publish import publish_local
from kernel_loader.spec import validate_repo_id

CUDA_VARIANT = "torch29-cxx11-cu126-x86_64-linux"  # never loadable on this CPU-only torch


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def _files(api, repo_id: str, revision: str) -> set[str]:
    return set(api.list_repo_files(repo_id, repo_type="kernel", revision=revision))


def test_versions_are_branches(local_hub, hub_api, tiny_kernel):
    tiny_kernel(value=1)
    v1 = publish_local(tiny_kernel.build_dir, "acme/refs", local_hub.root, 1)
    tiny_kernel(value=2)
    v2 = publish_local(tiny_kernel.build_dir, "acme/refs", local_hub.root, 2, message="second")

    assert (v1.branch, v2.branch) == ("v1", "v2") and v1.changed and v2.changed
    assert v1.variants == v2.variants == [TINY_VARIANT]
    refs = hub_api.list_repo_refs("acme/refs", repo_type="kernel")
    branches = {b.name: b.target_commit for b in refs.branches}
    assert branches["v1"] == v1.commit and branches["v2"] == v2.commit and "main" in branches
    # The git repo is bare, lives where olah looks for repo_type="kernel", and has the requested message.
    repo = kernel_repo_path(local_hub.root, "acme/refs")
    assert repo == local_hub.root / "kernels" / "acme" / "refs"
    assert _git(repo, "rev-parse", "--is-bare-repository") == "true"
    assert _git(repo, "log", "-1", "--format=%s%n%an", "v2").splitlines() == ["second", "kernel-loader"]


def test_tree_and_variant_only_download(local_hub, hub_api, tiny_kernel, tmp_path):
    from huggingface_hub import snapshot_download
    from kernels._rust import Digest, DigestAlgorithm, Metadata

    tiny_kernel(value=7)
    tiny_kernel(variant=CUDA_VARIANT, value=8, backend="cuda")
    publish_local(tiny_kernel.build_dir, "acme/listing", local_hub.root, 1)

    tree = hub_api.list_repo_tree("acme/listing", path_in_repo="build", revision="v1", repo_type="kernel")
    assert sorted(e.path for e in tree) == sorted([f"build/{TINY_VARIANT}", f"build/{CUDA_VARIANT}"])

    snap = Path(snapshot_download("acme/listing", repo_type="kernel", revision="v1",
                                  allow_patterns=[f"build/{TINY_VARIANT}/*"], cache_dir=tmp_path / "c"))
    got = sorted(str(p.relative_to(snap)) for p in snap.rglob("*") if p.is_file())
    assert got == [f"build/{TINY_VARIANT}/{f}" for f in ("__init__.py", "impl.py", "metadata.json")]
    variant = snap / "build" / TINY_VARIANT
    src = tiny_kernel.build_dir / "build" / TINY_VARIANT
    for f in ("__init__.py", "impl.py", "metadata.json"):
        assert (variant / f).read_bytes() == (src / f).read_bytes()
    # What came over the wire still matches the digest recorded at build time.
    Metadata.read_from_file(variant / "metadata.json").digest.validate(
        Digest.hash_variant(DigestAlgorithm.SHA256, variant))


def test_stock_kernels_client_loads_each_version(local_hub, tiny_kernel, tmp_path):
    import kernels

    tiny_kernel(value=1)
    tiny_kernel(variant=CUDA_VARIANT, value=99, backend="cuda")
    publish_local(tiny_kernel.build_dir, "acme/load", local_hub.root, 1)
    tiny_kernel(value=2)
    publish_local(tiny_kernel.build_dir, "acme/load", local_hub.root, 2, variants=[TINY_VARIANT])

    k1 = kernels.get_kernel("acme/load", version=1, trust_remote_code=True)
    k2 = kernels.get_kernel("acme/load", version=2, trust_remote_code=True)
    assert (k1.value(), k2.value(), k1.add(2, 3)) == (1, 2, 5)
    assert Path(k1.__file__).parent.name == TINY_VARIANT  # the CUDA build was not picked

    decisions = {d.variant.variant_str: d for d in kernels.get_kernel_variants("acme/load", version=1)}
    assert set(decisions) == {TINY_VARIANT, CUDA_VARIANT}
    assert isinstance(decisions[TINY_VARIANT], kernels.VariantAccepted)
    assert not isinstance(decisions[CUDA_VARIANT], kernels.VariantAccepted)
    # v2 was branched from main with only the CPU variant.
    assert {d.variant.variant_str for d in kernels.get_kernel_variants("acme/load", version=2)} == {TINY_VARIANT}

    with pytest.raises(ValueError, match="Version 3 not found"):
        kernels.get_kernel("acme/load", version=3, trust_remote_code=True)


def test_republish_replaces_only_that_variant(local_hub, hub_api, tiny_kernel):
    tiny_kernel(value=1, extra_files={"old.py": "X = 1\n"})
    tiny_kernel(variant=CUDA_VARIANT, value=5, backend="cuda")
    first = publish_local(tiny_kernel.build_dir, "acme/replace", local_hub.root, 1)
    assert f"build/{TINY_VARIANT}/old.py" in _files(hub_api, "acme/replace", "v1")

    vdir = tiny_kernel(value=3)  # rewritten without old.py
    (vdir / "__pycache__").mkdir()
    (vdir / "__pycache__" / "impl.cpython-311.pyc").write_bytes(b"\0junk")
    (vdir / "stray.pyc").write_bytes(b"\0junk")
    second = publish_local(tiny_kernel.build_dir, "acme/replace", local_hub.root, 1, variants=[TINY_VARIANT])

    files = _files(hub_api, "acme/replace", "v1")
    assert f"build/{TINY_VARIANT}/old.py" not in files
    assert not any("__pycache__" in f or f.endswith(".pyc") for f in files)
    assert f"build/{CUDA_VARIANT}/__init__.py" in files  # not part of this publish: kept
    assert second.commit != first.commit
    assert _git(second.repo_path, "rev-parse", f"{second.commit}^") == first.commit  # history kept
    init = hub_api.hf_hub_download  # fresh read of the branch tip, not a cached copy
    path = init("acme/replace", f"build/{TINY_VARIANT}/__init__.py", repo_type="kernel", revision="v1")
    assert "VALUE = 3" in Path(path).read_text()

    again = publish_local(tiny_kernel.build_dir, "acme/replace", local_hub.root, 1, variants=[TINY_VARIANT])
    assert not again.changed and again.commit == second.commit


@pytest.mark.parametrize("repo_id", ["noslash", "a/b/c", "-a/b", "a/b-", "a/b--c", "a/b..c", "a/b c",
                                     "a/b.git", "", "a/" + "x" * 100])
def test_bad_repo_id(repo_id, tmp_path):
    with pytest.raises(ValueError, match="org/name"):
        validate_repo_id(repo_id)
    with pytest.raises(ValueError, match=r"repo_id"):
        publish_local(tmp_path, repo_id, tmp_path / "hub", 1)


@pytest.mark.parametrize("repo_id", ["acme/tree", "acme/resolve", "resolve/k", "acme/xet-read-token"])
def test_names_olah_cannot_serve_are_refused(repo_id, tiny_kernel, tmp_path):
    tiny_kernel()
    with pytest.raises(ValueError, match="cannot be served by the local Hub"):
        publish_local(tiny_kernel.build_dir, repo_id, tmp_path / "hub", 1)


@pytest.mark.parametrize("version", [0, -1, True, "1", 1.0, None])
def test_bad_version(version, tiny_kernel, tmp_path):
    tiny_kernel()
    with pytest.raises(ValueError, match=r"version must be a positive int.*" + repr(version).replace(".", r"\.")):
        publish_local(tiny_kernel.build_dir, "acme/x", tmp_path / "hub", version)


def test_bad_build_dirs(tiny_kernel, tmp_path):
    hub = tmp_path / "hub"
    with pytest.raises(ValueError, match="does not exist"):
        publish_local(tmp_path / "missing", "acme/x", hub, 1)
    with pytest.raises(ValueError, match="no build/ folder"):
        publish_local(tmp_path, "acme/x", hub, 1)

    vdir = tiny_kernel()
    with pytest.raises(ValueError, match=r"variants \['torch-cuda'\] not found.*torch-cpu"):
        publish_local(tiny_kernel.build_dir, "acme/x", hub, 1, variants=["torch-cuda"])

    (vdir / "impl.py").write_text("def add(a, b):\n    return a - b\n")  # tampered after build
    with pytest.raises(ValueError, match="do not match the digest"):
        publish_local(tiny_kernel.build_dir, "acme/x", hub, 1)

    (vdir / "metadata.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(ValueError, match="not valid kernel metadata"):
        publish_local(tiny_kernel.build_dir, "acme/x", hub, 1)

    (vdir / "metadata.json").unlink()
    with pytest.raises(ValueError, match="has no metadata.json"):
        publish_local(tiny_kernel.build_dir, "acme/x", hub, 1)

    tiny_kernel()
    (tiny_kernel.build_dir / "build" / "not-a-variant").mkdir()
    with pytest.raises(ValueError, match="not-a-variant is not a valid build variant name"):
        publish_local(tiny_kernel.build_dir, "acme/x", hub, 1)
    assert not (hub / "kernels" / "acme" / "x").exists()  # nothing half-published


def test_unknown_repo_is_not_found(local_hub, hub_api):
    from huggingface_hub.errors import HfHubHTTPError

    with pytest.raises(HfHubHTTPError) as err:
        hub_api.list_repo_refs("acme/never-published", repo_type="kernel")
    assert err.value.response.status_code in (401, 404)


def test_start_and_stop(tmp_path):
    hub = start_local_hub(tmp_path / "root")
    try:
        pid = hub.pid
        assert port_open(hub.port) and hub.running()
        assert hub.endpoint == f"http://127.0.0.1:{hub.port}"
        assert "offline = true" in hub.config_path.read_text()
        assert hub.config_path.is_relative_to(tmp_path)  # olah state stays under the root
        with pytest.raises(OSError, match=f"port {hub.port}.*already in use"):
            start_local_hub(tmp_path / "other", hub.port)
    finally:
        hub.stop()
    assert not port_open(hub.port) and not hub.running()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    hub.stop()  # idempotent
    assert (tmp_path / "root" / ".olah" / "logs").is_dir()  # olah's own logs: under the root, not in cwd

    with start_local_hub(tmp_path / "root") as hub2:
        assert port_open(hub2.port)
    assert not port_open(hub2.port)


def test_serve_forever_stops_on_sigterm(tmp_path):
    code = ("import sys; from kernel_loader.cli import main; "
            "sys.exit(main(['hub', 'serve', '--root', sys.argv[1]]))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "root")], stdout=subprocess.PIPE,
                            text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        endpoint = None
        for line in proc.stdout:
            if line.startswith("export HF_ENDPOINT="):
                endpoint = line.strip().split("=", 1)[1]
                break
        assert endpoint and endpoint.startswith("http://127.0.0.1:")
        port = int(endpoint.rsplit(":", 1)[1])
        assert port_open(port)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert not port_open(port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_olah_dies_with_its_parent(tmp_path):
    # A test run or CLI killed with SIGKILL never calls stop(); the server must not outlive it.
    code = ("import sys, time; from kernel_loader.hub import start_local_hub; "
            "h = start_local_hub(sys.argv[1]); print(h.pid, h.port, flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "root")], stdout=subprocess.PIPE,
                              text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        pid, port = map(int, parent.stdout.readline().split())
        assert port_open(port)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and port_open(port):
        time.sleep(0.1)
    assert not port_open(port)


def test_start_timeout_reports_log_and_cleans_up(tmp_path):
    with pytest.raises(RuntimeError, match=r"did not answer on http://127\.0\.0\.1:\d+ within 0s.*last lines of"):
        start_local_hub(tmp_path / "root", timeout=0)
