"""Engine Pods of the kubernetes runtime (pure): names, the manifest, what a Pod's state means."""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate
import pytest
from migserve_agent.engines.base import EngineLaunch
from migserve_agent.runtime.base import InstanceLaunch
from migserve_agent.runtime.pod_settings import PodSettings, pod_settings_from_env
from migserve_agent.runtime.pod_state import newer, view
from migserve_agent.runtime.pods import label_value, pod_manifest, pod_name
from migserve_agent.settings import settings_from_env
from migserve_shared.env import Env
from migserve_shared.errors import ConfigError
from migserve_shared.ids import encode_token

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$")
SLICE = "MIG-377e0049-554c-540b-93c6-d0976f8426cb"
SETTINGS = PodSettings(
    images={"vllm": "vllm/vllm-openai:v0.28.0"},
    bridge_image="migserve/mig-agent:0.1.0",
    engine_env_secret="hf-token",
)


def launch(
    instance_id: str = "inst-0123456789abcdef", model: str = "Qwen/Qwen2.5-3B"
) -> InstanceLaunch:
    return InstanceLaunch(
        instance_id=instance_id,
        model_id=model,
        node="gpu-node-1",
        engine_kind="vllm",
        engine=EngineLaunch(
            argv=("vllm", "serve", model, "--port", "8000"), env={"VLLM_NO_USAGE_STATS": "1"}
        ),
        host="0.0.0.0",
        port=8000,
        slice_uuid=SLICE,
        slots=16,
        profile="1g.10gb",
    )


def manifest(**kw: Any) -> dict[str, Any]:
    return pod_manifest(
        launch(**kw),
        settings=SETTINGS,
        namespace="migserve",
        image="vllm/vllm-openai:v0.28.0",
        bridge_env={"MIGSERVE_NATS_URL": "nats://nats:4222"},
    )


@pytest.mark.parametrize(
    "instance_id", ["inst-0123456789abcdef", "Inst_With.Dots/and:colons", "x" * 256, "---", "é"]
)
def test_pod_names_are_dns_labels_distinct_per_instance(instance_id: str) -> None:
    name = pod_name(instance_id)
    assert DNS_LABEL.fullmatch(name), name
    assert pod_name(instance_id) == name  # stable: a restarted agent finds it again
    assert pod_name(instance_id + "2") != name


@pytest.mark.parametrize(
    "text", ["gpu-node-1", encode_token("meta-llama/Llama-3.1-8B:v2"), "a" * 80, "-x-", "é/ü"]
)
def test_label_values_are_valid_and_keep_valid_ones(text: str) -> None:
    value = label_value(text)
    assert LABEL.fullmatch(value) and len(value) <= 63, value
    if LABEL.fullmatch(text) and len(text) <= 63:
        assert value == text


