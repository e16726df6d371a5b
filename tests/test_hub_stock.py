"""The embedded Hub (`kernel-loader hub serve`: olah behind kernel_loader.hubfront) against the stock clients:
`kernels versions`, stock `kernels lock` and `kernels.get_kernel` work for an org the administrator marks trusted,
and refuse an org it does not; our lock file is byte-identical to the stock writer's.

The stock commands run as subprocesses of the installed `kernels` CLI with only HF_ENDPOINT and the cache pointed
at the test Hub (no HF_HUB_DISABLE_TELEMETRY, which breaks that CLI with huggingface_hub 2.4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from test_load import PY_FLASH
from tiny_kernels import make_tiny_kernel

from kernel_loader.hub import free_port, start_local_hub
from kernel_loader.publish import publish_local

REPO_ROOT = Path(__file__).resolve().parents[1]
KERNELS_CLI = Path(sys.executable).parent / "kernels"
OUR_CLI = [sys.executable, "-c", "import sys; from kernel_loader.cli import main; sys.exit(main())"]


@pytest.fixture(scope="module")
def front_hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("stock-hub")
    build = tmp_path_factory.mktemp("stock-build")
    for repo in ("acme/stock", "shady/stock"):
        init = PY_FLASH + "\nfrom .impl import add\nVALUE = 7\n\n\ndef value():\n    return VALUE\n"
        make_tiny_kernel(build / repo, name="stock", value=7, extra_files={"__init__.py": init})
        publish_local(build / repo, repo, root, 1)
    hub = start_local_hub(root, free_port(), front=True, trusted_orgs=["acme"])
    yield hub
    hub.stop()


def _env(hub, cache: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KERNEL_LOADER_", "HF_HUB_DISABLE_TELEMETRY"))}
    return {**env, "HF_ENDPOINT": hub.endpoint, "HF_HUB_CACHE": str(cache), "KERNELS_CACHE": str(cache),
            "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", **extra}


def _overview(hub, org: str):
    try:
        with urllib.request.urlopen(f"{hub.endpoint}/api/organizations/{org}/overview", timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, None


def test_overview_answers_trust_for_marked_orgs_only(front_hub):
    status, body = _overview(front_hub, "acme")
    assert status == 200 and body["trustedKernelPublisher"] is True and body["name"] == "acme"
    status, body = _overview(front_hub, "shady")  # has repos here, not marked
    assert status == 200 and body["trustedKernelPublisher"] is False
    assert _overview(front_hub, "nobody")[0] == 404
    # The administrator's file is read on every request: no restart needed.
    (front_hub.root / "trusted-orgs").write_text("# orgs whose kernels users may import\nshady\n")
    try:
        assert _overview(front_hub, "shady")[1]["trustedKernelPublisher"] is True
    finally:
        (front_hub.root / "trusted-orgs").unlink()
    assert _overview(front_hub, "shady")[1]["trustedKernelPublisher"] is False


def test_bad_trusted_org_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match="'a/b' is not an org name"):
        start_local_hub(tmp_path / "h", front=True, trusted_orgs=["a/b"])
    (tmp_path / "h2").mkdir()
    (tmp_path / "h2" / "trusted-orgs").write_text("acme\nbad org\n")
    with pytest.raises(ValueError, match="trusted-orgs line 2: 'bad org' is not an org name"):
        start_local_hub(tmp_path / "h2", front=True)


def test_stock_kernels_versions(front_hub, tmp_path):
    res = subprocess.run([str(KERNELS_CLI), "versions", "acme/stock"], env=_env(front_hub, tmp_path / "c"),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Version 1:" in res.stdout and "torch-cpu" in res.stdout, res.stdout


def _project(tmp_path, name: str) -> Path:
    proj = tmp_path / name
    proj.mkdir()
    (proj / "pyproject.toml").write_text('[project]\nname = "demo"\n\n[tool.kernels.dependencies]\n'
                                         '"acme/stock" = 1\n')
    return proj


def test_stock_kernels_lock_and_ours_are_byte_identical(front_hub, tmp_path):
    stock, ours = _project(tmp_path, "stock"), _project(tmp_path, "ours")
    env = _env(front_hub, tmp_path / "c")
    res = subprocess.run([str(KERNELS_CLI), "lock", str(stock)], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    # Ours with no allow-list either: the Hub's flag is what trusts acme.
    res = subprocess.run([*OUR_CLI, "lock", str(ours)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (ours / "kernels.lock").read_bytes() == (stock / "kernels.lock").read_bytes()
    # The untrusted org is refused by both, before anything is downloaded.
    (stock / "pyproject.toml").write_text('[tool.kernels.dependencies]\n"shady/stock" = 1\n')
    res = subprocess.run([str(KERNELS_CLI), "lock", str(stock)], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "not from a trusted publisher" in res.stderr
    (ours / "pyproject.toml").write_text('[tool.kernels.dependencies]\n"shady/stock" = 1\n')
    res = subprocess.run([*OUR_CLI, "lock", str(ours)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and "publisher 'shady' is not trusted (not a trusted kernel publisher" in res.stderr


GET_KERNEL = textwrap.dedent("""
    import json, sys
    from kernels import get_kernel
    try:
        k = get_kernel(sys.argv[1], version=1)
        print(json.dumps({"value": k.value(), "add": k.add(2, 3)}))
    except ValueError as e:
        print(json.dumps({"error": str(e)}))
""")


def test_stock_get_kernel_trusts_marked_org_only(front_hub, tmp_path):
    env = _env(front_hub, tmp_path / "c")
    out = {}
    for repo in ("acme/stock", "shady/stock"):
        res = subprocess.run([sys.executable, "-c", GET_KERNEL, repo], env=env, capture_output=True, text=True,
                             timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        out[repo] = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["acme/stock"] == {"value": 7, "add": 5}
    assert "not from a trusted publisher" in out["shady/stock"]["error"]


def test_kernel_loader_trusts_the_hub_flag_through_the_front(front_hub, tmp_path):
    child = ("import kernel_loader, json; k = kernel_loader.load('acme/stock'); s = kernel_loader.load('shady/stock');"
             "print(json.dumps([k.module.value() if k.module else k.fallback, s.fallback]))")
    res = subprocess.run([sys.executable, "-W", "ignore", "-c", child], env=_env(front_hub, tmp_path / "c"),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    value, refused = json.loads(res.stdout.strip().splitlines()[-1])
    assert value == 7
    assert refused.startswith("publisher 'shady' is not trusted (not a trusted kernel publisher on ")


def test_hub_serve_command_marks_trusted_orgs(tmp_path):
    import signal
    import time

    port = free_port()
    proc = subprocess.Popen([*OUR_CLI, "hub", "serve", "--root", str(tmp_path / "h"),
                             "--port", str(port), "--trusted-org", "acme"], env={**os.environ,
                            "PYTHONPATH": str(REPO_ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if line.startswith("export HF_ENDPOINT="):
                break
        assert lines[-1].strip() == f"export HF_ENDPOINT=http://127.0.0.1:{port}", (lines, proc.stderr.read())
        assert any("trusted kernel publishers: acme" in ln for ln in lines), lines

        class Hub:
            endpoint = f"http://127.0.0.1:{port}"

        assert _overview(Hub, "acme")[1]["trustedKernelPublisher"] is True
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
