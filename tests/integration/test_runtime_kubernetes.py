"""The kubernetes runtime against kmock's in-memory Kubernetes API server on loopback.

kmock stores Pods and serves list/watch/read/patch/delete like an API server,
but runs no kubelet: the tests play the kubelet by patching the Pod's status
(the way the real one reports container states and readiness).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import kmock
import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from migserve_agent.engines.base import EngineLaunch
from migserve_agent.runtime import kubernetes
from migserve_agent.runtime.base import EngineStartError, EngineTimeoutError, InstanceLaunch
from migserve_agent.runtime.pod_runtime import KubernetesRuntime
from migserve_agent.runtime.pod_settings import PodSettings
from migserve_agent.runtime.pods import (
    KubernetesForbiddenError,
    PodConflictError,
    PodNotFoundError,
    pod_name,
)
from migserve_shared.errors import ErrorCode
from migserve_shared.messages import InstanceRecord

NS = "migserve"
NODE = "gpu-node-1"
SLICE = "MIG-377e0049-554c-540b-93c6-d0976f8426cb"
MODEL = "Qwen/Qwen2.5-3B-Instruct"


@dataclass
class Cluster:
    """kmock's API server, and a client that plays the kubelet and the operator."""

    url: str
    api: k8s.CoreV1Api

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def pod(self, name: str) -> dict[str, Any] | None:
        try:
            resp = await self.call(self.api.read_namespaced_pod, name, NS, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        pod: dict[str, Any] = json.loads(resp.data)
        return pod

    async def wait_pod(self, name: str) -> dict[str, Any]:
        for _ in range(200):
            pod = await self.pod(name)
            if pod is not None:
                return pod
            await asyncio.sleep(0.02)
        raise AssertionError(f"pod {name} never appeared")

    async def kubelet_reports(self, name: str, **status: Any) -> None:
        await self.call(
            self.api.patch_namespaced_pod_status,
            name,
            NS,
            {"status": status},
            _preload_content=False,
        )


def running(ip: str = "10.0.0.7") -> dict[str, Any]:
    """The status a kubelet reports once both containers pass their readiness probes."""
    return {
        "phase": "Running",
        "podIP": ip,
        "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [
            {"name": "engine", "ready": True, "state": {"running": {}}},
            {"name": "bridge", "ready": True, "state": {"running": {}}},
        ],
    }


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
        emulator.resources["v1/pods"] = kmock.ResourceInfo(namespaced=True, kind="Pod")
        url = str(server.url).rstrip("/")
        config = k8s.Configuration()
        config.host = url
        api_client = k8s.ApiClient(config)
        try:
            yield Cluster(url=url, api=k8s.CoreV1Api(api_client))
        finally:
            api_client.close()  # type: ignore[no-untyped-call]


def settings(cluster: Cluster) -> PodSettings:
    return PodSettings(
        namespace=NS,
        api_url=cluster.url,
        images={"vllm": "vllm/vllm-openai:v0.28.0"},
        bridge_image="migserve/mig-agent:0.1.0",
        bridge_drain_s=5,
        engine_stop_s=5,
    )


@pytest.fixture
async def opened() -> AsyncIterator[Callable[[Cluster], Any]]:
    """Opens runtimes the way the agent does; closes them all at the end."""
    runtimes: list[KubernetesRuntime] = []

    async def open_(cluster: Cluster, node: str = NODE) -> KubernetesRuntime:
        runtime = await kubernetes.open_runtime(
            settings(cluster), node=node, bridge_env={"MIGSERVE_NATS_URL": "nats://nats:4222"}
        )
        runtimes.append(runtime)
        return runtime

    try:
        yield open_
    finally:
        for runtime in runtimes:
            await asyncio.to_thread(runtime.close)


def launch(instance_id: str = "inst-1", kind: str = "vllm", node: str = NODE) -> InstanceLaunch:
    return InstanceLaunch(
        instance_id=instance_id,
        model_id=MODEL,
        node=node,
        engine_kind=kind,
        engine=EngineLaunch(argv=("vllm", "serve", MODEL, "--host", "0.0.0.0", "--port", "8000")),
        host="0.0.0.0",
        port=8000,
        slice_uuid=SLICE,
        slots=16,
    )


