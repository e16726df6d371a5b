"""A local Hugging Face Hub (olah on loopback) and publishing of built kernels into it.

Layout served (olah's `mirrors-path`): ``ROOT/kernels/<org>/<name>`` is a *bare* git repo per kernel; versions
are branches ``v1``, ``v2``, ... branched from ``main``. olah reads objects and refs with GitPython, so bare and
non-bare repos both work; we create bare ones because nobody edits a working tree there and a checked-out
branch would go stale when we move it. Publishing uses git plumbing (a private index, ``commit-tree``,
``update-ref`` with the old value) so it never touches a working tree, needs no git config, and a concurrent
publish to the same branch fails loudly instead of losing a commit.

olah's own state (config, logs, its upstream cache which stays empty offline) lives in ``ROOT/.olah``, never
in the caller's working directory. Clients reach the Hub with ``HF_ENDPOINT=http://127.0.0.1:PORT``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "LocalHub",
    "PublishResult",
    "start_local_hub",
    "serve_forever",
    "publish_local",
    "kernel_repo_path",
    "validate_repo_id",
]

_LOOPBACK = "127.0.0.1"
_STATE_DIR = ".olah"
_GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "kernel-loader",
    "GIT_AUTHOR_EMAIL": "kernel-loader@localhost",
    "GIT_COMMITTER_NAME": "kernel-loader",
    "GIT_COMMITTER_EMAIL": "kernel-loader@localhost",
}
_NEVER_PUBLISH = ("__pycache__", "*.pyc", "*.pyo")


# ---------------------------------------------------------------------------------------------- server


@dataclass
class LocalHub:
    """A running olah process serving ``root`` at :attr:`endpoint`."""

    root: Path
    port: int
    process: subprocess.Popen | None = field(repr=False)
    config_path: Path
    log_path: Path
    _log_file: object = field(default=None, repr=False, compare=False)  # olah's stdout/stderr sink
    front: object = field(default=None, repr=False, compare=False)  # hubfront.HubFront on `port`, olah behind it
    olah_port: int | None = None  # olah's own port (== port when there is no front)

    @property
    def endpoint(self) -> str:
        return f"http://{_LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds. Safe to call twice."""
        if self.front is not None:
            self.front.stop()
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.terminate()
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=grace)
            except ProcessLookupError:
                pass
        self._close_log()

    def _close_log(self) -> None:
        log = self._log_file
        if log is not None and not log.closed:
            log.close()

    def __enter__(self) -> "LocalHub":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def free_port() -> int:
    """A TCP port that is free on loopback right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_LOOPBACK, 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = _LOOPBACK, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _olah_command() -> list[str]:
    # Prefer the olah-cli installed next to this interpreter (the venv), then PATH.
    local = Path(sys.executable).parent / "olah-cli"
    if local.is_file() and os.access(local, os.X_OK):
        return [str(local)]
    found = shutil.which("olah-cli")
    if found:
        return [found]
    raise FileNotFoundError(
        "olah-cli not found next to the Python interpreter "
        f"({Path(sys.executable).parent}) or on PATH; install it with `pip install olah`."
    )


def _die_with_parent() -> None:
    """Runs in the child before exec: ask Linux to SIGTERM olah when the process that started it dies, so a
    killed test run or CLI cannot leave a server holding the port. (Tied to the starting thread's life.)"""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except Exception:
        pass  # not Linux: stop() still works, only the safety net is missing


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def write_olah_config(root: Path, port: int, state_dir: Path) -> Path:
    """Write an offline olah config serving ``root``; returns its path."""
    state_dir.mkdir(parents=True, exist_ok=True)
    config = state_dir / f"olah-{port}.toml"
    config.write_text(
        "\n".join(
            [
                "[basic]",
                f"host = {_toml_str(_LOOPBACK)}",
                f"port = {port}",
                f"repos-path = {_toml_str(str(state_dir / 'repos'))}",
                f"mirrors-path = [{_toml_str(str(root))}]",
                # Local git repos are read fresh on every request; this only affects upstream metadata.
                "metadata-cache-ttl = 0",
                "",
                "[accessibility]",
                # Never reach huggingface.co: unknown repos are 404s, not upstream fetches.
                "offline = true",
                "",
            ]
        )
    )
    return config


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def start_local_hub(
    root: Path | str,
    port: int | None = None,
    *,
    log_path: Path | str | None = None,
    timeout: float = 30.0,
    die_with_parent: bool = True,
    front: bool = False,
    trusted_orgs: list[str] | tuple[str, ...] = (),
) -> LocalHub:
    """Start olah serving ``root`` on loopback and wait until it answers.

    With ``front`` (what ``kernel-loader hub serve`` uses), olah listens on a private port and
    :class:`kernel_loader.hubfront.HubFront` on ``port``: it answers the stock clients' publisher-trust check for
    ``trusted_orgs`` (and those in ``<root>/trusted-orgs``) and full ref names, and forwards the rest to olah.
    ``port=None`` picks a free port. Raises ``RuntimeError`` with the tail of olah's log if it exits or does
    not answer within ``timeout`` seconds, and ``OSError`` if the requested port is already taken.
    With ``die_with_parent`` (Linux) olah also exits when this process dies without calling ``stop()``.
    """
    root = Path(root).resolve()
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"Hub root {root} is not a directory")
    (root / "kernels").mkdir(parents=True, exist_ok=True)
    if port is None:
        port = free_port()
    elif not (0 < int(port) < 65536):
        raise ValueError(f"port must be in 1..65535, got {port!r}")
    elif port_open(port):
        raise OSError(f"port {port} on {_LOOPBACK} is already in use; pick another or pass port=None")
    if front:
        from .hubfront import HubFront, check_org, read_trusted_orgs

        orgs = frozenset(check_org(o, where="trusted org") for o in trusted_orgs)
        read_trusted_orgs(root)  # a malformed file is an error now, not a silent 'untrusted' later
        hub = start_local_hub(root, None, log_path=log_path, timeout=timeout, die_with_parent=die_with_parent)
        try:
            hub.front = HubFront(root, hub.port, orgs, port=port).start()
        except BaseException:
            hub.stop()
            raise
        hub.olah_port, hub.port = hub.port, hub.front.server_port
        return hub

    state_dir = root / _STATE_DIR
    config_path = write_olah_config(root, port, state_dir)
    log_path = Path(log_path) if log_path is not None else state_dir / f"olah-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    logs_dir = state_dir / "logs"
    logs_dir.mkdir(parents=True, exist_ok=True)

    env = dict(os.environ)
    env["OLAH_LOG_PATH"] = str(logs_dir)  # olah builds a logger at import time from this
    env.pop("OLAH_CONFIG", None)
    log_file = open(log_path, "ab")
    cmd = [*_olah_command(), "-c", str(config_path), "--log-path", str(logs_dir)]
    proc = subprocess.Popen(
        cmd,
        cwd=state_dir,  # olah writes relative defaults (./logs, ./repos) into its cwd
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop olah in order
        preexec_fn=_die_with_parent if die_with_parent and sys.platform.startswith("linux") else None,
    )
    hub = LocalHub(root=root, port=port, process=proc, config_path=config_path, log_path=log_path,
                   _log_file=log_file, olah_port=port)

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            hub._close_log()
            raise RuntimeError(
                f"olah exited with code {proc.returncode} before serving {hub.endpoint} "
                f"(config {config_path}); last lines of {log_path}:\n{_tail(log_path)}"
            )
        if port_open(port):
            return hub
        if time.monotonic() > deadline:
            hub.stop()
            raise RuntimeError(
                f"olah did not answer on {hub.endpoint} within {timeout:.0f}s "
                f"(config {config_path}); last lines of {log_path}:\n{_tail(log_path)}"
            )
        time.sleep(0.1)


