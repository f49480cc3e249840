"""What the rollout and chaos tests share: restart a service of the local stack,
run load around an action, and check the cluster's invariants.

A service is restarted as its supervisor (Kubernetes) would: same command line,
same environment (read from /proc before it is stopped), same log file. The new
process replaces the old one in the stack file, so ``migserve down`` stops it.
Only processes of this stack are ever signalled (by PID and start time).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from migserve_cli import stack as local_stack
from migserve_cli.loadgen import LoadReport, percentile, run_load
from migserve_cli.procs import ProcessRef, spawn_detached
from migserve_cli.status import ClusterView, read_cluster
from migserve_cli.trace import read_events
from migserve_shared.messages import Event, InstanceRecord

#: log lines (the ``msg`` of a JSON line) that say a restarted service took over
READY_MARKERS = {
    "gateway": "listening on",
    "scaler": "view loaded",
    "metrics-watcher": "watcher starting",
    "mig-agent": "instance(s) adopted",
}

#: tokens every load request asks for (the sim engine always generates them all)
MAX_TOKENS = 16


#: plan states still in flight (as the scaler's core counts them)
_IN_FLIGHT = frozenset({"pending", "running"})


def marker_for(name: str) -> str:
    for prefix, marker in READY_MARKERS.items():
        if name == prefix or name.startswith(prefix + "-"):
            return marker
    raise KeyError(f"no readiness marker for {name}")


@dataclass(frozen=True)
class Launch:
    """How a process was started: enough to start it again the same way."""

    argv: list[str]
    env: dict[str, str]
    cwd: str


def launch_of(pid: int) -> Launch:
    proc = Path(f"/proc/{pid}")
    argv = [a.decode() for a in proc.joinpath("cmdline").read_bytes().split(b"\0") if a]
    env: dict[str, str] = {}
    for item in proc.joinpath("environ").read_bytes().split(b"\0"):
        key, sep, value = item.decode(errors="replace").partition("=")
        if sep:
            env[key] = value
    return Launch(argv=argv, env=env, cwd=os.readlink(proc / "cwd"))


def stack_ref(home: Path, name: str) -> ProcessRef:
    stack = local_stack.read_stack(home)
    assert stack is not None, f"no stack in {home}"
    for entry in stack.processes:
        if entry.name == name:
            return entry.ref()
    raise KeyError(f"{name} is not a process of the stack in {home}")


def _record(home: Path, ref: ProcessRef) -> None:
    """Put ``ref`` in the stack file in place of the entry of the same name."""
    stack = local_stack.read_stack(home)
    assert stack is not None
    entry = local_stack.ProcessEntry(ref.name, ref.pid, ref.start_ticks, ref.log)
    if any(p.name == ref.name for p in stack.processes):
        stack.processes = [entry if p.name == ref.name else p for p in stack.processes]
    else:
        stack.processes.append(entry)
    path = local_stack.stack_path(home)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(stack)))
    tmp.replace(path)


async def wait_gone(ref: ProcessRef, timeout_s: float) -> float:
    """Seconds until ``ref`` exited; AssertionError after ``timeout_s``."""
    began = time.monotonic()
    while ref.alive():
        assert time.monotonic() - began < timeout_s, f"{ref.name} ({ref.pid}) still runs"
        await asyncio.sleep(0.05)
    return time.monotonic() - began


def _log_since(path: str, offset: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read()


def log_size(path: str) -> int:
    return Path(path).stat().st_size


async def wait_log(ref: ProcessRef, offset: int, marker: str, timeout_s: float) -> float:
    """Seconds until ``marker`` appears in ``ref``'s log after ``offset``."""
    began = time.monotonic()
    while True:
        text = _log_since(ref.log, offset)
        if marker.encode() in text:
            return time.monotonic() - began
        assert ref.alive(), f"{ref.name} exited; log:\n{text[-3000:].decode(errors='replace')}"
        assert time.monotonic() - began < timeout_s, f"{ref.name}: no {marker!r} in its log"
        await asyncio.sleep(0.05)