def test_the_pod_pins_the_engine_to_the_node_and_its_slice() -> None:
    pod = manifest()
    spec = pod["spec"]
    assert spec["nodeName"] == "gpu-node-1"
    assert spec["restartPolicy"] == "Never"
    assert spec["runtimeClassName"] == "nvidia"
    engine, bridge = spec["containers"]
    env = {e["name"]: e["value"] for e in engine["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"] == SLICE
    assert "CUDA_VISIBLE_DEVICES" not in env  # vLLM crashes on a MIG UUID there
    assert env["VLLM_NO_USAGE_STATS"] == "1"
    assert engine["command"] == ["vllm"]
    assert engine["args"] == ["serve", "Qwen/Qwen2.5-3B", "--port", "8000"]
    assert engine["readinessProbe"]["httpGet"] == {"path": "/health", "port": 8000}
    assert "nvidia.com/gpu" not in str(engine["resources"])  # the agent owns the slices
    assert engine["envFrom"] == [{"secretRef": {"name": "hf-token"}}]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in engine["volumeMounts"]
    bridge_env = {e["name"]: e["value"] for e in bridge["env"]}
    assert bridge_env == {"MIGSERVE_NATS_URL": "nats://nats:4222", "NVIDIA_VISIBLE_DEVICES": "void"}
    assert bridge["command"] == ["migserve-bridge"]
    args = bridge["args"]
    flags = dict(zip(args[::2], args[1::2], strict=True))
    assert flags == {
        "--model": "Qwen/Qwen2.5-3B",
        "--instance-id": "inst-0123456789abcdef",
        "--node": "gpu-node-1",
        "--profile": "1g.10gb",
        "--engine-url": "http://127.0.0.1:8000",
        "--engine-kind": "vllm",
        "--slots": "16",
        "--metrics-port": "9400",
        "--metrics-host": "0.0.0.0",
        "--drain-timeout-s": "60",
    }
    assert bridge["readinessProbe"]["httpGet"] == {"path": "/health", "port": 9400}
    assert bridge["securityContext"]["runAsNonRoot"] is True
    # the engine stops only after the bridge drained (its preStop waits for the bridge's port)
    hook = " ".join(engine["lifecycle"]["preStop"]["exec"]["command"])
    assert "/dev/tcp/127.0.0.1/9400" in hook
    assert spec["terminationGracePeriodSeconds"] > SETTINGS.bridge_drain_s + SETTINGS.engine_stop_s


def test_labels_and_annotations_for_discovery_and_scraping() -> None:
    pod = manifest(instance_id="inst-1", model="meta-llama/Llama-3.1-8B-Instruct")
    meta = pod["metadata"]
    assert meta["namespace"] == "migserve"
    assert meta["labels"] == {
        "app.kubernetes.io/name": "migserve-vllm",
        "app.kubernetes.io/instance": meta["name"],
        "app.kubernetes.io/component": "engine",
        "app.kubernetes.io/part-of": "migserve",
        "app.kubernetes.io/managed-by": "migserve-agent",
        "migserve.io/instance": "inst-1",
        "migserve.io/model": "meta-llama_2fLlama-3_2e1-8B-Instruct",
        "migserve.io/node": "gpu-node-1",
        "migserve.io/engine": "vllm",
    }
    ann = meta["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert ann["prometheus.io/port"] == "9400"
    assert ann["prometheus.io/path"] == "/metrics"
    assert ann["migserve.io/model-id"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert ann["migserve.io/instance-id"] == "inst-1"
    # the port names the PodMonitor and the scrape config select (deploy/prometheus)
    ports = [p["name"] for c in pod["spec"]["containers"] for p in c["ports"]]
    assert ports == ["http", "bridge-metrics"]


@pytest.mark.parametrize("version", ["1.29", "1.33"])
def test_the_manifest_passes_strict_schema_validation(version: str) -> None:
    kubernetes_validate.validate(manifest(), version, strict=True)
    cached = PodSettings(
        bridge_image="b", model_cache_host_path="/var/cache/models", runtime_class=None
    )
    pod = pod_manifest(launch(), settings=cached, namespace="n", image="i", bridge_env={})
    assert "runtimeClassName" not in pod["spec"]
    kubernetes_validate.validate(pod, version, strict=True)


def test_strict_validation_can_fail() -> None:
    pod = manifest()
    pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, "1.33", strict=True)


# What a Pod's status means -------------------------------------------------------------
def with_status(pod: dict[str, Any], **status: Any) -> dict[str, Any]:
    return {**pod, "status": status}


def container(name: str, **state: Any) -> dict[str, Any]:
    return {"name": name, "ready": "running" in state, "state": state}


def test_views_read_readiness_urls_and_failures() -> None:
    pod = manifest()
    assert view({"metadata": {"name": "other"}}) is None  # not ours
    pending = view(pod)
    assert pending is not None and not pending.ready and pending.engine_url == ""
    assert pending.start_failure() is None and pending.container_alive("engine")
    ready = view(
        with_status(
            pod,
            phase="Running",
            podIP="10.1.2.3",
            conditions=[{"type": "Ready", "status": "True"}],
            containerStatuses=[container("engine", running={}), container("bridge", running={})],
        )
    )
    assert ready is not None and ready.ready
    assert ready.engine_url == "http://10.1.2.3:8000"
    assert ready.bridge_metrics_url == "http://10.1.2.3:9400/metrics"
    pulling = view(
        with_status(
            pod,
            containerStatuses=[
                container(
                    "engine",
                    waiting={"reason": "ImagePullBackOff", "message": "Back-off pulling image"},
                )
            ],
        )
    )
    assert pulling is not None
    assert "engine cannot start (ImagePullBackOff" in (pulling.start_failure() or "")
    crashed = view(
        with_status(
            pod,
            phase="Failed",
            containerStatuses=[
                container(
                    "engine",
                    terminated={
                        "exitCode": 1,
                        "reason": "Error",
                        "message": "ValueError: invalid literal",
                    },
                )
            ],
        )
    )
    assert crashed is not None and not crashed.container_alive("engine")
    assert "exit code 1" in (crashed.start_failure() or "")
    v6 = view(with_status(pod, podIP="fd00::5"))
    assert v6 is not None and v6.engine_url == "http://[fd00::5]:8000"


def test_a_stale_read_does_not_replace_a_newer_watched_state() -> None:
    pod = manifest()
    pod["metadata"] |= {"uid": "u1", "resourceVersion": "12"}
    new = view(pod)
    pod["metadata"] |= {"resourceVersion": "9"}
    old = view(pod)
    assert new is not None and old is not None
    assert not newer(old, new) and newer(new, old) and newer(old, None)


# Settings --------------------------------------------------------------------------------
def test_settings_from_the_environment() -> None:
    env = {
        "MIGSERVE_NODE": "n1",
        "MIGSERVE_STATE_DIR": "/tmp/x",
        "MIGSERVE_RUNTIME": "kubernetes",
        "MIGSERVE_BRIDGE_IMAGE": "migserve/mig-agent:0.1.0",
        "MIGSERVE_ENGINE_IMAGE_TGI": "ghcr.io/huggingface/text-generation-inference:3.3.7",
        "MIGSERVE_K8S_RUNTIME_CLASS": "none",
        "MIGSERVE_K8S_ENGINE_MEMORY": "24Gi",
    }
    settings = settings_from_env(env)
    assert settings.runtime == "kubernetes"
    pods = settings.pods
    assert pods.images == {
        "tgi": "ghcr.io/huggingface/text-generation-inference:3.3.7",
        "sim": "migserve/mig-agent:0.1.0",
    }
    assert pods.runtime_class is None
    assert pods.engine_memory == "24Gi"


def k8s(**env: str) -> dict[str, str]:
    return {"MIGSERVE_BRIDGE_IMAGE": "b", **env}


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({}, "MIGSERVE_BRIDGE_IMAGE"),
        (k8s(MIGSERVE_K8S_ENGINE_MEMORY="lots"), "MIGSERVE_K8S_ENGINE_MEMORY"),
        (k8s(MIGSERVE_K8S_API_URL="ftp://x"), "MIGSERVE_K8S_API_URL"),
        (k8s(MIGSERVE_K8S_BRIDGE_METRICS_PORT="8000"), "MIGSERVE_K8S_ENGINE_PORT"),
        (k8s(MIGSERVE_K8S_ENGINE_ENV_SECRET="Bad_Name"), "MIGSERVE_K8S_ENGINE_ENV_SECRET"),
        (k8s(MIGSERVE_K8S_IMAGE_PULL_POLICY="Sometimes"), "MIGSERVE_K8S_IMAGE_PULL_POLICY"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        pod_settings_from_env(Env(env), required=True)