def serve_forever(root: Path | str, port: int | None = None, trusted_orgs: list[str] | tuple[str, ...] = ()) -> int:
    """Run the Hub in the foreground (for ``kernel-loader hub serve``) until Ctrl-C or SIGTERM: olah behind the
    front that answers stock clients' trust check for ``trusted_orgs`` and ``<root>/trusted-orgs``."""
    hub = start_local_hub(root, port, front=True, trusted_orgs=trusted_orgs)
    stopping = False

    def _on_signal(signum, _frame):
        nonlocal stopping
        stopping = True

    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        from .hubfront import TRUSTED_ORGS_FILE

        trusted = sorted(hub.front.trusted())
        print(f"Serving {hub.root} (olah pid {hub.pid}, log {hub.log_path})", flush=True)
        print(f"trusted kernel publishers: {', '.join(trusted) or 'none'} (--trusted-org ORG, or one org per "
              f"line in {hub.root / TRUSTED_ORGS_FILE})", flush=True)
        print(f"export HF_ENDPOINT={hub.endpoint}", flush=True)
        while not stopping and hub.running():
            time.sleep(0.2)
        if not stopping:
            print(f"olah exited with code {hub.process.returncode}; log tail:\n{_tail(hub.log_path)}",
                  file=sys.stderr)
            return 1
        return 0
    finally:
        hub.stop()
        for s, handler in old.items():
            signal.signal(s, handler)