@dataclass
class Restart:
    """What one restart took."""

    name: str
    old_pid: int
    new_pid: int = 0
    stopped_after_s: float = 0.0
    ready_after_s: float = 0.0


def forget_process(home: Path, name: str) -> None:
    """Drop ``name`` from the stack file (a process the test stopped itself)."""
    stack = local_stack.read_stack(home)
    assert stack is not None
    stack.processes = [p for p in stack.processes if p.name != name]
    path = local_stack.stack_path(home)
    path.write_bytes(msgspec.json.format(msgspec.json.encode(stack)))


def start_again(home: Path, name: str, launch: Launch, log: str) -> ProcessRef:
    pid = spawn_detached(launch.argv, env=launch.env, log_path=Path(log), cwd=Path(launch.cwd))
    ref = ProcessRef.of(name, pid, log)
    _record(home, ref)
    return ref


async def restart_service(
    home: Path,
    name: str,
    *,
    sig: int = signal.SIGTERM,
    stop_timeout_s: float = 35.0,
    ready_timeout_s: float = 30.0,
    down_s: float = 0.0,
    launch_edit: Callable[[Launch], Launch] = lambda launch: launch,
    marker: str | None = None,
) -> Restart:
    """Signal ``name``, wait for it to exit, wait ``down_s``, start it again, wait for it."""
    old = stack_ref(home, name)
    launch = launch_edit(launch_of(old.pid))
    result = Restart(name, old.pid)
    assert old.signal(sig), f"{name} was not running"
    result.stopped_after_s = await wait_gone(old, stop_timeout_s)
    if down_s:
        await asyncio.sleep(down_s)
    offset = log_size(old.log)
    began = time.monotonic()
    new = start_again(home, name, launch, old.log)
    result.new_pid = new.pid
    await wait_log(new, offset, marker or marker_for(name), ready_timeout_s)
    result.ready_after_s = time.monotonic() - began
    return result


@dataclass
class Loaded:
    """A load run around an action, and what the action returned."""

    report: LoadReport
    action_started: float = 0.0
    action_ended: float = 0.0
    notes: dict[str, object] = field(default_factory=dict)


async def under_load(
    url: str,
    model: str,
    action: Callable[[Loaded], Awaitable[None]],
    *,
    concurrency: int = 4,
    max_tokens: int = MAX_TOKENS,
    warmup_s: float = 1.0,
    settle_s: float = 1.0,
    retry_connect: bool = True,
    timeout_s: float = 30.0,
) -> Loaded:
    """Stream requests from ``concurrency`` clients; run ``action`` once they flow."""
    stop = asyncio.Event()
    load = asyncio.create_task(
        run_load(
            url,
            model,
            concurrency=concurrency,
            duration_s=120.0,
            max_tokens=max_tokens,
            stop=stop,
            retry_connect=retry_connect,
            timeout_s=timeout_s,
        ),
        name="load",
    )
    out = Loaded(LoadReport())
    try:
        await asyncio.sleep(warmup_s)
        out.action_started = time.time()
        await action(out)
        out.action_ended = time.time()
        await asyncio.sleep(settle_s)
    finally:
        stop.set()
        out.report = await load
    return out


def truncated(report: LoadReport, expected: int = MAX_TOKENS) -> list[str]:
    """Requests that ended ok with fewer or more tokens than asked: silently lost data."""
    return [
        f"{r.request_id}: {r.tokens} tokens"
        for r in report.records
        if r.ok and r.tokens != expected
    ]