def record(instance_id: str) -> InstanceRecord:
    return InstanceRecord(
        instance_id=instance_id,
        model_id=MODEL,
        node=NODE,
        gpu_index=0,
        profile="2g.20gb",
        start=0,
        slice_uuid=SLICE,
        engine="vllm",
        state="ready",
    )


async def eventually(check: Callable[[], bool]) -> None:
    for _ in range(200):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition never held")


async def start_ready(runtime: KubernetesRuntime, cluster: Cluster, instance_id: str) -> Any:
    starting = asyncio.create_task(runtime.start(launch(instance_id), ready_timeout_s=10))
    await cluster.wait_pod(pod_name(instance_id))
    await cluster.kubelet_reports(pod_name(instance_id), **running())
    return await starting


async def test_create_ready_crash_and_delete(cluster: Cluster, opened: Any) -> None:
    runtime: KubernetesRuntime = await opened(cluster)
    assert runtime.name == "kubernetes"
    assert runtime.endpoint() == ("0.0.0.0", 8000)
    name = pod_name("inst-1")
    starting = asyncio.create_task(runtime.start(launch(), ready_timeout_s=10))
    pod = await cluster.wait_pod(name)
    spec = pod["spec"]
    assert spec["nodeName"] == NODE
    assert [c["name"] for c in spec["containers"]] == ["engine", "bridge"]
    engine_env = {e["name"]: e["value"] for e in spec["containers"][0]["env"]}
    assert engine_env["NVIDIA_VISIBLE_DEVICES"] == SLICE
    assert pod["metadata"]["annotations"]["migserve.io/model-id"] == MODEL
    await asyncio.sleep(0.2)
    assert not starting.done()  # created, not ready: still waiting for the kubelet
    await cluster.kubelet_reports(name, phase="Pending", containerStatuses=[
        {"name": "engine", "ready": False, "state": {"waiting": {"reason": "ContainerCreating"}}},
    ])  # fmt: skip
    await asyncio.sleep(0.2)
    assert not starting.done()
    await cluster.kubelet_reports(name, **running())
    started = await asyncio.wait_for(starting, 5)
    assert started.engine_url == "http://10.0.0.7:8000"
    assert started.bridge_metrics_url == "http://10.0.0.7:9400/metrics"
    assert runtime.liveness("inst-1").alive
    assert runtime.known() == {"inst-1": MODEL}

    # the engine container dies (restartPolicy Never): the agent's watch loop sees it
    status = running()
    status["containerStatuses"][0]["state"] = {"terminated": {"exitCode": 137}}
    await cluster.kubelet_reports(name, **status)
    await eventually(lambda: not runtime.liveness("inst-1").engine)
    assert runtime.liveness("inst-1").bridge
    assert runtime.liveness("inst-1").describe() == "engine exited"

    await runtime.stop("inst-1", drain_timeout_s=5)
    assert await cluster.pod(name) is None
    assert not runtime.liveness("inst-1").engine
    assert runtime.known() == {}
    await runtime.stop("inst-1", drain_timeout_s=5)  # already gone (404): nothing to do