# ---------------------------------------------------------------------------------------------- publish

# Hub repo names: letters, digits, '-', '_', '.', starting and ending alphanumeric, no '--' or '..'.
_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")


def validate_repo_id(repo_id: str) -> tuple[str, str]:
    """Return ``(org, name)`` or raise ``ValueError`` saying what a valid Hub repo id looks like."""
    rule = ("expected 'org/name' where each part has letters, digits, '-', '_' or '.', starts and ends with a "
            "letter or digit, has no '--' or '..', and the whole id is at most 96 characters")
    if not isinstance(repo_id, str):
        raise ValueError(f"repo_id must be a string, got {type(repo_id).__name__}: {repo_id!r}; {rule}")
    parts = repo_id.split("/")
    if (len(parts) != 2 or len(repo_id) > 96
            or any(not _NAME_RE.match(p) or "--" in p or ".." in p for p in parts)
            or parts[1].endswith(".git")):
        raise ValueError(f"invalid repo_id {repo_id!r}: {rule}")
    return parts[0], parts[1]


# Names olah 0.5.4 cannot serve as kernel repos: its compact routes (/api/{type}/{org_repo}/tree/...,
# .../xet-read-token/..., /{org}/{repo}/resolve/...) swallow them, so the tree listing, snapshot_download or
# refs answer "repository not found" (checked by publishing each route word as org and as name).
_OLAH_RESERVED_NAMES = frozenset({"tree", "resolve", "xet-read-token"})
_OLAH_RESERVED_ORGS = frozenset({"resolve"})


def _check_servable(org: str, name: str) -> None:
    if name in _OLAH_RESERVED_NAMES or org in _OLAH_RESERVED_ORGS:
        raise ValueError(
            f"repo_id {org}/{name!s} cannot be served by the local Hub (olah routes treat "
            f"{(name if name in _OLAH_RESERVED_NAMES else org)!r} as part of the URL scheme); rename it. "
            f"Reserved names: {sorted(_OLAH_RESERVED_NAMES)}, reserved orgs: {sorted(_OLAH_RESERVED_ORGS)}"
        )


def kernel_repo_path(root: Path | str, repo_id: str) -> Path:
    """Where the git repo of ``repo_id`` lives under a Hub root (what olah serves for repo_type='kernel')."""
    org, name = validate_repo_id(repo_id)
    return Path(root) / "kernels" / org / name


@dataclass(frozen=True)
class PublishResult:
    repo_id: str
    branch: str
    commit: str
    variants: list[str]
    repo_path: Path
    changed: bool  # False when the branch already held exactly these files (no new commit)


def _variant_dirs(build_dir: Path, only: list[str] | None) -> list[Path]:
    from kernels.variants import parse_variant
    from kernels._rust import Metadata

    builds = build_dir / "build"
    if not builds.is_dir():
        raise ValueError(
            f"build_dir {build_dir} has no build/ folder; expected build/<variant>/metadata.json "
            "(e.g. build/torch213-cxx11-cpu-x86_64-linux/metadata.json)"
        )
    dirs = sorted(p for p in builds.iterdir() if p.is_dir() and p.name not in _NEVER_PUBLISH)
    if only is not None:
        have = {p.name for p in dirs}
        missing = [v for v in only if v not in have]
        if missing:
            raise ValueError(f"variants {missing} not found in {builds}; have: {sorted(have) or 'none'}")
        dirs = [p for p in dirs if p.name in set(only)]
    if not dirs:
        raise ValueError(f"{builds} contains no variant folders; expected build/<variant>/metadata.json")
    for d in dirs:
        try:
            parse_variant(d.name)
        except Exception as e:  # kernels raises ValueError or its own parse errors
            raise ValueError(
                f"{d} is not a valid build variant name ({e}); expected names like "
                "torch213-cxx11-cpu-x86_64-linux, torch-stable-abi210-cu130-x86_64-linux or torch-cpu"
            ) from None
        meta = d / "metadata.json"
        if not meta.is_file():
            raise ValueError(f"variant {d} has no metadata.json; every build/<variant>/ needs one")
        try:
            Metadata.from_bytes(meta.read_bytes())
        except Exception as e:
            raise ValueError(f"{meta} is not valid kernel metadata: {e}") from None
    return dirs


