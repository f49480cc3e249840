"""The local stack: nats-server, the four services and simulated GPU nodes as processes.

``up`` starts everything on 127.0.0.1 and records each process (PID and start
time) in ``<home>/stack.json``; ``down`` retires every instance through the
agents (the real path: bridges drain, engines stop, slices are destroyed),
stops the services and nats-server by PID, and checks nothing is left.

With ``nats_auth`` (the CLI's default) nats-server admits only migserve's
users: each process connects as its role's user with its own random password
file, the CLI as ``admin`` (``nats_settings(stack)``); docs/security.md.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec
from migserve_shared.bus import connect, ensure_jetstream, kv_values, open_buckets, send_command
from migserve_shared.env import NatsSettings
from migserve_shared.errors import ConfigError
from migserve_shared.ids import new_id, new_trace_id
from migserve_shared.messages import (
    InstanceRecord,
    ModelSpec,
    RetireInstance,
    decode_instance,
    decode_node_state,
    now,
)
from migserve_shared.permissions import Role, stack_users, user_name

from migserve_cli.llama_build import ensure_llama_server
from migserve_cli.nats_server import NatsAuth, prepare_auth, start_nats_server
from migserve_cli.procs import ProcessRef, spawn
from migserve_cli.prometheus import choose_source, start_prometheus, wait_ready

Say = Callable[[str], None]


class ProcessEntry(msgspec.Struct, frozen=True):
    name: str
    pid: int
    start_ticks: int | None = None
    log: str = ""

    def ref(self) -> ProcessRef:
        return ProcessRef(self.name, self.pid, self.start_ticks, self.log)


class StackFile(msgspec.Struct, kw_only=True):
    """What ``up`` started, so ``down`` and ``status`` can find it."""

    home: str
    nats_url: str = ""
    nats_monitor_url: str = ""
    gateway_url: str = ""
    engine: str = "sim"
    nodes: list[str] = msgspec.field(default_factory=list)
    processes: list[ProcessEntry] = msgspec.field(default_factory=list)
    started: float = 0.0
    metrics_source: str = "direct"
    prometheus_url: str = ""
    #: the CLI's NATS user (admin) and its password file; "" when NATS auth is off
    nats_user: str = ""
    nats_password_file: str = ""


@dataclass(frozen=True)
class StackOptions:
    home: Path
    engine: str | None = None
    models: list[ModelSpec] = field(default_factory=list)
    nodes: int = 2
    gpus_per_node: int = 1
    gpu_model: str = "A100-SXM4-40GB"
    gateway_port: int = 8080
    #: gateway processes sharing the port (SO_REUSEPORT): one can restart while the others serve
    gateways: int = 1
    sim_engine_startup_s: float = 0.5
    ready_timeout_s: float = 60.0
    extra_env: dict[str, str] = field(default_factory=dict)
    metrics_source: str = "auto"
    #: one NATS user per service role, least-privilege permissions (docs/security.md).
    #: `migserve up` turns it on unless --no-nats-auth; off here by default for code that
    #: connects with the bare URL (connect with ``nats_settings(stack)`` to work either way)
    nats_auth: bool = False
    #: scaler replicas: one leads through the KV lease, the others wait to take over
    scalers: int = 1


def default_home() -> Path:
    return Path(os.environ.get("MIGSERVE_HOME", Path.home() / ".migserve"))


def stack_path(home: Path) -> Path:
    return home / "stack.json"


def read_stack(home: Path) -> StackFile | None:
    path = stack_path(home)
    if not path.exists():
        return None
    try:
        return msgspec.json.decode(path.read_bytes(), type=StackFile)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path} is not a migserve stack file: {exc}") from exc


def _write_stack(stack: StackFile) -> None:
    path = stack_path(Path(stack.home))
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(stack)))
    tmp.replace(path)


def nats_settings(stack: StackFile, name: str = "migserve-cli") -> NatsSettings:
    """How the CLI (and tests) reach the stack's NATS: as its admin user when auth is on."""
    if not stack.nats_user:
        return NatsSettings(url=stack.nats_url, name=name)
    return NatsSettings(
        url=stack.nats_url,
        user=stack.nats_user,
        password_file=stack.nats_password_file,
        name=name,
    )


