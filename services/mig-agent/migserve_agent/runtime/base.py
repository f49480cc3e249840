"""The runtime Protocol: start, stop, watch and adopt one instance's processes.

An instance is an engine on one slice plus its bridge (which pulls the model's
jobs from NATS and calls the engine). The runtime starts the engine, waits
until it answers its health check, then starts the bridge; it stops the bridge
first (it drains what it holds), then the engine. Instances outlive the agent:
after a restart the agent adopts the ones still running.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from migserve_shared.errors import ErrorCode, MigserveError
from migserve_shared.messages import InstanceRecord

from migserve_agent.engines.base import EngineLaunch


class EngineStartError(MigserveError):
    """The engine or its bridge exited or failed while starting."""

    code = ErrorCode.ENGINE_FAILED


class EngineTimeoutError(MigserveError):
    """The engine did not become healthy in time."""

    code = ErrorCode.TIMEOUT


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceLaunch:
    """Everything needed to start one instance."""

    instance_id: str
    model_id: str
    node: str
    engine_kind: str
    engine: EngineLaunch
    host: str
    port: int
    slice_uuid: str
    slots: int
    #: the slice's MIG profile name (the bridge's ``profile`` metrics label)
    profile: str = ""

    @property
    def engine_url(self) -> str:
        return self.url_for(self.port)

    def url_for(self, port: int) -> str:
        """``http://<host>:<port>`` on the engine's host."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunningInstance:
    """A started (or adopted) instance."""

    instance_id: str
    engine_url: str
    bridge_metrics_url: str = ""
    engine_pid: int | None = None
    bridge_pid: int | None = None


@dataclass(frozen=True, slots=True)
class Liveness:
    engine: bool
    bridge: bool

    @property
    def alive(self) -> bool:
        return self.engine and self.bridge

    def describe(self) -> str:
        dead = [name for name, up in (("engine", self.engine), ("bridge", self.bridge)) if not up]
        return " and ".join(dead) + " exited" if dead else "running"


class Runtime(Protocol):
    """Where instances run."""

    #: "process" or "kubernetes", reported in the node's inventory
    name: str

    async def start(self, launch: InstanceLaunch, *, ready_timeout_s: float) -> RunningInstance:
        """Start the engine, wait until healthy, start the bridge.

        On failure nothing it started is left running; raises EngineStartError
        or EngineTimeoutError.
        """
        ...

    async def stop(self, instance_id: str, *, drain_timeout_s: float) -> None:
        """Stop the bridge (it drains, at most ``drain_timeout_s``), then the engine."""
        ...

    def liveness(self, instance_id: str) -> Liveness:
        """Whether the instance's engine and bridge still run."""
        ...

    def adopt(self, record: InstanceRecord) -> RunningInstance | None:
        """Take over an instance started before an agent restart, if it still runs."""
        ...

    def known(self) -> dict[str, str]:
        """Every instance this runtime started and has not stopped: id -> model id."""
        ...

    def endpoint(self) -> tuple[str, int]:
        """Host and port the next engine should listen on."""
        ...
