"""A Hub that lies: containment, bounds before bytes, build ids, and reasons that name the real cause.

The Hub is real (olah on loopback, this module's own, from test_reliability's fixtures); the lies are told by the
fault proxy in front of it (tests/faultproxy.py: ``headers``, ``rewrite``, ``serve``), or by git objects written
straight into the Hub's repos (a branch pointing at a tree, a tag and a branch of one name, a branch without
build/). That is the threat: whoever controls the Hub or a mirror controls headers, listings and bytes.

Every attack runs inside :func:`watched`, which checks that nothing was written outside the cache, by two means:
a walk of the test's whole temp tree before and after (new paths outside the cache), and a Python audit hook that
records every path opened for writing, created, renamed onto, linked or removed while the load runs. It also
measures the bytes read from the Hub (kernel_loader.hubio.traffic), the time, and the peak RSS during the load
(VmHWM after resetting it through /proc/self/clear_refs, and its growth over the RSS before). The lying proxy runs
in this process too, so its own buffers (a 100,000-entry listing it builds) count in that peak. Each test appends
its row to RELIABILITY.md's table.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import kernel_loader
from kernel_loader import hubio
from kernel_loader.api import clear_cache
from kernel_loader.errors import KernelUnavailable
from test_reliability import (BIG, VARIANT, attention_still_runs, cache_problems, env, hub, load_quietly,  # noqa: F401
                              point_at, proxy, publish, report)

GIB = 1 << 30


# ---------------------------------------------------------------------------------------------- the watch


class _Audit:
    """Paths written while ``active`` (a list), from Python's audit events."""

    active: list | None = None
    installed = False

    @classmethod
    def install(cls) -> None:
        if not cls.installed:
            sys.addaudithook(cls.hook)
            cls.installed = True

    @classmethod
    def hook(cls, event: str, args) -> None:
        rec = cls.active
        if rec is None:
            return
        paths = []  # (path, dir_fd it is relative to, or None)
        if event == "open":
            path, mode, flags = args
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC))
            if writes:
                paths.append((path, None))
        elif event in ("os.rename", "os.link"):  # (src, dst, src_dir_fd, dst_dir_fd)
            paths.append((args[1], args[3]))
        elif event in ("os.symlink", "os.mkdir", "os.chmod"):  # (src, dst, dir_fd), (path, mode, dir_fd)
            paths.append((args[1] if event == "os.symlink" else args[0], args[2]))
        elif event in ("os.remove", "os.rmdir"):  # (path, dir_fd)
            paths.append((args[0], args[1]))
        elif event == "os.truncate":
            paths.append((args[0], None))
        for p, dir_fd in paths:
            if not isinstance(p, (str, bytes, os.PathLike)):
                continue
            p = os.fsdecode(p)
            if dir_fd is not None and not os.path.isabs(p):  # shutil.rmtree removes by name inside a dir fd
                with contextlib.suppress(OSError):
                    p = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), p)
            rec.append((event, p))


def _real(p: str) -> str:
    p = os.path.abspath(p)
    return os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p))


def _inside(p: str, root: str) -> bool:
    return p == root or p.startswith(root + os.sep)


def _tree(root: Path) -> set[str]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            out.add(os.path.join(dirpath, n))
    return out


