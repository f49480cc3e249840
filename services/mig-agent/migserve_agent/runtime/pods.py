"""Engine Pods for the ``kubernetes`` runtime: names, labels and the manifest.

Pure (no I/O, no kubernetes client): manifests are the plain JSON dicts the
API server takes. ``runtime/kubernetes.py`` sends them, ``pod_state.py`` reads
what comes back, ``pod_settings.py`` holds the knobs.

One Pod per instance, pinned to the agent's node (``spec.nodeName``, so no
scheduler is involved), in the agent's namespace, with two containers:

* ``engine``: the engine's image and command line (from its adapter), the
  slice as ``NVIDIA_VISIBLE_DEVICES=MIG-<uuid>`` (the container sees it as
  device 0), a readiness probe on the engine's health path. It requests no
  ``nvidia.com/gpu``: the agent owns the node's MIG slices (it creates and
  destroys them with NVML as the scaler decides) and NVIDIA's device plugin
  does not rescan after a MIG change, so it could not hand out the slice the
  agent just made. The NVIDIA container runtime (``runtimeClassName``,
  ``nvidia`` by default) mounts exactly the device the variable names. GPUs
  the agent manages must therefore not also be advertised by a device plugin.
* ``bridge``: the migserve agent image running ``migserve-bridge`` with the
  same flags the process runtime passes, the engine at
  ``http://127.0.0.1:<port>`` (same Pod, same network namespace), its
  metrics on a fixed port; ready once it takes jobs. It pulls jobs only while
  the engine answers its health check, so starting both at once is safe.

Stopping: the kubelet signals both containers at once, but the bridge must
finish the jobs it holds while the engine still runs. The engine's preStop
hook waits until the bridge has closed its metrics port (it does so after
draining), so the engine gets SIGTERM only then (the hook needs bash, which
the TGI, vLLM, llama.cpp and migserve images have). The grace period is
longer than the bridge's drain timeout plus the engine's own shutdown.

Also here: the errors the Kubernetes API's answers become (404, 409, 401/403).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any, Final

from migserve_shared.errors import ErrorCode, MigserveError
from migserve_shared.ids import encode_token

from migserve_agent.runtime.base import InstanceLaunch
from migserve_agent.runtime.pod_settings import PodSettings

PART_OF: Final = "migserve"
MANAGED_BY: Final = "migserve-agent"
COMPONENT: Final = "engine"
LABEL_INSTANCE: Final = "migserve.io/instance"
LABEL_MODEL: Final = "migserve.io/model"
LABEL_NODE: Final = "migserve.io/node"
LABEL_ENGINE: Final = "migserve.io/engine"
ANN_INSTANCE_ID: Final = "migserve.io/instance-id"
ANN_MODEL_ID: Final = "migserve.io/model-id"
ANN_NODE: Final = "migserve.io/node"
ANN_SLICE: Final = "migserve.io/slice-uuid"
ANN_ENGINE_PORT: Final = "migserve.io/engine-port"
ANN_BRIDGE_PORT: Final = "migserve.io/bridge-metrics-port"
ENGINE: Final = "engine"
BRIDGE: Final = "bridge"
#: the selector that finds every engine Pod the agents manage
MANAGED_SELECTOR: Final = f"app.kubernetes.io/managed-by={MANAGED_BY}"

_LABEL_VALUE_RE = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$")


class KubernetesApiError(MigserveError):
    """The Kubernetes API refused or failed a request."""

    code = ErrorCode.INTERNAL

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class PodNotFoundError(KubernetesApiError):
    """No such Pod (HTTP 404)."""

    code = ErrorCode.NOT_FOUND


class PodConflictError(KubernetesApiError):
    """A Pod of that name already exists (HTTP 409)."""

    code = ErrorCode.IN_USE


class KubernetesForbiddenError(KubernetesApiError):
    """The agent's service account may not do this (HTTP 401/403: check its Role)."""

    code = ErrorCode.NO_PERMISSION


def label_value(text: str) -> str:
    """``text`` if it is a valid label value, else a readable prefix plus a hash (<= 63)."""
    if len(text) <= 63 and _LABEL_VALUE_RE.fullmatch(text):
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    prefix = re.sub(r"[^A-Za-z0-9_.-]", "-", text)[:50].strip("-_.")
    return f"{prefix}-{digest}" if prefix else digest


def pod_name(instance_id: str) -> str:
    """A DNS-1123 name for the instance's Pod: a readable slug plus a hash of the exact id."""
    slug = re.sub(r"[^a-z0-9]+", "-", instance_id.lower()).strip("-")[:40].strip("-")
    digest = hashlib.sha256(instance_id.encode()).hexdigest()[:10]
    return f"migserve-{slug}-{digest}" if slug else f"migserve-{digest}"


def node_selector(node: str) -> tuple[str, str]:
    """(label selector, field selector) of the engine Pods on ``node``."""
    return f"{MANAGED_SELECTOR},{LABEL_NODE}={label_value(node)}", f"spec.nodeName={node}"


