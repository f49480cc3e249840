"""The agent's settings, read once from the environment by ``settings_from_env``.

| variable | default | meaning |
| --- | --- | --- |
| MIGSERVE_NODE | (required) | this node's name; commands arrive on its subject |
| MIGSERVE_STATE_DIR | (required) | slices (simulated), ownership, runtime records, logs |
| MIGSERVE_GPU_BACKEND | simulated | simulated, or nvml: real GPUs, each with MIG mode on |
| MIGSERVE_NVML_GPUS | (all) | comma list of the NVML GPU indices the nvml backend manages |
| MIGSERVE_SIM_GPUS | A100-SXM4-40GB | comma list of simulated GPU models |
| MIGSERVE_SIM_CREATE_LATENCY_S | 0.3 | seconds a simulated slice creation takes |
| MIGSERVE_SIM_DESTROY_LATENCY_S | 0.3 | seconds a simulated slice destruction takes |
| MIGSERVE_SIM_FAULTS | (none) | JSON faults, e.g. ``{"fail_create": 1}`` (see gpu/simulated.py) |
| MIGSERVE_RUNTIME | process | process, or kubernetes (MIGSERVE_K8S_*: runtime/pod_settings.py) |
| MIGSERVE_ENGINE_HOST | 127.0.0.1 | address engines and bridge metrics listen on |
| MIGSERVE_SIM_ENGINE_STARTUP_S | 0.5 | the sim engine's simulated loading time |
| MIGSERVE_LLAMA_SERVER | (cached build) | the llamacpp engine's llama-server binary |
| MIGSERVE_CACHE | ~/.cache/migserve | holds llama.cpp/<version>/bin/llama-server, the default |
| MIGSERVE_AGENT_READY_TIMEOUT_S | 120 | how long an engine may take to become healthy |
| MIGSERVE_BRIDGE_COMMAND | python -m migserve_agent.bridge | the bridge command; flags appended |
| MIGSERVE_AGENT_MAX_COMMANDS | 8 | commands executed at once |
| MIGSERVE_AGENT_WATCH_INTERVAL_S | 1.0 | how often instance processes are checked |
| MIGSERVE_AGENT_INVENTORY_INTERVAL_S | 15 | how often the node state is republished |
| MIGSERVE_AGENT_SHUTDOWN_TIMEOUT_S | 60 | how long SIGTERM waits for commands in hand |
| MIGSERVE_AGENT_COMMAND_MAX_AGE_S | 600 | older CreateInstance commands are refused, not run |
| MIGSERVE_AGENT_METRICS_PORT | (off) | serve Prometheus metrics on this port |
| MIGSERVE_AGENT_METRICS_ADDR | 127.0.0.1 | address of the metrics server |
| MIGSERVE_NATS_URL, MIGSERVE_LOG_FORMAT, MIGSERVE_LOG_LEVEL | | as for every service |
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from migserve_shared import mig
from migserve_shared.env import Env, NatsSettings, nats_settings
from migserve_shared.errors import ConfigError, NotSupportedError

from migserve_agent.engines.llama_binary import llama_server_path
from migserve_agent.gpu.simulated import SimFaults, SimGpuConfig, SimGpuSpec, parse_faults
from migserve_agent.runtime.pod_settings import PodSettings, pod_settings_from_env
from migserve_agent.runtime.process import DEFAULT_BRIDGE_COMMAND


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSettings:
    """Everything the agent is configured with."""

    node: str
    state_dir: Path
    nats: NatsSettings = field(default_factory=NatsSettings)
    gpu_backend: str = "simulated"
    #: NVML indices of the GPUs the nvml backend manages (None: all)
    nvml_gpus: tuple[int, ...] | None = None
    sim_gpus: tuple[SimGpuSpec, ...] = (SimGpuSpec("A100-SXM4-40GB"),)
    sim_gpu: SimGpuConfig = field(default_factory=SimGpuConfig)
    runtime: str = "process"
    #: engine Pods of the kubernetes runtime
    pods: PodSettings = field(default_factory=PodSettings)
    engine_host: str = "127.0.0.1"
    sim_engine_startup_s: float = 0.5
    #: the llamacpp engine's llama-server (None: not configured, llamacpp launches fail)
    llama_server: Path | None = None
    ready_timeout_s: float = 120.0
    bridge_command: tuple[str, ...] = DEFAULT_BRIDGE_COMMAND
    max_commands: int = 8
    watch_interval_s: float = 1.0
    inventory_interval_s: float = 15.0
    shutdown_timeout_s: float = 60.0
    #: seconds JetStream waits for an ack before redelivering a command (kept
    #: alive with in-progress acks while a command runs)
    command_ack_wait_s: float = 30.0
    #: how long one pull for commands waits (bounds how fast a stop is noticed)
    command_fetch_timeout_s: float = 1.0
    #: CreateInstance commands older than this are refused (TIMEOUT), never executed
    command_max_age_s: float = 600.0
    metrics_port: int | None = None
    metrics_addr: str = "127.0.0.1"
    log_json: bool = True
    log_level: str = "INFO"


def _sim_gpus(env: Env) -> tuple[SimGpuSpec, ...]:
    raw = env.text("MIGSERVE_SIM_GPUS", "A100-SXM4-40GB")
    specs = []
    for name in (part.strip() for part in raw.split(",")):
        if not name:
            raise ConfigError(f"MIGSERVE_SIM_GPUS={raw!r} has an empty entry")
        try:
            specs.append(SimGpuSpec(mig.gpu_model(name).name))
        except NotSupportedError as exc:
            raise ConfigError(f"MIGSERVE_SIM_GPUS={raw!r}: {exc}") from exc
    return tuple(specs)


def _nvml_gpus(env: Env) -> tuple[int, ...] | None:
    raw = env.optional("MIGSERVE_NVML_GPUS")
    if raw is None or not raw.strip():
        return None
    try:
        indices = tuple(int(part) for part in raw.split(","))
    except ValueError as exc:
        raise ConfigError(f"MIGSERVE_NVML_GPUS={raw!r} is not a comma list of GPU indices") from exc
    if any(i < 0 for i in indices):
        raise ConfigError(f"MIGSERVE_NVML_GPUS={raw!r} has a negative GPU index")
    return indices


def _bridge_command(env: Env) -> tuple[str, ...]:
    raw = env.optional("MIGSERVE_BRIDGE_COMMAND")
    if raw is None:
        return DEFAULT_BRIDGE_COMMAND
    try:
        argv = tuple(shlex.split(raw))
    except ValueError as exc:
        raise ConfigError(f"MIGSERVE_BRIDGE_COMMAND={raw!r} cannot be split: {exc}") from exc
    if not argv:
        raise ConfigError(f"MIGSERVE_BRIDGE_COMMAND={raw!r} is empty")
    return argv


def _log_level(env: Env) -> str:
    raw = env.text("MIGSERVE_LOG_LEVEL", "INFO")
    level = raw.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"MIGSERVE_LOG_LEVEL={raw!r} is not DEBUG, INFO, WARNING or ERROR")
    return level


def settings_from_env(environ: Mapping[str, str]) -> AgentSettings:
    """Build the settings; ConfigError names the variable and its value."""
    env = Env(environ)
    node = env.text("MIGSERVE_NODE")
    state_dir = Path(env.text("MIGSERVE_STATE_DIR"))
    if state_dir.exists() and not state_dir.is_dir():
        raise ConfigError(f"MIGSERVE_STATE_DIR={str(state_dir)!r} is not a directory")
    faults_raw = env.optional("MIGSERVE_SIM_FAULTS")
    faults = parse_faults(faults_raw, variable="MIGSERVE_SIM_FAULTS") if faults_raw else SimFaults()
    metrics_port = env.integer("MIGSERVE_AGENT_METRICS_PORT", -1, min=-1, max=65535)
    runtime = env.choice("MIGSERVE_RUNTIME", "process", ("process", "kubernetes"))
    return AgentSettings(
        node=node,
        state_dir=state_dir,
        nats=nats_settings(env, f"migserve-agent-{node}"),
        gpu_backend=env.choice("MIGSERVE_GPU_BACKEND", "simulated", ("simulated", "nvml")),
        nvml_gpus=_nvml_gpus(env),
        sim_gpus=_sim_gpus(env),
        sim_gpu=SimGpuConfig(
            create_latency_s=env.number("MIGSERVE_SIM_CREATE_LATENCY_S", 0.3, min=0, max=600),
            destroy_latency_s=env.number("MIGSERVE_SIM_DESTROY_LATENCY_S", 0.3, min=0, max=600),
            faults=faults,
        ),
        runtime=runtime,
        pods=pod_settings_from_env(env, required=runtime == "kubernetes"),
        engine_host=env.text("MIGSERVE_ENGINE_HOST", "127.0.0.1"),
        sim_engine_startup_s=env.number("MIGSERVE_SIM_ENGINE_STARTUP_S", 0.5, min=0, max=3600),
        llama_server=llama_server_path(environ),
        ready_timeout_s=env.number("MIGSERVE_AGENT_READY_TIMEOUT_S", 120.0, min=0.1, max=86400),
        bridge_command=_bridge_command(env),
        max_commands=env.integer("MIGSERVE_AGENT_MAX_COMMANDS", 8, min=1, max=256),
        watch_interval_s=env.number("MIGSERVE_AGENT_WATCH_INTERVAL_S", 1.0, min=0.05, max=600),
        inventory_interval_s=env.number(
            "MIGSERVE_AGENT_INVENTORY_INTERVAL_S", 15.0, min=0.1, max=3600
        ),
        shutdown_timeout_s=env.number("MIGSERVE_AGENT_SHUTDOWN_TIMEOUT_S", 60.0, min=0, max=3600),
        command_max_age_s=env.number("MIGSERVE_AGENT_COMMAND_MAX_AGE_S", 600.0, min=1),
        metrics_port=None if metrics_port < 0 else metrics_port,
        metrics_addr=env.text("MIGSERVE_AGENT_METRICS_ADDR", "127.0.0.1"),
        log_json=env.choice("MIGSERVE_LOG_FORMAT", "json", ("json", "text")) == "json",
        log_level=_log_level(env),
    )