def _check_digest(variant: Path) -> None:
    """Refuse to publish files that do not match their metadata digest (clients verify it)."""
    from kernels._rust import Digest, DigestAlgorithm, Metadata

    expected = Metadata.read_from_file(variant / "metadata.json").digest
    if expected is None:
        return
    actual = Digest.hash_variant(DigestAlgorithm.SHA256, variant)
    try:
        expected.validate(actual)
    except Exception as e:
        raise ValueError(f"files of {variant} do not match the digest in its metadata.json: {e}") from None


class _Git:
    """Runs git against one repository with a fixed identity and no dependence on user config."""

    def __init__(self, git_dir: Path, index_file: Path | None = None):
        self.git_dir = git_dir
        self.env = {**os.environ, **_GIT_IDENTITY, "GIT_DIR": str(git_dir), "GIT_TERMINAL_PROMPT": "0"}
        for k in ("GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY"):
            self.env.pop(k, None)
        if index_file is not None:
            self.env["GIT_INDEX_FILE"] = str(index_file)

    def __call__(self, *args: str, input: bytes | None = None, check: bool = True, work_tree: Path | None = None):
        cmd = ["git", "-c", "core.autocrlf=false", "-c", "core.safecrlf=false", "-c", "gc.auto=0"]
        if work_tree is not None:
            cmd += ["--work-tree", str(work_tree)]
        res = subprocess.run([*cmd, *args], env=self.env, input=input, capture_output=True)
        if check and res.returncode != 0:
            raise RuntimeError(
                f"git {' '.join(args)} failed in {self.git_dir} ({res.returncode}): "
                f"{res.stderr.decode(errors='replace').strip()}"
            )
        return res

    def out(self, *args: str, **kw) -> str:
        return self(*args, **kw).stdout.decode().strip()

    def ref(self, name: str) -> str | None:
        res = self("rev-parse", "--verify", "--quiet", f"{name}^{{commit}}", check=False)
        return res.stdout.decode().strip() if res.returncode == 0 else None


def _open_or_init(repo: Path, repo_id: str) -> _Git:
    if repo.exists():
        res = subprocess.run(["git", "-C", str(repo), "rev-parse", "--absolute-git-dir"], capture_output=True)
        if res.returncode != 0:
            raise ValueError(f"{repo} exists but is not a git repository; move it away or choose another root")
        return _Git(Path(res.stdout.decode().strip()))
    repo.mkdir(parents=True)
    subprocess.run(["git", "init", "--bare", "--quiet", str(repo)], check=True, capture_output=True)
    git = _Git(repo)
    git("symbolic-ref", "HEAD", "refs/heads/main")
    readme = (f"---\nlicense: other\ntags: [kernel]\n---\n# {repo_id}\n\n"
              "Kernel repository published by kernel_loader. Versions are branches `v1`, `v2`, ...; "
              "builds live in `build/<variant>/`.\n")
    blob = git.out("hash-object", "-w", "--stdin", input=readme.encode())
    tree = git.out("mktree", input=f"100644 blob {blob}\tREADME.md\n".encode())
    commit = git.out("commit-tree", "--no-gpg-sign", tree, "-m", f"Create {repo_id}")
    git("update-ref", "refs/heads/main", commit, "0" * 40)
    return git


def publish_local(
    build_dir: Path | str,
    repo_id: str,
    root: Path | str,
    version: int,
    *,
    message: str | None = None,
    variants: list[str] | None = None,
    verify_digest: bool = True,
    allow_dirty: bool = False,
    kernel_dir: Path | str | None = None,
) -> PublishResult:
    """Commit ``build_dir/build/<variant>/`` folders to branch ``v<version>`` of the local Hub repo.

    Each published variant's folder on the branch is replaced wholesale (a file removed from the build
    disappears from the branch); variants not being published stay. ``__pycache__`` and ``*.pyc`` are never
    committed. ``variants`` restricts the publish to those folder names. With ``verify_digest`` (default) a
    variant whose files do not match its metadata.json digest is refused. A build from a dirty tree and a public
    API change on an existing branch are refused too (see :mod:`kernel_loader.publish`, which plans and executes
    this); ``allow_dirty`` permits the first. ``kernel_dir`` (default: ``build_dir`` if it has a build.toml) is
    git-checked and gives CARD.md for main's README.
    """
    from .publish import LocalGitTarget, check_version, plan_publish

    target = LocalGitTarget(root, repo_id)  # validates the id first: a bad id is the clearest error
    check_version(version)
    plan = plan_publish(build_dir, target, version, variants=variants, message=message, kernel_dir=kernel_dir,
                        allow_dirty=allow_dirty, verify_digest=verify_digest)
    return target.execute(plan)