def _env(pairs: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"name": k, "value": v} for k, v in pairs.items()]


def _env_from(secret: str | None) -> list[dict[str, Any]]:
    return [{"secretRef": {"name": secret}}] if secret else []


def _wait_for_bridge(port: int, seconds: int) -> list[str]:
    """preStop of the engine: wait (at most ``seconds``) until the bridge's port is closed."""
    script = (
        f"for _ in $(seq 1 {seconds}); do "
        f"(echo > /dev/tcp/127.0.0.1/{port}) 2>/dev/null || exit 0; sleep 1; done"
    )
    return ["/bin/bash", "-c", script]


def pod_manifest(
    launch: InstanceLaunch,
    *,
    settings: PodSettings,
    namespace: str,
    image: str,
    bridge_env: Mapping[str, str],
) -> dict[str, Any]:
    """The Pod that runs ``launch``'s engine with its bridge beside it."""
    name = pod_name(launch.instance_id)
    port = launch.port
    metrics_port = settings.bridge_metrics_port
    grace = settings.grace_period_s
    cache: dict[str, Any] = (
        {"hostPath": {"path": settings.model_cache_host_path, "type": "DirectoryOrCreate"}}
        if settings.model_cache_host_path
        else {"emptyDir": {}}
    )
    engine_env = {
        **dict(sorted(launch.engine.env.items())),
        "HF_HOME": "/model-cache",
        "NVIDIA_VISIBLE_DEVICES": launch.slice_uuid,
        "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
    }
    engine: dict[str, Any] = {
        "name": ENGINE,
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": [launch.engine.argv[0]],
        "args": list(launch.engine.argv[1:]),
        "env": _env(engine_env),
        "envFrom": _env_from(settings.engine_env_secret),
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": launch.engine.health_path, "port": port},
            "periodSeconds": 2,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "lifecycle": {"preStop": {"exec": {"command": _wait_for_bridge(metrics_port, grace)}}},
        "resources": {"requests": {"cpu": settings.engine_cpu, "memory": settings.engine_memory}},
        "volumeMounts": [
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "model-cache", "mountPath": "/model-cache"},
        ],
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    bridge: dict[str, Any] = {
        "name": BRIDGE,
        "image": settings.bridge_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": list(settings.bridge_command),
        "args": [
            "--model",
            launch.model_id,
            "--instance-id",
            launch.instance_id,
            "--node",
            launch.node,
            "--profile",
            launch.profile,
            "--engine-url",
            f"http://127.0.0.1:{port}",
            "--engine-kind",
            launch.engine_kind,
            "--slots",
            str(launch.slots),
            "--metrics-port",
            str(metrics_port),
            "--metrics-host",
            "0.0.0.0",
            "--drain-timeout-s",
            f"{settings.bridge_drain_s:g}",
        ],
        # "void": the NVIDIA runtime mounts no GPU into the bridge
        "env": _env({**bridge_env, "NVIDIA_VISIBLE_DEVICES": "void"}),
        "envFrom": _env_from(settings.bridge_env_secret),
        "ports": [{"name": "bridge-metrics", "containerPort": metrics_port, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": "/health", "port": metrics_port},
            "periodSeconds": 2,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "resources": {
            "requests": {"cpu": settings.bridge_cpu, "memory": settings.bridge_memory},
            "limits": {"memory": settings.bridge_memory_limit},
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    spec: dict[str, Any] = {
        "nodeName": launch.node,
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": grace,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        # nodeName skips the scheduler; tolerate the taints of dedicated GPU nodes anyway
        "tolerations": [
            {"key": "migserve.io/node", "operator": "Exists", "effect": "NoSchedule"},
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        ],
        "containers": [engine, bridge],
        "volumes": [
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": settings.shm_size}},
            {"name": "model-cache", **cache},
        ],
    }
    if settings.runtime_class:
        spec["runtimeClassName"] = settings.runtime_class
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/name": f"migserve-{launch.engine_kind}",
                "app.kubernetes.io/instance": name,
                "app.kubernetes.io/component": COMPONENT,
                "app.kubernetes.io/part-of": PART_OF,
                "app.kubernetes.io/managed-by": MANAGED_BY,
                LABEL_INSTANCE: label_value(launch.instance_id),
                LABEL_MODEL: label_value(encode_token(launch.model_id)),
                LABEL_NODE: label_value(launch.node),
                LABEL_ENGINE: launch.engine_kind,
            },
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(metrics_port),
                "prometheus.io/path": "/metrics",
                ANN_INSTANCE_ID: launch.instance_id,
                ANN_MODEL_ID: launch.model_id,
                ANN_NODE: launch.node,
                ANN_SLICE: launch.slice_uuid,
                ANN_ENGINE_PORT: str(port),
                ANN_BRIDGE_PORT: str(metrics_port),
            },
        },
        "spec": spec,
    }