def describe(report: LoadReport) -> str:
    """One line for assertion messages and the docs table."""
    fails = [f"{r.error} ({r.detail[:120]})" for r in report.failures()[:5]]
    p50, worst = percentile(report.ttft_ms, 0.5), max(report.ttft_ms, default=0.0)
    ttft = f"TTFT p50/max {p50:.0f}/{worst:.0f} ms"
    return (
        f"{report.total} requests, {report.ok} ok, {report.failed} failed {report.errors}, "
        f"{report.retries} retried {report.retry_reasons}, {ttft}; first failures: {fails}"
    )


# Invariants ----------------------------------------------------------------------------


def slice_problems(view: ClusterView) -> list[str]:
    """Every slice belongs to exactly one known instance (or one being created), and
    every instance's slice exists."""
    problems: list[str] = []
    known = {i.instance_id for i in view.instances}
    creating = {
        s.instance_id
        for p in view.plans
        if p.status in _IN_FLIGHT
        for s in p.steps
        if s.op == "create"
    }
    owners: dict[str, str] = {}
    present: set[tuple[str, str]] = set()
    for node in view.nodes:
        for gpu in node.gpus:
            for s in gpu.slices:
                where = f"{node.node}/gpu{gpu.index} {s.profile}@{s.start} ({s.uuid})"
                present.add((node.node, s.uuid))
                if s.instance_id is None:
                    problems.append(f"slice {where} belongs to no instance")
                    continue
                if s.instance_id not in known | creating:
                    problems.append(f"slice {where} belongs to unknown {s.instance_id}")
                if s.instance_id in owners:
                    problems.append(f"{s.instance_id} holds {owners[s.instance_id]} and {where}")
                owners[s.instance_id] = where
    for inst in view.instances:
        if inst.state in ("ready", "draining") and (inst.node, inst.slice_uuid) not in present:
            problems.append(f"{inst.instance_id} ({inst.state}) has no slice {inst.slice_uuid}")
    return problems


def process_problems(view: ClusterView, stack_pids: Iterable[int]) -> list[str]:
    """Every engine and bridge of this stack belongs to a ready instance, and lives."""
    problems: list[str] = []
    allowed = set(stack_pids)
    for inst in view.instances:
        for role, pid in (("engine", inst.engine_pid), ("bridge", inst.bridge_pid)):
            if pid is not None:
                allowed.add(pid)
                if inst.state == "ready" and not ProcessRef.of(role, pid).alive():
                    problems.append(f"{role} {pid} of ready {inst.instance_id} is not running")
    for pid, cmd in processes_of(view.nats_url):
        if pid not in allowed:
            problems.append(f"process {pid} belongs to no instance: {cmd}")
    return problems


def processes_of(nats_url: str) -> list[tuple[int, str]]:
    """Live processes whose environment names this stack's NATS (services, engines, bridges)."""
    needle = f"MIGSERVE_NATS_URL={nats_url}".encode()
    found: list[tuple[int, str]] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = entry.joinpath("environ").read_bytes()
            if needle not in env.split(b"\0"):
                continue
            if entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cmd = entry.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        found.append((int(entry.name), cmd.strip()))
    return found


async def ready_instances(nats_url: str, model: str) -> list[InstanceRecord]:
    view = await read_cluster(nats_url)
    return [i for i in view.instances if i.model_id == model and i.state == "ready"]


async def wait_ready_instance(
    nats_url: str, model: str, *, timeout_s: float = 30.0, not_ids: Iterable[str] = ()
) -> InstanceRecord:
    """A ready instance of ``model`` (other than ``not_ids``) within ``timeout_s``."""
    excluded = set(not_ids)
    began = time.monotonic()
    while True:
        ready = [i for i in await ready_instances(nats_url, model) if i.instance_id not in excluded]
        if ready:
            return ready[0]
        assert time.monotonic() - began < timeout_s, f"no ready instance of {model}"
        await asyncio.sleep(0.2)


