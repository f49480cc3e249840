"""Child processes of the local stack, identified by PID and start time.

A PID alone can be reused by an unrelated process after ours exits; a
``ProcessRef`` also records the process's start time (from /proc) so we only
ever signal the process we started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


def _start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # field 22 (starttime), counted after the ")" that ends the command name
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19])


@dataclass(frozen=True, slots=True)
class ProcessRef:
    name: str
    pid: int
    start_ticks: int | None
    log: str = ""

    @classmethod
    def of(cls, name: str, pid: int, log: str = "") -> ProcessRef:
        return cls(name, pid, _start_ticks(pid), log)

    def alive(self) -> bool:
        ticks = _start_ticks(self.pid)
        if ticks is None:
            return False
        if self.start_ticks is not None and ticks != self.start_ticks:
            return False  # the PID now belongs to another process
        with contextlib.suppress(OSError):
            state = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state == "Z":
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(self.pid, os.WNOHANG)
                return False
        return True

    def signal(self, sig: int) -> bool:
        if not self.alive():
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)
            return True
        return False

    def stop(self, timeout: float = 15.0) -> bool:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. True if it was running."""
        if not self.signal(signal.SIGTERM):
            return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                return True
            time.sleep(0.05)
        self.signal(signal.SIGKILL)
        deadline = time.monotonic() + 5
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        return True


def spawn_detached(
    argv: Sequence[str], *, env: Mapping[str, str], log_path: Path, cwd: Path | None = None
) -> int:
    """Start ``argv`` in a new session, detached from us; return its PID.

    A short-lived shell starts the process in the background and exits, so the
    process is not our child: it outlives this command (``migserve up
    --detach``), and init reaps it when it ends. Output goes to ``log_path``.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # the child's output goes to the log, so only the shell holds our pipe
    launcher = '"$@" >>"$0" 2>&1 </dev/null & echo $!'
    shell = subprocess.Popen(
        ["/bin/sh", "-c", launcher, str(log_path), *argv],
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    out, _ = shell.communicate(timeout=10)
    pid_text = out.decode().strip()
    if not pid_text.isdigit():
        raise OSError(f"could not start {argv[0]} (see {log_path})")
    return int(pid_text)


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    log_dir: Path,
    cwd: Path | None = None,
) -> ProcessRef:
    """Start a detached process logging to ``log_dir/<name>.log``."""
    log_path = log_dir / f"{name}.log"
    pid = spawn_detached(argv, env=env, log_path=log_path, cwd=cwd)
    return ProcessRef.of(name, pid, str(log_path))
