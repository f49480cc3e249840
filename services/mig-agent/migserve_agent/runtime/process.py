"""The ``process`` runtime: engine and bridge as detached child processes.

The engine gets ``CUDA_VISIBLE_DEVICES=<slice uuid>``; both processes run in
their own sessions and log to ``<state dir>/logs/``, so they outlive an agent
restart. What each instance runs (PIDs with start times, URLs) is written to
``<state dir>/runtime/<instance>.json`` the moment a process starts, so a
restarted agent can adopt the instance or stop leftovers, and never signals a
process it did not start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx
import msgspec
from migserve_shared.env import bridge_nats_environment
from migserve_shared.ids import encode_token
from migserve_shared.messages import InstanceRecord

from migserve_agent.runtime import procs
from migserve_agent.runtime.base import (
    EngineStartError,
    EngineTimeoutError,
    InstanceLaunch,
    Liveness,
    RunningInstance,
)
from migserve_agent.runtime.procs import ProcessHandle

log = logging.getLogger(__name__)

DEFAULT_BRIDGE_COMMAND: tuple[str, ...] = (sys.executable, "-m", "migserve_agent.bridge")
_DEVICE_VARS = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")


class _Record(msgspec.Struct, kw_only=True):
    instance_id: str
    model_id: str = ""
    engine: ProcessHandle
    engine_url: str
    bridge: ProcessHandle | None = None
    bridge_metrics_url: str = ""


class ProcessRuntime:
    """``Runtime`` that runs engines and bridges as local processes."""

    name = "process"

    def __init__(
        self,
        *,
        state_dir: Path,
        nats_url: str,
        engine_host: str = "127.0.0.1",
        bridge_command: Sequence[str] = DEFAULT_BRIDGE_COMMAND,
        base_env: Mapping[str, str] | None = None,
        engine_stop_timeout_s: float = 15.0,
        bridge_ready_timeout_s: float = 30.0,
        health_interval_s: float = 0.1,
    ) -> None:
        self._records_dir = state_dir / "runtime"
        self._logs_dir = state_dir / "logs"
        self._nats_url = nats_url
        self._engine_host = engine_host
        self._bridge_command = tuple(bridge_command)
        env = dict(os.environ if base_env is None else base_env)
        for var in _DEVICE_VARS:
            env.pop(var, None)
        self._base_env = env
        self._engine_stop_timeout_s = engine_stop_timeout_s
        self._bridge_ready_timeout_s = bridge_ready_timeout_s
        self._health_interval_s = health_interval_s
        self._records_dir.mkdir(parents=True, exist_ok=True)

    # Runtime -------------------------------------------------------------------------
    async def start(self, launch: InstanceLaunch, *, ready_timeout_s: float) -> RunningInstance:
        token = encode_token(launch.instance_id)
        engine_env = {**self._base_env, **launch.engine.env}
        engine_env["CUDA_VISIBLE_DEVICES"] = launch.slice_uuid
        try:
            engine = procs.spawn(
                launch.engine.argv, env=engine_env, log_path=self._logs_dir / f"{token}.engine.log"
            )
        except OSError as exc:
            raise EngineStartError(
                f"cannot start engine {launch.engine.argv[0]!r} for {launch.instance_id}: {exc}"
            ) from exc
        record = _Record(
            instance_id=launch.instance_id,
            model_id=launch.model_id,
            engine=engine,
            engine_url=launch.engine_url,
        )
        self._save(record)
        log.info("engine for %s started (pid %d, %s)", launch.instance_id, engine.pid,
                 launch.engine_url)  # fmt: skip
        try:
            await self._wait_healthy(launch, engine, ready_timeout_s)
            bridge_log = self._logs_dir / f"{token}.bridge.log"
            offset = bridge_log.stat().st_size if bridge_log.exists() else 0
            record.bridge = self._spawn_bridge(launch, bridge_log)
            self._save(record)
            metrics_port = await self._wait_bridge_ready(launch, record.bridge, offset)
            if metrics_port:
                record.bridge_metrics_url = launch.url_for(metrics_port) + "/metrics"
                self._save(record)
        except BaseException:
            self._abandon(record)
            raise
        return self._running(record)

    async def stop(self, instance_id: str, *, drain_timeout_s: float) -> None:
        record = self._load(instance_id)
        if record is None:
            return
        bridge = record.bridge
        if bridge is not None and await procs.terminate(bridge, grace_s=drain_timeout_s):
            log.warning("bridge of %s did not drain in %.1fs: killed", instance_id,
                        drain_timeout_s)  # fmt: skip
        if await procs.terminate(record.engine, grace_s=self._engine_stop_timeout_s):
            log.warning("engine of %s did not stop in %.1fs: killed", instance_id,
                        self._engine_stop_timeout_s)  # fmt: skip
        self._forget(instance_id)
        log.info("instance %s stopped", instance_id)

    def liveness(self, instance_id: str) -> Liveness:
        record = self._load(instance_id)
        if record is None:
            return Liveness(engine=False, bridge=False)
        bridge = record.bridge is not None and procs.is_running(record.bridge)
        return Liveness(engine=procs.is_running(record.engine), bridge=bridge)

    def adopt(self, record: InstanceRecord) -> RunningInstance | None:
        ours = self._load(record.instance_id)
        if ours is None:
            if record.engine_pid or record.bridge_pid:
                log.warning("instance %s: no runtime record for pids %s/%s; not adopting and "
                            "not signalling them", record.instance_id, record.engine_pid,
                            record.bridge_pid)  # fmt: skip
            return None
        if not self.liveness(record.instance_id).alive:
            return None
        return self._running(ours)

    def known(self) -> dict[str, str]:
        known = {}
        for path in sorted(self._records_dir.glob("*.json")):
            record = self._read(path)
            if record is not None:
                known[record.instance_id] = record.model_id
        return known

    def endpoint(self) -> tuple[str, int]:
        return self._engine_host, procs.free_port(self._engine_host)

    # Internals -----------------------------------------------------------------------
    async def _wait_healthy(
        self, launch: InstanceLaunch, engine: ProcessHandle, timeout_s: float
    ) -> None:
        url = launch.engine_url + launch.engine.health_path
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        last = "no answer yet"
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as http:
            while True:
                if not procs.is_running(engine):
                    raise EngineStartError(
                        f"engine of {launch.instance_id} exited while starting; "
                        f"log tail:\n{procs.log_tail(engine.log)}"
                    )
                try:
                    resp = await http.get(url)
                    if resp.status_code == 200:
                        return
                    last = f"HTTP {resp.status_code}"
                except httpx.HTTPError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                if loop.time() >= deadline:
                    raise EngineTimeoutError(
                        f"engine of {launch.instance_id} not healthy at {url} after "
                        f"{timeout_s:.1f}s (last: {last})"
                    )
                await asyncio.sleep(self._health_interval_s)

    def _spawn_bridge(self, launch: InstanceLaunch, log_path: Path) -> ProcessHandle:
        argv = [
            *self._bridge_command,
            "--model", launch.model_id,
            "--instance-id", launch.instance_id,
            "--node", launch.node,
            "--profile", launch.profile,
            "--engine-url", launch.engine_url,
            "--engine-kind", launch.engine_kind,
            "--slots", str(launch.slots),
            "--metrics-port", "0",
            "--metrics-host", launch.host,
        ]  # fmt: skip
        # the bridge connects as the bridge user (MIGSERVE_BRIDGE_NATS_*), not as the agent
        env = {
            **bridge_nats_environment(self._base_env),
            "MIGSERVE_NATS_URL": self._nats_url,
            "PYTHONUNBUFFERED": "1",
        }
        try:
            bridge = procs.spawn(argv, env=env, log_path=log_path)
        except OSError as exc:
            raise EngineStartError(
                f"cannot start bridge {argv[0]!r} for {launch.instance_id}: {exc}"
            ) from exc
        log.info("bridge for %s started (pid %d)", launch.instance_id, bridge.pid)
        return bridge

    async def _wait_bridge_ready(
        self, launch: InstanceLaunch, bridge: ProcessHandle, offset: int
    ) -> int:
        """Wait for the bridge's ``{"event": "listening", "metrics_port": P}`` line; P.

        Only what was logged after ``offset`` counts (the log of an instance id
        that ran before holds an earlier bridge's announcement).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._bridge_ready_timeout_s
        while True:
            announced = _listening(bridge.log, offset)
            if announced is not None:
                return announced
            if not procs.is_running(bridge):
                raise EngineStartError(
                    f"bridge of {launch.instance_id} exited at start; "
                    f"log tail:\n{procs.log_tail(bridge.log)}"
                )
            if loop.time() >= deadline:
                raise EngineTimeoutError(
                    f"bridge of {launch.instance_id} did not announce it takes jobs within "
                    f"{self._bridge_ready_timeout_s:.1f}s; log tail:\n{procs.log_tail(bridge.log)}"
                )
            await asyncio.sleep(0.05)

    def _abandon(self, record: _Record) -> None:
        """Kill what a failed or cancelled start left running."""
        for proc in (record.bridge, record.engine):
            if proc is not None:
                procs.kill_now(proc)
        self._forget(record.instance_id)

    def _running(self, record: _Record) -> RunningInstance:
        return RunningInstance(
            instance_id=record.instance_id,
            engine_url=record.engine_url,
            bridge_metrics_url=record.bridge_metrics_url,
            engine_pid=record.engine.pid,
            bridge_pid=record.bridge.pid if record.bridge else None,
        )

    def _path(self, instance_id: str) -> Path:
        return self._records_dir / f"{encode_token(instance_id)}.json"

    def _save(self, record: _Record) -> None:
        path = self._path(record.instance_id)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(record))
        os.replace(tmp, path)

    def _read(self, path: Path) -> _Record | None:
        try:
            return msgspec.json.decode(path.read_bytes(), type=_Record)
        except FileNotFoundError:
            return None
        except (OSError, msgspec.ValidationError, msgspec.DecodeError) as exc:
            log.warning("runtime record %s unreadable: %s", path, exc)
            return None

    def _load(self, instance_id: str) -> _Record | None:
        return self._read(self._path(instance_id))

    def _forget(self, instance_id: str) -> None:
        self._path(instance_id).unlink(missing_ok=True)


def _listening(log_path: str, offset: int) -> int | None:
    """The metrics port a process announced in its log after ``offset`` (0 if none given)."""
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    for line in text.splitlines():
        if '"listening"' not in line:
            continue
        try:
            announced = json.loads(line)
        except ValueError:
            continue
        if isinstance(announced, dict) and announced.get("event") == "listening":
            port = announced.get("metrics_port", 0)
            return port if isinstance(port, int) else 0
    return None
