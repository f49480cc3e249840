"""``KubernetesRuntime``: the ``Runtime`` protocol with one Pod per instance.

start: create the Pod (``pods.pod_manifest``), wait until it is Ready (both
containers pass their readiness probes) or can no longer start (image pull
errors, a container that exited, an evicted Pod), delete it on failure.
stop: delete it with a grace period of the drain timeout plus the engine's
shutdown, wait until it is gone. liveness/adopt/known: from ``PodWatch``.

The API calls block, so each runs in a worker thread. The client itself is
behind ``PodClient`` (implemented by ``kubernetes.PodApi``, the only module
that imports the kubernetes client).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from migserve_shared.messages import InstanceRecord

from migserve_agent.runtime import pods
from migserve_agent.runtime.base import (
    EngineStartError,
    EngineTimeoutError,
    InstanceLaunch,
    Liveness,
    RunningInstance,
)
from migserve_agent.runtime.pod_settings import IMAGE_VARIABLES, PodSettings
from migserve_agent.runtime.pod_state import PodView
from migserve_agent.runtime.pod_watch import PodWatch
from migserve_agent.runtime.pods import KubernetesApiError

log = logging.getLogger(__name__)


class PodClient(Protocol):
    """The Pod calls the runtime makes (blocking; ``kubernetes.PodApi``)."""

    @property
    def namespace(self) -> str: ...

    def create(self, manifest: Mapping[str, Any]) -> dict[str, Any]: ...

    def read(self, name: str) -> dict[str, Any] | None: ...

    def delete(self, name: str, *, grace_s: int) -> bool: ...


class KubernetesRuntime:
    """``Runtime`` that runs each instance as a Pod (engine + bridge sidecar) on this node."""

    name = "kubernetes"

    def __init__(
        self,
        *,
        api: PodClient,
        watch: PodWatch,
        node: str,
        settings: PodSettings,
        bridge_env: Mapping[str, str],
        on_close: Callable[[], None] | None = None,
        poll_interval_s: float = 0.25,
        resync_s: float = 5.0,
    ) -> None:
        self._api = api
        self._watch = watch
        self._node = node
        self._settings = settings
        self._bridge_env = dict(bridge_env)
        self._on_close = on_close
        self._poll_s = poll_interval_s
        self._resync_s = resync_s

    def close(self) -> None:
        """Stop watching (the Pods keep running; the next agent adopts them)."""
        self._watch.stop()
        if self._on_close is not None:
            self._on_close()

    # Runtime -------------------------------------------------------------------------
    async def start(self, launch: InstanceLaunch, *, ready_timeout_s: float) -> RunningInstance:
        image = self._settings.images.get(launch.engine_kind)
        if not image:
            raise EngineStartError(
                f"no container image for engine {launch.engine_kind!r} on {self._node} "
                f"(set {IMAGE_VARIABLES.get(launch.engine_kind, 'MIGSERVE_ENGINE_IMAGE_*')})"
            )
        manifest = pods.pod_manifest(
            launch,
            settings=self._settings,
            namespace=self._api.namespace,
            image=image,
            bridge_env=self._bridge_env,
        )
        name = manifest["metadata"]["name"]
        self._watch.put(await asyncio.to_thread(self._api.create, manifest))
        log.info("pod %s/%s for %s created on %s", self._api.namespace, name,
                 launch.instance_id, self._node)  # fmt: skip
        try:
            pod = await self._until(name, _ready_or_failed, timeout_s=ready_timeout_s)
            if pod is None:
                raise EngineStartError(f"pod {name} of {launch.instance_id} vanished at start")
            failure = pod.start_failure()
            if failure is not None:
                raise EngineStartError(f"engine of {launch.instance_id} failed to start: {failure}")
        except TimeoutError as exc:
            current = self._watch.get(name)
            await self._abandon(name)
            raise EngineTimeoutError(
                f"pod {name} of {launch.instance_id} not ready after {ready_timeout_s:.1f}s "
                f"({current.describe() if current else 'no pod'})"
            ) from exc
        except BaseException:
            await self._abandon(name)
            raise
        log.info("pod %s ready: engine %s", name, pod.engine_url)
        return _running(pod)

    async def stop(self, instance_id: str, *, drain_timeout_s: float) -> None:
        name = pods.pod_name(instance_id)
        grace = math.ceil(drain_timeout_s) + math.ceil(self._settings.engine_stop_s)
        if not await asyncio.to_thread(self._api.delete, name, grace_s=grace):
            self._watch.forget(name)
            return
        try:
            await self._until(name, _never, timeout_s=grace + 30)
        except TimeoutError:
            log.warning("pod %s is still there %ds after its deletion; deleting it now",
                        name, grace + 30)  # fmt: skip
            await asyncio.to_thread(self._api.delete, name, grace_s=0)
        self._watch.forget(name)
        log.info("pod %s of %s deleted", name, instance_id)

    def liveness(self, instance_id: str) -> Liveness:
        pod = self._watch.get(pods.pod_name(instance_id))
        if pod is None:
            return Liveness(engine=False, bridge=False)
        return Liveness(
            engine=pod.container_alive(pods.ENGINE), bridge=pod.container_alive(pods.BRIDGE)
        )

    def adopt(self, record: InstanceRecord) -> RunningInstance | None:
        pod = self._watch.get(pods.pod_name(record.instance_id))
        if pod is None or pod.instance_id != record.instance_id:
            return None
        if not self.liveness(record.instance_id).alive:
            return None
        return _running(pod)

    def known(self) -> dict[str, str]:
        return {pod.instance_id: pod.model_id for pod in self._watch.all()}

    def endpoint(self) -> tuple[str, int]:
        # each Pod has its own network namespace: the same port every time, all addresses
        # (the bridge uses loopback; Prometheus scrapes the Pod's IP)
        return "0.0.0.0", self._settings.engine_port

    # Internals -----------------------------------------------------------------------
    async def _until(
        self, name: str, done: Callable[[PodView], bool], *, timeout_s: float
    ) -> PodView | None:
        """Wait until ``done(pod)`` or the Pod is gone (None); TimeoutError after ``timeout_s``.

        Reads the watched state every poll, and the Pod itself every
        ``resync_s`` in case the watch lags or is reconnecting.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        next_read = loop.time() + self._resync_s
        while True:
            pod = self._watch.get(name)
            if loop.time() >= next_read:
                raw = await asyncio.to_thread(self._api.read, name)
                if raw is None:
                    self._watch.forget(name)
                pod = self._watch.put(raw) if raw is not None else None
                next_read = loop.time() + self._resync_s
            if pod is None or done(pod):
                return pod
            if loop.time() >= deadline:
                raise TimeoutError(name)
            await asyncio.sleep(self._poll_s)

    async def _abandon(self, name: str) -> None:
        """Delete a Pod whose start failed or was cancelled, at once (nothing to drain)."""
        try:
            await asyncio.shield(asyncio.to_thread(self._api.delete, name, grace_s=0))
        except KubernetesApiError as exc:
            log.warning("could not delete pod %s after its failed start: %s", name, exc)
        self._watch.forget(name)


def _ready_or_failed(pod: PodView) -> bool:
    return (pod.ready and bool(pod.pod_ip)) or pod.start_failure() is not None


def _never(pod: PodView) -> bool:
    return False


def _running(pod: PodView) -> RunningInstance:
    return RunningInstance(
        instance_id=pod.instance_id,
        engine_url=pod.engine_url,
        bridge_metrics_url=pod.bridge_metrics_url,
    )