async def check_invariants(
    home: Path, *, demand_models: Iterable[str] = (), within_s: float = 20.0
) -> ClusterView:
    """Wait (up to ``within_s``) until the invariants hold; AssertionError naming what does not.

    - every slice on every GPU belongs to exactly one known instance, or one a
      plan in flight is creating; every ready instance's slice exists;
    - every engine and bridge process of the stack belongs to an instance;
    - every model in ``demand_models`` has a ready instance.
    """
    stack = local_stack.read_stack(home)
    assert stack is not None
    began = time.monotonic()
    while True:
        view = await read_cluster(stack.nats_url)
        stack = local_stack.read_stack(home)
        assert stack is not None
        problems = slice_problems(view)
        problems += process_problems(view, (p.pid for p in stack.processes))
        for model in demand_models:
            if not any(i.model_id == model and i.state == "ready" for i in view.instances):
                problems.append(f"{model} has demand and no ready instance")
        if not problems:
            return view
        if time.monotonic() - began > within_s:
            raise AssertionError(f"invariants do not hold after {within_s:g} s: {problems}")
        await asyncio.sleep(0.25)


def down_leaves_nothing(home: Path) -> list[str]:
    """``migserve down``; the problems (processes or slices left), empty when clean."""
    stack = local_stack.read_stack(home)
    if stack is None:
        return []
    lines: list[str] = []
    report = local_stack.down(home, lines.append)
    problems = [f"process left: {p}" for p in report.leftover_processes]
    if report.leftover_slices:
        problems.append(f"{report.leftover_slices} slices left")
    problems += [f"process left: {pid} {cmd}" for pid, cmd in processes_of(stack.nats_url)]
    return problems + ([f"down said: {lines}"] if problems else [])


#: the scaler's Policy.settle_s: for this long after a create plan finished, demand for
#: its model is ignored while the instance is not in the scaler's view (it may lag), so
#: an instance that died sooner is only replaced once this has passed
SCALER_SETTLE_S = 30.0


async def wait_replaceable(
    nats_url: str, model: str, *, settle_s: float = SCALER_SETTLE_S
) -> float:
    """Wait until the scaler would replace ``model``'s instance if it died now; seconds waited."""
    view = await read_cluster(nats_url)
    done = [p.updated for p in view.plans if p.model_id == model and p.status == "done"]
    wait = max(0.0, max(done, default=0.0) + settle_s + 0.5 - time.time())
    await asyncio.sleep(wait)
    return wait


async def events_between(
    nats_url: str, start: float, end: float, kinds: Iterable[str] = ()
) -> list[Event]:
    """The events published between ``start`` and ``end`` (wall clock), of ``kinds`` if given."""
    return await read_events(nats_url, start=start, end=end, kinds=kinds)


def stack_home(stack: local_stack.StackFile) -> Path:
    return Path(stack.home)


def up_leaving_nothing(opts: local_stack.StackOptions) -> Iterator[local_stack.StackFile]:
    """The body of a module-scoped stack fixture: ``up``; on teardown ``down`` leaves nothing."""
    lines: list[str] = []
    try:
        yield local_stack.up(opts, lines.append)
    finally:
        problems = down_leaves_nothing(opts.home)
        assert problems == [], problems


async def warm(stack: local_stack.StackFile, model: str) -> None:
    """A first request cold-starts ``model``; the test starts from a ready instance."""
    report = await run_load(stack.gateway_url, model, concurrency=1, duration_s=0.1, max_tokens=4)
    assert report.failed == 0, describe(report)
    await wait_ready_instance(stack.nats_url, model)


async def warm_replaceable(
    stack: local_stack.StackFile, model: str
) -> tuple[InstanceRecord, float]:
    """Warm ``model``; its ready instance (engine and bridge running) once the scaler would
    replace it if it died, and the seconds waited for that."""
    await warm(stack, model)
    old = await wait_ready_instance(stack.nats_url, model)
    assert old.engine_pid is not None and old.bridge_pid is not None
    waited = await wait_replaceable(stack.nats_url, model)
    return old, waited
