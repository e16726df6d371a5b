"""A local Hugging Face Hub: olah on loopback serving a folder of git repos. It knows nothing of publishing
(that is :mod:`kernel_loader.publish`, which writes the repos this serves).

Layout served (olah's `mirrors-path`): ``ROOT/kernels/<org>/<name>`` is a *bare* git repo per kernel; versions
are branches ``v1``, ``v2``, ... branched from ``main``. olah reads objects and refs with GitPython, so bare and
non-bare repos both work; we create bare ones because nobody edits a working tree there and a checked-out
branch would go stale when we move it.

olah's own state (config, logs, its upstream cache which stays empty offline) lives in ``ROOT/.olah``, never
in the caller's working directory. Clients reach the Hub with ``HF_ENDPOINT=http://127.0.0.1:PORT``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .spec import validate_repo_id

__all__ = ["LocalHub", "check_servable", "free_port", "kernel_repo_path", "port_open", "serve_forever", "start_local_hub"]

_LOOPBACK = "127.0.0.1"
_STATE_DIR = ".olah"


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


def serve_forever(root: Path | str, port: int | None = None, *,
                  on_ready: Callable[[LocalHub], None] | None = None,
                  trusted_orgs: list[str] | tuple[str, ...] = ()) -> str | None:
    """Run the Hub in the foreground (for ``kernel-loader hub serve``) until Ctrl-C or SIGTERM: olah behind the
    front that answers stock clients' trust check for ``trusted_orgs`` and ``<root>/trusted-orgs``. ``on_ready``
    is called with the running hub. Returns None when stopped by a signal, else why olah stopped by itself."""
    hub = start_local_hub(root, port, front=True, trusted_orgs=trusted_orgs)
    stopping = False

    def _on_signal(signum, _frame):
        nonlocal stopping
        stopping = True

    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if on_ready is not None:
            on_ready(hub)
        while not stopping and hub.running():
            time.sleep(0.2)
        if not stopping:
            return f"olah exited with code {hub.process.returncode}; log tail:\n{_tail(hub.log_path)}"
        return None
    finally:
        hub.stop()
        for s, handler in old.items():
            signal.signal(s, handler)


def kernel_repo_path(root: Path | str, repo_id: str) -> Path:
    """Where the git repo of ``repo_id`` lives under a Hub root (what olah serves for repo_type='kernel')."""
    org, name = validate_repo_id(repo_id)
    return Path(root) / "kernels" / org / name


# Names olah 0.5.4 cannot serve as kernel repos: its compact routes (/api/{type}/{org_repo}/tree/...,
# .../xet-read-token/..., /{org}/{repo}/resolve/...) swallow them, so the tree listing, snapshot_download or
# refs answer "repository not found" (checked by publishing each route word as org and as name).
_OLAH_RESERVED_NAMES = frozenset({"tree", "resolve", "xet-read-token"})
_OLAH_RESERVED_ORGS = frozenset({"resolve"})


def check_servable(org: str, name: str) -> None:
    if name in _OLAH_RESERVED_NAMES or org in _OLAH_RESERVED_ORGS:
        raise ValueError(
            f"repo_id {org}/{name!s} cannot be served by the local Hub (olah routes treat "
            f"{(name if name in _OLAH_RESERVED_NAMES else org)!r} as part of the URL scheme); rename it. "
            f"Reserved names: {sorted(_OLAH_RESERVED_NAMES)}, reserved orgs: {sorted(_OLAH_RESERVED_ORGS)}"
        )
