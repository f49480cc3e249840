"""Detached child processes identified by PID and start time.

A PID alone can be reused by an unrelated process once ours exits, so every
process we start is recorded with its start time from /proc; we only ever
signal a process whose PID and start time both match. Processes are started
with ``posix_spawn`` in a new session, so they outlive the agent (no Popen
object that warns when it is collected while the child still runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path

import msgspec


class ProcessHandle(msgspec.Struct, frozen=True, kw_only=True):
    """A process we started: PID, start time (clock ticks since boot) and log file."""

    pid: int
    start_ticks: int | None
    log: str = ""


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the fields after the ")" that ends the command name: state is field 3,
    # starttime field 22
    return stat.rsplit(")", 1)[1].split()


def start_ticks(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def spawn(argv: Sequence[str], *, env: Mapping[str, str], log_path: Path) -> ProcessHandle:
    """Start ``argv`` in its own session, stdin from /dev/null, output appended to the log."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log_path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    pid = os.posix_spawnp(argv[0], list(argv), dict(env), file_actions=actions, setsid=True)
    return ProcessHandle(pid=pid, start_ticks=start_ticks(pid), log=str(log_path))


def is_running(proc: ProcessHandle) -> bool:
    """Whether the process still runs (reaping it if it is our exited child)."""
    fields = _stat_fields(proc.pid)
    if fields is None:
        return False
    if proc.start_ticks is not None and int(fields[19]) != proc.start_ticks:
        return False  # the PID now belongs to another process
    try:
        pid, _ = os.waitpid(proc.pid, os.WNOHANG)
    except ChildProcessError:  # not our child (adopted from an earlier agent)
        return fields[0] not in ("Z", "X")
    return pid == 0


def send_signal(proc: ProcessHandle, sig: signal.Signals) -> bool:
    """Signal the process if it is still ours and running; True if sent."""
    if not is_running(proc):
        return False
    try:
        os.kill(proc.pid, sig)
    except ProcessLookupError:
        return False
    return True


async def wait_exit(proc: ProcessHandle, within_s: float, *, interval: float = 0.05) -> bool:
    """Wait up to ``within_s`` seconds for the process to exit; True if it did."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while is_running(proc):
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(interval)
    return True


async def terminate(proc: ProcessHandle, *, grace_s: float) -> bool:
    """SIGTERM, wait up to ``grace_s``, then SIGKILL. True if it had to be killed."""
    if not send_signal(proc, signal.SIGTERM):
        return False
    if await wait_exit(proc, grace_s):
        return False
    send_signal(proc, signal.SIGKILL)
    await wait_exit(proc, 5.0)
    return True


def kill_now(proc: ProcessHandle) -> None:
    """SIGKILL at once (used when a start is abandoned); reaps it if it can."""
    if send_signal(proc, signal.SIGKILL):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(proc.pid, 0)


def log_tail(path: str, limit: int = 1500) -> str:
    """The last ``limit`` characters of a log file, for error messages."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def free_port(host: str) -> int:
    """A TCP port that is free on ``host`` right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
