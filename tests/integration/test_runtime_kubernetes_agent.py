"""The agent with MIGSERVE_RUNTIME=kubernetes: commands from a real nats-server become Pods
in kmock's API server (the test plays the kubelet), and instances, events and
inventory follow the Pods."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kmock
import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from migserve_agent.agent import open_runtime
from migserve_agent.runtime.pod_runtime import KubernetesRuntime
from migserve_agent.runtime.pods import pod_name
from migserve_agent.settings import settings_from_env
from migserve_cli.nats_server import NatsServer
from migserve_shared.bus import send_command
from migserve_shared.messages import CommandFailed, InstanceReady
from nats.aio.client import Client as NATS
from test_agent_support import (
    NODE,
    EventLog,
    create_command,
    event_log,
    instance_record,
    node_state,
    retire_command,
    running_agent,
    spec,
)

NS = "migserve"


@pytest.fixture
async def api_server() -> AsyncIterator[tuple[str, k8s.CoreV1Api]]:
    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
        emulator.resources["v1/pods"] = kmock.ResourceInfo(namespaced=True, kind="Pod")
        url = str(server.url).rstrip("/")
        config = k8s.Configuration()
        config.host = url
        api_client = k8s.ApiClient(config)
        try:
            yield url, k8s.CoreV1Api(api_client)
        finally:
            api_client.close()  # type: ignore[no-untyped-call]


async def read_pod(api: k8s.CoreV1Api, name: str) -> dict[str, Any] | None:
    try:
        resp: Any = await asyncio.to_thread(
            api.read_namespaced_pod, name, NS, _preload_content=False
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    pod: dict[str, Any] = json.loads(resp.data)
    return pod


async def kubelet_makes_ready(api: k8s.CoreV1Api, name: str) -> dict[str, Any]:
    for _ in range(500):
        pod = await read_pod(api, name)
        if pod is not None:
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError(f"pod {name} was never created")
    status = {
        "phase": "Running",
        "podIP": "10.244.1.17",
        "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [
            {"name": n, "ready": True, "restartCount": 0, "image": "i", "imageID": "",
             "state": {"running": {}}}
            for n in ("engine", "bridge")
        ],
    }  # fmt: skip
    await asyncio.to_thread(
        api.patch_namespaced_pod_status, name, NS, {"status": status}, _preload_content=False
    )
    return pod


async def test_the_agent_runs_instances_as_pods(
    nc: NATS, nats_server: NatsServer, tmp_path: Path, api_server: tuple[str, k8s.CoreV1Api]
) -> None:
    url, api = api_server
    settings = settings_from_env(
        {
            "MIGSERVE_NODE": NODE,
            "MIGSERVE_STATE_DIR": str(tmp_path / "agent"),
            "MIGSERVE_NATS_URL": nats_server.url,
            "MIGSERVE_SIM_CREATE_LATENCY_S": "0",
            "MIGSERVE_SIM_DESTROY_LATENCY_S": "0",
            "MIGSERVE_RUNTIME": "kubernetes",
            "MIGSERVE_K8S_API_URL": url,
            "MIGSERVE_K8S_NAMESPACE": NS,
            "MIGSERVE_BRIDGE_IMAGE": "migserve/mig-agent:0.1.0",
            "MIGSERVE_ENGINE_IMAGE_VLLM": "vllm/vllm-openai:v0.28.0",
            "MIGSERVE_BRIDGE_DRAIN_TIMEOUT_S": "2",
            "MIGSERVE_K8S_ENGINE_STOP_S": "2",
            "MIGSERVE_AGENT_WATCH_INTERVAL_S": "0.1",
            "MIGSERVE_LOG_FORMAT": "text",
        }
    )
    model = spec(model_id="Qwen/Qwen2.5-3B-Instruct", engine="vllm", engine_args={})
    async with contextlib.AsyncExitStack() as stack:
        runtime = await open_runtime(settings, stack)
        assert isinstance(runtime, KubernetesRuntime)
        events: EventLog = await stack.enter_async_context(event_log(nc))
        agent = await stack.enter_async_context(running_agent(settings, nc, runtime=runtime))
        assert (await node_state(nc)).runtime == "kubernetes"
        assert "vllm" in agent.engines.kinds()

        js = nc.jetstream()
        cmd = create_command(model=model, profile="2g.10gb")
        await send_command(js, NODE, cmd)
        pod = await kubelet_makes_ready(api, pod_name(cmd.instance_id))
        engine, bridge = pod["spec"]["containers"]
        assert engine["image"] == "vllm/vllm-openai:v0.28.0"
        assert engine["args"][:2] == ["serve", "Qwen/Qwen2.5-3B-Instruct"]
        assert "--max-num-seqs" in engine["args"]
        env = {e["name"]: e["value"] for e in engine["env"]}
        record = await instance_record(nc, cmd.instance_id)
        assert record is not None
        assert env["NVIDIA_VISIBLE_DEVICES"] == record.slice_uuid  # the slice the agent made
        bridge_env = {e["name"]: e["value"] for e in bridge["env"]}
        assert bridge_env["MIGSERVE_NATS_URL"] == nats_server.url

        ready = await events.wait_for("instance.ready", instance_id=cmd.instance_id)
        assert isinstance(ready, InstanceReady)
        await events.wait_for("command.done", command_id=cmd.command_id)
        record = await instance_record(nc, cmd.instance_id)
        assert record is not None and record.state == "ready"
        assert record.engine_url == "http://10.244.1.17:8000"
        assert record.bridge_metrics_url == "http://10.244.1.17:9400/metrics"

        retire = retire_command(cmd.instance_id)
        await send_command(js, NODE, retire)
        await events.wait_for("instance.stopped", instance_id=cmd.instance_id)
        await events.wait_for("command.done", command_id=retire.command_id)
        assert await read_pod(api, pod_name(cmd.instance_id)) is None
        assert (await node_state(nc)).gpus[0].slices == []

        # an engine kind without an image fails the command with the variable to set
        tgi = create_command(model=spec(model_id="org/tgi-model", engine="tgi", engine_args={}))
        await send_command(js, NODE, tgi)
        failed = await events.wait_for("command.failed", command_id=tgi.command_id)
        assert isinstance(failed, CommandFailed)
        assert "MIGSERVE_ENGINE_IMAGE_TGI" in failed.reason