async def test_a_restarted_agent_adopts_its_pods(cluster: Cluster, opened: Any) -> None:
    first: KubernetesRuntime = await opened(cluster)
    await start_ready(first, cluster, "inst-a")
    await start_ready(first, cluster, "inst-b")
    await asyncio.to_thread(first.close)
    # a Pod another node's agent made is not ours
    elsewhere: KubernetesRuntime = await opened(cluster, "gpu-node-2")
    other = asyncio.create_task(
        elsewhere.start(launch("inst-z", node="gpu-node-2"), ready_timeout_s=10)
    )
    await cluster.wait_pod(pod_name("inst-z"))
    await cluster.kubelet_reports(pod_name("inst-z"), **running("10.0.0.9"))
    await other

    second: KubernetesRuntime = await opened(cluster)
    assert second.known() == {"inst-a": MODEL, "inst-b": MODEL}
    adopted = second.adopt(record("inst-a"))
    assert adopted is not None and adopted.engine_url == "http://10.0.0.7:8000"
    assert second.adopt(record("inst-missing")) is None
    # a Pod whose engine died while no agent watched is not adopted
    status = running()
    status["containerStatuses"][1]["state"] = {"terminated": {"exitCode": 1}}
    await cluster.kubelet_reports(pod_name("inst-b"), **status)
    await eventually(lambda: not second.liveness("inst-b").alive)
    assert second.adopt(record("inst-b")) is None
    await second.stop("inst-b", drain_timeout_s=1)
    assert second.known() == {"inst-a": MODEL}


async def test_a_container_that_cannot_start_fails_the_start_and_is_deleted(
    cluster: Cluster, opened: Any
) -> None:
    runtime: KubernetesRuntime = await opened(cluster)
    name = pod_name("inst-1")
    starting = asyncio.create_task(runtime.start(launch(), ready_timeout_s=10))
    await cluster.wait_pod(name)
    await cluster.kubelet_reports(name, phase="Pending", containerStatuses=[
        {"name": "engine", "ready": False, "state": {"waiting": {
            "reason": "ImagePullBackOff", "message": "Back-off pulling image vllm/vllm-openai"}}},
    ])  # fmt: skip
    with pytest.raises(EngineStartError, match=r"engine cannot start \(ImagePullBackOff"):
        await starting
    assert await cluster.pod(name) is None
    assert runtime.known() == {}


async def test_a_pod_that_never_becomes_ready_times_out_and_is_deleted(
    cluster: Cluster, opened: Any
) -> None:
    runtime: KubernetesRuntime = await opened(cluster)
    with pytest.raises(EngineTimeoutError, match=r"not ready after 0\.5s \(phase Pending"):
        await runtime.start(launch(), ready_timeout_s=0.5)
    assert await cluster.pod(pod_name("inst-1")) is None


async def test_api_errors_become_ours(cluster: Cluster, opened: Any) -> None:
    runtime: KubernetesRuntime = await opened(cluster)
    # 409: a Pod of that name exists already
    await cluster.call(
        cluster.api.create_namespaced_pod,
        NS,
        {"metadata": {"name": pod_name("inst-1")}, "spec": {"containers": []}},
    )
    with pytest.raises(PodConflictError, match="HTTP 409") as conflict:
        await runtime.start(launch(), ready_timeout_s=5)
    assert conflict.value.code is ErrorCode.IN_USE
    # 404
    config = k8s.Configuration()
    config.host = cluster.url
    api_client = k8s.ApiClient(config)
    try:
        api = kubernetes.PodApi(k8s.CoreV1Api(api_client), namespace=NS)
        assert await asyncio.to_thread(api.read, "no-such-pod") is None
        assert await asyncio.to_thread(api.delete, "no-such-pod", grace_s=0) is False
    finally:
        api_client.close()  # type: ignore[no-untyped-call]
    missing = kubernetes.translate(
        ApiException(status=404, reason="Not Found"), "reading pod migserve/x"
    )
    assert isinstance(missing, PodNotFoundError)
    assert missing.code is ErrorCode.NOT_FOUND and missing.status == 404
    forbidden = kubernetes.translate(
        ApiException(status=403, reason="Forbidden"), "creating pod migserve/x"
    )
    assert isinstance(forbidden, KubernetesForbiddenError)
    assert forbidden.code is ErrorCode.NO_PERMISSION


async def test_an_engine_without_an_image_is_refused_before_any_call(
    cluster: Cluster, opened: Any
) -> None:
    runtime: KubernetesRuntime = await opened(cluster)
    with pytest.raises(EngineStartError, match="MIGSERVE_ENGINE_IMAGE_TGI"):
        await runtime.start(launch(kind="tgi"), ready_timeout_s=1)
    assert runtime.known() == {}