def _vm_mb(field: str) -> float:
    """VmHWM (peak RSS) or VmRSS of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Watch:
    cache: Path
    outside: list[str] = field(default_factory=list)
    walked: int = 0
    audited: int = 0
    bytes: int = 0
    requests: int = 0
    seconds: float = 0.0
    rss_before_mb: float = 0.0
    peak_rss_mb: float = 0.0

    def numbers(self) -> str:
        return (f"nothing written outside the cache (walk of {self.walked} paths, {self.audited} write events "
                f"audited); {self.bytes} B read from the Hub in {self.requests} request(s); {self.seconds:.2f} s; "
                f"peak RSS {self.peak_rss_mb:.0f} MB (+{self.peak_rss_mb - self.rss_before_mb:.0f} MB)")


@contextlib.contextmanager
def watched(tmp_path: Path, cache: Path, *, extra_roots=()):
    """Run the body as one attack; afterwards ``w.outside`` lists every path written outside ``cache``."""
    _Audit.install()
    cache.mkdir(parents=True, exist_ok=True)
    roots = [tmp_path, *extra_roots]
    before = set().union(*(_tree(r) for r in roots))
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: the peak below is this attack's
    w = Watch(cache, rss_before_mb=_vm_mb("VmRSS"))
    hubio.traffic.bytes = hubio.traffic.requests = 0
    events: list = []
    _Audit.active = events
    t0 = time.perf_counter()
    try:
        yield w
    finally:
        _Audit.active = None
        w.seconds = time.perf_counter() - t0
        w.peak_rss_mb = _vm_mb("VmHWM")
        w.bytes, w.requests = hubio.traffic.bytes, hubio.traffic.requests
        real_cache = os.path.realpath(cache)
        after = set().union(*(_tree(r) for r in roots))
        w.walked = len(after)
        w.audited = len(events)
        new = [p for p in after - before if not _inside(_real(p), real_cache)]
        # mkdir(exist_ok=True) of a folder that already existed writes nothing
        written = sorted({p for ev, p in events if not _inside(_real(p), real_cache)
                          and not (ev == "os.mkdir" and os.path.abspath(p) in before)})
        w.outside = sorted(set(new) | set(written))


def refused(k, fragment: str) -> str:
    assert k.variant is None and k.module is None, f"expected a refusal, got variant {k.variant}"
    assert fragment in k.fallback, k.fallback
    attention_still_runs(k)
    return k.fallback


def row(fault: str, outcome: str, reason: str, w: Watch) -> None:
    assert w.outside == [], f"written outside the cache: {w.outside[:5]}"
    report(fault, outcome, f"{reason[:150]} | {w.numbers()}")


def _repo_git(hub, repo: str):
    from kernel_loader.hub import kernel_repo_path
    from kernel_loader.publish.local import Git

    path = kernel_repo_path(hub.root, repo)
    return Git(path / ".git" if (path / ".git").is_dir() else path)


def _variant_listing(repo: str):
    return re.compile(rf"/api/kernels/{re.escape(repo)}/tree/[0-9a-f]{{40}}/build/{VARIANT}\?recursive=true$")


def _build_listing(repo: str):
    return re.compile(rf"/api/kernels/{re.escape(repo)}/tree/[0-9a-f]{{40}}/build$")


def _add_entries(*entries):
    def transform(body: bytes) -> bytes:
        return json.dumps(json.loads(body) + list(entries)).encode()

    return transform


def _edit_entry(name: str, **changes):
    def transform(body: bytes) -> bytes:
        items = json.loads(body)
        for it in items:
            if it["path"].endswith("/" + name):
                it.update(changes)
        return json.dumps(items).encode()

    return transform


# ---------------------------------------------------------------------------------------------- containment


@pytest.mark.parametrize("attack", ["etag-absolute", "etag-dotdot", "commit-header"])
def test_headers_never_become_paths(hub, proxy, env, tmp_path, attack):
    """huggingface_hub builds blob paths from ETag and snapshot paths from X-Repo-Commit; we build neither from a
    header, so the lie changes nothing: the kernel loads from files checked against the listed blob ids."""
    repo = f"acme/h-{attack}"
    publish(hub, tmp_path, repo, big=50_000)
    target = tmp_path / "outside" / "planted"
    headers = {"etag-absolute": {"ETag": f'"{target}"', "X-Linked-Etag": f'"{target}"'},
               "etag-dotdot": {"ETag": '"../../../../../outside-etag"', "X-Linked-Etag": '"../../../../outside"'},
               "commit-header": {"X-Repo-Commit": "../../../../outside-commit"}}[attack]
    proxy.arm("headers", "/", times=10**6, headers=headers, method="*")
    with watched(tmp_path, env) as w:
        k, _ = load_quietly(repo)
    assert k.fallback is None and k.module.CALLS == [], k.fallback
    attention_still_runs(k)
    assert not target.exists() and not (tmp_path / "outside").exists()
    assert any(r.fault == "headers" and "/resolve/" in r.path for r in proxy.log), "the lie must have been told"
    assert cache_problems(env) == []
    label = {"etag-absolute": f"ETag header = an absolute path", "etag-dotdot": "ETag header = ../../..",
             "commit-header": "X-Repo-Commit header = ../../.."}[attack]
    row(f"hostile Hub: {label}", "header ignored (paths are built from the listing's blob ids, checked against "
        "the bytes); kernel loads", "kernel ran", w)


@pytest.mark.parametrize("attack, entry, fragment", [
    ("dotdot", "build/torch-cpu/../../../../outside/evil.py", "'..' part"),
    ("absolute", "/tmp/outside-evil.py", "is not inside build/torch-cpu/"),
    ("backslash", "build/torch-cpu/..\\..\\evil.py", "backslashes"),
])
def test_listing_traversal_is_refused_before_any_file(hub, proxy, env, tmp_path, attack, entry, fragment):
    repo = f"acme/l-{attack}"
    publish(hub, tmp_path, repo)
    proxy.arm("rewrite", _variant_listing(repo), times=10**6,
              transform=_add_entries({"type": "file", "oid": "a" * 40, "size": 3, "path": entry}))
    with watched(tmp_path, env) as w:
        k, _ = load_quietly(repo)
    reason = refused(k, fragment)
    assert repr(entry)[1:20] in reason
    assert not [r for r in proxy.log if "/resolve/" in r.path], "no file may be requested"
    assert not list(env.glob("kernels--*/snapshots/*/build/*/*"))
    assert not Path("/tmp/outside-evil.py").exists()
    row(f"hostile Hub: variant listing entry {entry!r}", "refused before any file is downloaded", reason, w)


@pytest.mark.parametrize("attack, entry, fragment", [
    ("folder-dotdot", {"type": "directory", "oid": "b" * 40, "size": 0, "path": "build/torch-cpu/../.."},
     "is not a folder name inside build/"),
    ("folder-name", {"type": "directory", "oid": "b" * 40, "size": 0, "path": "build/torch..cpu"},
     "'torch..cpu' (not a valid variant folder name)"),
])
def test_variant_folder_names_are_checked(hub, proxy, env, tmp_path, attack, entry, fragment):
    repo = f"acme/v-{attack}"
    publish(hub, tmp_path, repo)

    def only(body: bytes) -> bytes:  # the lie replaces the real variant folder
        return json.dumps([entry]).encode()

    proxy.arm("rewrite", _build_listing(repo), times=10**6, transform=only)
    with watched(tmp_path, env) as w:
        k, _ = load_quietly(repo)
    reason = refused(k, fragment.split(" (")[0] if attack == "folder-dotdot" else "torch..cpu")
    if attack == "folder-name":
        assert "not a valid variant folder name" in reason and "revision" not in reason, reason
    assert not [r for r in proxy.log if "/resolve/" in r.path]
    row(f"hostile Hub: build/ listing holds {entry['path']!r}", "refused (named in the fallback reason)", reason, w)


# ---------------------------------------------------------------------------------------------- bounds


def test_metadata_listed_as_huge_is_refused_before_download(hub, proxy, env, tmp_path):
    repo = "acme/b-meta-listed"
    publish(hub, tmp_path, repo)
    proxy.arm("rewrite", _variant_listing(repo), times=10**6, transform=_edit_entry("metadata.json", size=GIB))
    with watched(tmp_path, env) as w:
        k, _ = load_quietly(repo)
    reason = refused(k, f"metadata.json is {GIB} bytes by the Hub's listing; at most 1048576")
    assert not [r for r in proxy.log if "/resolve/" in r.path]
    row("hostile Hub: listing says metadata.json is 1 GiB", "refused before download", reason, w)


@pytest.mark.parametrize("chunked", [False, True])
def test_metadata_served_as_1gib_stops_at_the_listed_size(hub, proxy, env, tmp_path, chunked):
    repo = f"acme/b-meta-served-{'chunked' if chunked else 'length'}"
    publish(hub, tmp_path, repo)

    def body():
        chunk = b" " * (1 << 20)
        for _ in range(1024):
            yield chunk

    proxy.arm("serve", re.compile(rf"/{re.escape(repo)}/resolve/.*/metadata\.json$"), times=10**6, body=body,
              length=None if chunked else GIB)
    with watched(tmp_path, env) as w:
        k, _ = load_quietly(repo)
    fragment = "its listing declares" if chunked else f"the Hub sends {GIB} bytes"
    reason = refused(k, fragment)
    assert w.bytes < 4 << 20, w.bytes  # the listing and at most a few chunks past the listed size
    assert w.peak_rss_mb < 2048
    row(f"hostile Hub: metadata.json served as 1 GiB ({'chunked' if chunked else 'Content-Length'})",
        "refused at the listed size; memory bounded", reason, w)


def test_file_listed_over_the_limit_is_refused_before_download(hub, proxy, env, tmp_path):
    repo = "acme/b-file-listed"
    publish(hub, tmp_path, repo, big=1000)
    proxy.arm("rewrite", _variant_listing(repo), times=10**6, transform=_edit_entry(BIG, size=5 * GIB))
    with watched(tmp_path, env) as w:
        k, _ = load_quietly(repo)
    reason = refused(k, f"'{BIG}' is {5 * GIB} bytes; at most {4 * GIB} are accepted per file")
    assert [r.path.rsplit("/", 1)[-1] for r in proxy.log if "/resolve/" in r.path] == ["metadata.json"]
    row("hostile Hub: listing says a file is 5 GiB (limit 4 GiB)", "refused after metadata.json, before the file",
        reason, w)


def test_file_served_longer_than_listed_is_refused(hub, proxy, env, tmp_path):
    repo = "acme/b-file-served"
    publish(hub, tmp_path, repo, big=100_000)

    def body():
        yield b"w" * 200_000

    proxy.arm("serve", re.compile(rf"/{re.escape(repo)}/resolve/.*/{BIG}$"), times=10**6, body=body, length=None)
    with watched(tmp_path, env) as w:
        k, _ = load_quietly(repo)
    reason = refused(k, "sent more than the 100000 bytes its listing declares")
    assert not list(env.glob(f"kernels--*/snapshots/*/build/*/{BIG}")) and cache_problems(env) == []
    row("hostile Hub: a file served longer than listed (chunked)", "refused at the listed size; nothing visible",
        reason, w)


def test_bytes_that_never_match_the_listed_blob_id(hub, proxy, env, tmp_path):
    repo = "acme/b-flip-always"
    publish(hub, tmp_path, repo, big=100_000)
    proxy.arm("flip", BIG, times=10**6)
    with watched(tmp_path, env) as w:
        k, _ = load_quietly(repo)
    reason = refused(k, "do not match the blob id")
    assert len([r for r in proxy.log if r.path.endswith(BIG)]) == 3  # three attempts, then refused
    assert not list(env.glob(f"kernels--*/snapshots/*/build/*/{BIG}")) and cache_problems(env) == []
    row("hostile Hub: a file's bytes never match its listed blob id", "refused after 3 attempts; nothing visible",
        reason, w)


@pytest.mark.parametrize("count", [3_000, 5_000, 100_000])
def test_thousands_of_unlisted_files_refuse_before_other_downloads(hub, proxy, env, tmp_path, count):
    repo = f"acme/b-unlisted-{count}"
    publish(hub, tmp_path, repo)
    extra = [{"type": "file", "oid": f"{i:040x}", "size": 10, "path": f"build/{VARIANT}/junk/f{i}.py"}
             for i in range(count)]
    proxy.arm("rewrite", _variant_listing(repo), times=10**6, transform=_add_entries(*extra))
    with watched(tmp_path, env) as w:
        k, _ = load_quietly(repo)
    fragment = {3_000: "the Hub lists 3000 file(s) that metadata.json's digest does not name",  # the digest check
                5_000: "the Hub's listing has more than 4097 entries",  # the count limit (4,096 files + metadata)
                100_000: "bytes; at most 4194304 are read"}[count]  # the listing's byte cap, before parsing
    reason = refused(k, fragment)
    fetched = [r.path.rsplit("/", 1)[-1] for r in proxy.log if "/resolve/" in r.path]
    assert fetched == (["metadata.json"] if count == 3_000 else []), fetched
    assert w.seconds < 30 and w.requests <= 4, (w.seconds, w.requests)
    row(f"hostile Hub: {count:,} files in the variant listing that metadata.json does not name",
        "refused before any other download", reason, w)


# ---------------------------------------------------------------------------------------------- build ids


@pytest.mark.parametrize("attack", ["stdlib", "importable"])
def test_build_id_cannot_shadow_a_module(hub, proxy, env, tmp_path, monkeypatch, attack):
    if attack == "stdlib":
        module_id = "colorsys"
    else:  # a real module on sys.path, with a name of the build-id shape
        module_id = "_acme_shadow_helper"
        (tmp_path / "mods").mkdir()
        (tmp_path / "mods" / f"{module_id}.py").write_text("VALUE = 'the real module'\n")
        monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    repo = f"acme/id-{attack}"
    import kernel_loader.integrity as integrity

    with monkeypatch.context() as m:  # a hostile publisher does not run our publish checks
        m.setattr(integrity, "check_build_id", lambda name, where: name)
        publish(hub, tmp_path, repo, module_id=module_id)
    with watched(tmp_path, env) as w:
        k, _ = load_quietly(repo)
    fragment = "is not a kernel build id" if attack == "stdlib" else "would shadow the importable module at"
    reason = refused(k, fragment)
    assert module_id in reason
    mod = sys.modules.get(module_id)  # something else may import the real colorsys; ours must never be it
    assert mod is None or not str(getattr(mod, "__file__", "")).startswith(str(env)), mod
    row(f"hostile Hub: metadata.json id = {module_id!r} ({'a stdlib module' if attack == 'stdlib' else 'an importable module'})",
        "refused before import", reason, w)


# ---------------------------------------------------------------------------------------------- reasons


def test_branch_pointing_at_a_tree_object(hub, proxy, env, tmp_path):
    repo = "acme/r-tree-ref"
    published, _ = publish(hub, tmp_path, repo)
    git = _repo_git(hub, repo)
    tree = git("rev-parse", f"{published.commit}^{{tree}}").stdout.decode().strip()
    (git.git_dir / "refs" / "heads" / "v2").write_text(tree + "\n")  # git itself refuses; a hostile Hub does not
    with watched(tmp_path, env) as w:
        k, _ = load_quietly(f"{repo}@v2")
    # olah fails on the tree ref (HTTP 500 for the refs listing): the reason says the Hub failed, and that it is
    # not a network problem, at once (no retries, no offline advice).
    reason = refused(k, "refs of acme/r-tree-ref: the Hub")
    assert "answered HTTP 500 (a server error, not a connectivity problem)" in reason
    assert w.seconds < 10, w.seconds  # at once: the old path retried for ~23 s
    assert "unreachable" not in reason and "offline" not in reason and "download" not in reason
    row("hostile Hub: branch v2 points at a tree object", "refused with the real cause, no offline advice", reason, w)


def test_status_500_names_a_server_error_without_offline_advice(hub, proxy, env, tmp_path):
    repo = "acme/r-500"
    publish(hub, tmp_path, repo)
    proxy.arm("status", f"/api/kernels/{repo}/refs", times=10**6, code=500)
    with watched(tmp_path, env) as w:
        k, _ = load_quietly(repo)
    reason = refused(k, "answered HTTP 500 (a server error, not a connectivity problem)")
    assert "offline" not in reason and "kernel-loader download" not in reason and "unreachable" not in reason
    assert w.seconds < 10, w.seconds  # no retry storm (it was ~23 s) on an answer that waiting does not change
    assert len([r for r in proxy.log if r.path.endswith("/refs")]) == 1
    row("hostile Hub: HTTP 500 on the refs listing", "refused with the status, no retries, no offline advice",
        reason, w)


def test_tag_and_branch_of_one_name_are_told_apart(hub, proxy, env, tmp_path):
    repo = "acme/r-clash"
    old, _ = publish(hub, tmp_path, repo, value=1)
    new, _ = publish(hub, tmp_path, repo, value=2)
    git = _repo_git(hub, repo)
    git("update-ref", "refs/tags/v1", old.commit)  # tag v1 at the older commit, branch v1 at the newer
    with watched(tmp_path, env) as w:
        k = kernel_loader.load(f"{repo}@v1", strict=True)
        missing, _ = load_quietly(f"{repo}@nope")
    assert k.commit == new.commit and k.module.VALUE == 2  # @v1 is the branch
    reason = refused(missing, "branches: main, v1; tags: v1 (v1 is both a branch and a tag; @v1 uses the branch)")
    assert "v1, v1" not in reason
    row("hostile Hub: a tag and a branch both named v1", "@v1 loads the branch; a miss lists them apart", reason, w)


def test_version_branch_without_build_folder(hub, proxy, env, tmp_path):
    repo = "acme/r-no-build"
    publish(hub, tmp_path, repo)
    git = _repo_git(hub, repo)
    git("update-ref", "refs/heads/v3", "refs/heads/main")  # main holds only README.md
    with watched(tmp_path, env) as w:
        k, _ = load_quietly(f"{repo}@v3")
    reason = refused(k, f"{repo} v3 (commit ")
    assert "has no build/ folder" in reason and "not found" not in reason
    row("hostile Hub: branch v3 has no build/ folder", "refused with the real cause", reason, w)


def test_unicode_kernel_name_reason_is_whole():
    from kernel_loader.integrity import check_metadata

    raw = json.dumps({"name": "flásh", "id": "_flash_cpu_1", "version": 1, "license": "MIT",
                      "backend": {"type": "cpu"}, "python-depends": [],
                      "digest": {"algorithm": "sha256", "files": {}}}).encode()
    with pytest.raises(ValueError) as e:
        check_metadata(raw, where="acme/x@0123 build/torch-cpu")
    msg = str(e.value)
    assert "\n" not in msg and "Name must: - Start with a lowercase letter" in msg and "Be at least 2" in msg, msg
    report("hostile Hub: metadata.json name 'flásh' (non-ASCII)", "refused; the whole name rule on one line", msg[:150])


# ---------------------------------------------------------------------------------------------- trust first


def _requests(proxy) -> list[str]:
    return [r.path.split("?")[0] for r in proxy.log]


def test_every_command_checks_trust_before_any_other_request(hub, proxy, env, tmp_path, monkeypatch, capsys):
    from kernel_loader import system
    from kernel_loader.cli import main

    repo = "shady/t-cmds"
    publish(hub, tmp_path, repo)
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "pyproject.toml").write_text(f'[tool.kernels.dependencies]\n"{repo}" = 1\n')
    # A GPU machine: resolve would read metadata.json for the arch check.
    gpu = system.detect()
    from dataclasses import replace

    monkeypatch.setattr(system, "detect", lambda: replace(gpu, gpu_capability="9.0"))
    with watched(tmp_path, env) as w:
        codes = {cmd[0]: main(cmd) for cmd in (["resolve", repo], ["download", repo], ["lock", str(proj)],
                                                  ["selftest", repo])}
    assert codes == {"resolve": 1, "download": 1, "lock": 1, "selftest": 1}, codes
    err = capsys.readouterr().err
    assert err.count("publisher 'shady' is not trusted") == 4, err
    overview = "/api/organizations/shady/overview"
    assert set(_requests(proxy)) == {overview}, _requests(proxy)
    assert not (proj / "kernels.lock").exists()
    row("untrusted publisher: resolve (GPU arch check), download, lock, selftest",
        "refused before any request but the trust check", f"requests: {len(proxy.log)} x {overview}", w)


def test_arch_check_reads_metadata_in_memory_only(hub, proxy, env, tmp_path, monkeypatch):
    from dataclasses import replace

    from kernel_loader import system
    from kernel_loader.resolve import resolve
    from kernel_loader.spec import parse_spec

    repo = "acme/t-arch"
    publish(hub, tmp_path, repo)
    proxy.arm("headers", "/resolve/", times=10**6, headers={"ETag": f'"{tmp_path / "outside-arch"}"'}, method="*")
    with watched(tmp_path, env) as w:
        res = resolve(parse_spec(repo), replace(system.detect(), gpu_capability="9.0"))
    assert res.variant == VARIANT
    assert [p for p in _requests(proxy) if p.endswith("metadata.json")], "the arch check read metadata.json"
    assert not list(env.glob("kernels--*/snapshots/*/build/*/*")) and not list(env.glob("kernels--*/blobs/*"))
    row("arch check (GPU machine) against a lying ETag", "metadata.json read into memory; nothing written",
        "variant chosen", w)


# ---------------------------------------------------------------------------------------------- lock + download


def test_lock_and_download_lock_are_contained_too(hub, proxy, env, tmp_path):
    from kernel_loader.cli import main

    repo = "acme/t-lock"
    publish(hub, tmp_path, repo, big=20_000)
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "pyproject.toml").write_text(f'[tool.kernels.dependencies]\n"{repo}" = 1\n')
    target = tmp_path / "outside-lock"
    proxy.arm("headers", "/", times=10**6, headers={"ETag": f'"{target}"', "X-Repo-Commit": "../../../x"},
              method="*")
    with watched(tmp_path, env, extra_roots=()) as w:
        assert main(["lock", str(proj)]) == 0
        assert main(["download", "--lock", str(proj / "kernels.lock"), "--all-variants"]) == 0
    assert not target.exists() and cache_problems(env) == []
    # lock wrote its two files into the project: those are the only writes outside the cache it may make
    w.outside = [p for p in w.outside if not (Path(p).parent == proj and "kernels.lock" in Path(p).name)]
    row("kernel-loader lock + download --lock against lying ETag / X-Repo-Commit headers",
        "lock written, files downloaded into the cache only", "ok", w)