def _nats_env(auth: NatsAuth | None, role: Role, node: str | None = None) -> dict[str, str]:
    """A service's NATS credentials (its role's user), plus its bridges' for an agent."""
    if auth is None:
        return {}
    env = auth.env(user_name(role, node))
    if role is Role.AGENT:
        env |= auth.env(user_name(Role.BRIDGE), prefix="MIGSERVE_BRIDGE_NATS")
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _service_env(nats_url: str, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGSERVE_")}
    env.update(MIGSERVE_NATS_URL=nats_url, MIGSERVE_LOG_FORMAT="json", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def up(opts: StackOptions, say: Say) -> StackFile:
    """Start the stack and return once the gateway answers and every node reported."""
    home = opts.home
    existing = read_stack(home)
    if existing and any(p.ref().alive() for p in existing.processes):
        raise ConfigError(
            f"a local stack is already running from {home}: run `migserve down` first"
        )
    agent_env: dict[str, str] = {}
    if any((opts.engine or spec.engine) == "llamacpp" for spec in opts.models):
        agent_env["MIGSERVE_LLAMA_SERVER"] = str(ensure_llama_server(os.environ, say))
    home.mkdir(parents=True, exist_ok=True)
    logs = home / "logs"
    stack = StackFile(home=str(home), started=now(), engine=opts.engine or "per model file")
    logs.mkdir(parents=True, exist_ok=True)
    say(f"starting nats-server (JetStream, data in {home / 'nats'})")
    auth: NatsAuth | None = None
    if opts.nats_auth:
        auth = prepare_auth(
            home / "nats", stack_users([f"node-{i}" for i in range(1, opts.nodes + 1)])
        )
        stack.nats_user = user_name(Role.ADMIN)
        stack.nats_password_file = str(auth.password_file(stack.nats_user))
    nats = start_nats_server(
        home / "nats", log_file=logs / "nats-server.log", detach=True, auth=auth
    )
    stack.nats_url, stack.nats_monitor_url = nats.url, nats.monitor_url
    stack.processes.append(
        _entry(
            ProcessRef(
                nats.ref.name, nats.ref.pid, nats.ref.start_ticks, str(logs / "nats-server.log")
            )
        )
    )
    _write_stack(stack)
    asyncio.run(_prepare_jetstream(nats_settings(stack)))

    watcher_env: dict[str, str] = {}
    stack.metrics_source = choose_source(opts.metrics_source)
    watcher_env["MIGSERVE_METRICS_SOURCE"] = stack.metrics_source
    if stack.metrics_source == "prometheus":
        prom = start_prometheus(home, logs)
        stack.prometheus_url = prom.url
        stack.processes.append(_entry(prom.ref))
        _write_stack(stack)
        say(f"started prometheus (pid {prom.ref.pid}, {prom.url})")
        wait_ready(prom.url)
        watcher_env["MIGSERVE_PROMETHEUS_URL"] = prom.url
        watcher_env["MIGSERVE_PROMETHEUS_FILE_SD"] = str(prom.targets_file)

    port = opts.gateway_port or _free_port()
    stack.gateway_url = f"http://127.0.0.1:{port}"
    base_env = _service_env(nats.url, opts.extra_env)
    py = sys.executable
    services: list[tuple[str, list[str], dict[str, str]]] = [
        (
            "gateway" if i == 1 else f"gateway-{i}",
            [py, "-m", "migserve_gateway"],
            {
                "MIGSERVE_GATEWAY_HOST": "127.0.0.1",
                "MIGSERVE_GATEWAY_PORT": str(port),
                "MIGSERVE_GATEWAY_ID": f"gateway-{i}",
                "MIGSERVE_GATEWAY_REUSE_PORT": "true" if opts.gateways > 1 else "false",
                "MIGSERVE_AUTH_DISABLED": "true",
                **_nats_env(auth, Role.GATEWAY),
            },
        )
        for i in range(1, opts.gateways + 1)
    ]
    services += [
        *(
            (
                "scaler" if i == 1 else f"scaler-{i}",
                [py, "-m", "migserve_scaler"],
                {"MIGSERVE_SCALER_ID": f"scaler-{i}", **_nats_env(auth, Role.SCALER)},
            )
            for i in range(1, opts.scalers + 1)
        ),
        (
            "metrics-watcher",
            [py, "-m", "migserve_watcher"],
            {**watcher_env, **_nats_env(auth, Role.WATCHER)},
        ),
    ]
    gpus = ",".join([opts.gpu_model] * opts.gpus_per_node)
    for i in range(1, opts.nodes + 1):
        node = f"node-{i}"
        stack.nodes.append(node)
        services.append(
            (
                f"mig-agent-{node}",
                [py, "-m", "migserve_agent"],
                {
                    "MIGSERVE_NODE": node,
                    "MIGSERVE_GPU_BACKEND": "simulated",
                    "MIGSERVE_SIM_GPUS": gpus,
                    "MIGSERVE_RUNTIME": "process",
                    "MIGSERVE_STATE_DIR": str(home / "nodes" / node),
                    "MIGSERVE_SIM_ENGINE_STARTUP_S": str(opts.sim_engine_startup_s),
                    **agent_env,
                    **_nats_env(auth, Role.AGENT, node),
                },
            )
        )
    for name, argv, env in services:
        ref = spawn(name, argv, env={**base_env, **env}, log_dir=logs)
        stack.processes.append(_entry(ref))
        _write_stack(stack)
        say(f"started {name} (pid {ref.pid}, log {ref.log})")

    _wait_ready(stack, opts, say)
    for spec in opts.models:
        if opts.engine:
            spec = msgspec.structs.replace(spec, engine=opts.engine)
        _register(stack.gateway_url, spec)
        say(
            f"registered model {spec.model_id} "
            f"(engine {spec.engine}, SLO {spec.tpot_slo_ms} ms/token)"
        )
    return stack


def _entry(ref: ProcessRef) -> ProcessEntry:
    return ProcessEntry(ref.name, ref.pid, ref.start_ticks, ref.log)


async def _prepare_jetstream(settings: NatsSettings) -> None:
    nc = await connect(settings)
    try:
        await ensure_jetstream(nc.jetstream())
    finally:
        await nc.close()


def _wait_ready(stack: StackFile, opts: StackOptions, say: Say) -> None:
    deadline = time.monotonic() + opts.ready_timeout_s
    with httpx.Client(timeout=2.0) as http:
        while True:
            dead = [p for p in stack.processes if not p.ref().alive()]
            if dead:
                names = ", ".join(f"{p.name} (see {p.log})" for p in dead)
                raise ConfigError(f"stack failed to start: {names} exited")
            try:
                if http.get(f"{stack.gateway_url}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ConfigError(f"gateway did not answer at {stack.gateway_url} in time")
            time.sleep(0.1)
    while set(asyncio.run(_reported_nodes(nats_settings(stack)))) < set(stack.nodes):
        if time.monotonic() > deadline:
            raise ConfigError(f"nodes {stack.nodes} did not all report their inventory in time")
        time.sleep(0.2)
    say(f"gateway ready at {stack.gateway_url}; nodes {', '.join(stack.nodes)} reported")
    say("auth is OFF (local development): the gateway trusts every caller")
    if stack.nats_user:
        say(
            "NATS auth is ON: one user per service (docs/security.md); "
            f"admin password in {stack.nats_password_file}"
        )
    else:
        say("NATS auth is OFF: every local process may publish anything")


async def _reported_nodes(settings: NatsSettings) -> list[str]:
    nc = await connect(settings)
    try:
        buckets = await open_buckets(nc.jetstream())
        return [decode_node_state(v).node for _, v, _ in await kv_values(buckets.nodes)]
    finally:
        await nc.close()


def _register(gateway_url: str, spec: ModelSpec) -> None:
    body = msgspec.json.encode(spec)
    resp = httpx.post(
        f"{gateway_url}/v1/admin/models",
        params={"replace": "true"},
        content=body,
        headers={"content-type": "application/json"},
        timeout=10,
    )
    if resp.status_code not in (200, 201):
        raise ConfigError(f"registering {spec.model_id} failed: {resp.status_code} {resp.text}")


@dataclass
class DownReport:
    retired: int = 0
    stopped: list[str] = field(default_factory=list)
    leftover_slices: int = 0
    leftover_processes: list[str] = field(default_factory=list)


def down(home: Path, say: Say, *, retire_timeout_s: float = 60.0) -> DownReport:
    """Stop the services that decide, retire every instance through its agent,
    stop every other process ``up`` started, verify nothing is left."""
    report = DownReport()
    stack = read_stack(home)
    if stack is None:
        say(f"no local stack recorded in {home}")
        return report
    by_name = {p.name: p.ref() for p in stack.processes}
    nats_ref = by_name.get("nats-server")

    def stop(names: list[str]) -> None:
        for name in names:
            ref = by_name.get(name)
            if ref is not None and ref.stop():
                report.stopped.append(name)

    # Whatever decides or asks for instances stops first: a scaler still running
    # would replace the instances retired below (a lost instance), and a
    # gateway still holding requests would ask for them again.
    stop(
        [n for n in by_name if n == "gateway" or n.startswith("gateway-")]
        + ["metrics-watcher"]
        + [n for n in by_name if n == "scaler" or n.startswith("scaler-")]
    )
    instances: list[InstanceRecord] = []
    if nats_ref is not None and nats_ref.alive():
        instances, report.retired, report.leftover_slices = asyncio.run(
            _retire_all(nats_settings(stack), retire_timeout_s, say)
        )
    stop([n for n in by_name if n.startswith("mig-agent")] + ["prometheus"])
    # Engines and bridges are children of the agents' sessions, recorded in the
    # instance records; stop any a failed retire left behind (by PID, and only
    # processes started after this stack's nats-server).
    floor = nats_ref.start_ticks if nats_ref else None
    for rec in instances:
        for role, pid in (("bridge", rec.bridge_pid), ("engine", rec.engine_pid)):
            if pid is None:
                continue
            ref = ProcessRef.of(f"{role}-{rec.instance_id}", pid)
            if ref.alive() and floor is not None and (ref.start_ticks or 0) >= floor and ref.stop():
                report.stopped.append(ref.name)
    if nats_ref is not None and nats_ref.stop():
        report.stopped.append("nats-server")
    report.leftover_processes = [p.name for p in stack.processes if p.ref().alive()]
    if not report.leftover_processes:
        stack_path(home).unlink(missing_ok=True)
        if stack.nats_password_file:  # this stack's NATS passwords die with it
            shutil.rmtree(Path(stack.nats_password_file).parent, ignore_errors=True)
    say(
        f"stopped {len(report.stopped)} processes, retired {report.retired} instances; "
        f"slices left: {report.leftover_slices}; processes left: {len(report.leftover_processes)}"
    )
    return report


async def _retire_all(
    settings: NatsSettings, timeout_s: float, say: Say
) -> tuple[list[InstanceRecord], int, int]:
    nc = await connect(settings)
    try:
        js = nc.jetstream()
        buckets = await open_buckets(js)
        instances = [decode_instance(v) for _, v, _ in await kv_values(buckets.instances)]
        trace = new_trace_id()
        for rec in instances:
            say(f"retiring {rec.instance_id} ({rec.model_id} on {rec.node} {rec.profile})")
            await send_command(
                js,
                rec.node,
                RetireInstance(
                    command_id=new_id("cmd-"),
                    trace_id=trace,
                    instance_id=rec.instance_id,
                    drain_timeout_s=min(30.0, timeout_s),
                    issued_at=now(),
                ),
            )
        deadline = time.monotonic() + timeout_s
        while await kv_values(buckets.instances) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.3)  # let agents publish their final inventory
        nodes = [decode_node_state(v) for _, v, _ in await kv_values(buckets.nodes)]
        left = sum(len(g.slices) for n in nodes for g in n.gpus)
        return instances, len(instances), left
    finally:
        await nc.close()
