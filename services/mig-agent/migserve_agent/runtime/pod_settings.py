"""Settings of the ``kubernetes`` runtime's engine Pods, read from the environment.

Variables (defaults in brackets):

- MIGSERVE_BRIDGE_IMAGE (required): the migserve agent image; the bridge
  sidecar runs ``migserve-bridge`` from it.
- MIGSERVE_ENGINE_IMAGE_TGI, _VLLM, _LLAMACPP, _SIM: the engine image of each
  engine kind, pinned tags (deploy/images.env) [none; SIM: the bridge image].
- MIGSERVE_K8S_NAMESPACE: namespace of the engine Pods [the agent's, from its
  service account].
- MIGSERVE_K8S_API_URL: the API server [in-cluster config, else kubeconfig].
- MIGSERVE_K8S_RUNTIME_CLASS: RuntimeClass of engine Pods, the NVIDIA
  container runtime [nvidia]; ``none``: the node's default runtime.
- MIGSERVE_K8S_IMAGE_PULL_POLICY: Always, IfNotPresent or Never [IfNotPresent].
- MIGSERVE_K8S_ENGINE_PORT: the engine's port in its Pod [8000].
- MIGSERVE_K8S_BRIDGE_METRICS_PORT: the bridge's /metrics and /health [9400].
- MIGSERVE_K8S_ENGINE_CPU, MIGSERVE_K8S_ENGINE_MEMORY: the engine container's
  requests [2, 8Gi]; no nvidia.com/gpu (see pods.py).
- MIGSERVE_K8S_SHM_SIZE: the engine's /dev/shm [1Gi].
- MIGSERVE_K8S_ENGINE_ENV_SECRET: a Secret whose keys become the engine's
  environment, e.g. HF_TOKEN [none].
- MIGSERVE_K8S_BRIDGE_ENV_SECRET: a Secret whose keys become the bridge's
  environment, e.g. MIGSERVE_NATS_USER and MIGSERVE_NATS_PASSWORD [none].
- MIGSERVE_K8S_MODEL_CACHE_HOSTPATH: a node directory for downloaded weights,
  shared by the node's engines [none: an emptyDir per Pod].
- MIGSERVE_BRIDGE_DRAIN_TIMEOUT_S: how long a stopping bridge finishes the
  jobs it holds [60].
- MIGSERVE_K8S_ENGINE_STOP_S: how long an engine may take to exit [30].
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from migserve_shared.env import Env
from migserve_shared.errors import ConfigError

#: the variable that names each engine kind's image
IMAGE_VARIABLES = {
    "sim": "MIGSERVE_ENGINE_IMAGE_SIM",
    "llamacpp": "MIGSERVE_ENGINE_IMAGE_LLAMACPP",
    "tgi": "MIGSERVE_ENGINE_IMAGE_TGI",
    "vllm": "MIGSERVE_ENGINE_IMAGE_VLLM",
}
_QUANTITY_RE = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$")
_DNS_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


@dataclass(frozen=True, slots=True, kw_only=True)
class PodSettings:
    """How the agent builds engine Pods (MIGSERVE_K8S_*, MIGSERVE_ENGINE_IMAGE_*)."""

    #: the agent's namespace; "" reads it from the service account at start
    namespace: str = ""
    #: the API server; None: in-cluster config, else the kubeconfig
    api_url: str | None = None
    #: engine kind -> container image (pinned tags)
    images: Mapping[str, str] = field(default_factory=dict)
    #: the migserve agent image; the bridge sidecar runs ``migserve-bridge`` from it
    bridge_image: str = ""
    bridge_command: tuple[str, ...] = ("migserve-bridge",)
    engine_port: int = 8000
    bridge_metrics_port: int = 9400
    #: RuntimeClass that injects NVIDIA_VISIBLE_DEVICES; None: the node's default runtime
    runtime_class: str | None = "nvidia"
    image_pull_policy: str = "IfNotPresent"
    engine_cpu: str = "2"
    engine_memory: str = "8Gi"
    bridge_cpu: str = "100m"
    bridge_memory: str = "128Mi"
    bridge_memory_limit: str = "512Mi"
    #: size of the engine's /dev/shm (tmpfs); NCCL and PyTorch want more than 64 MiB
    shm_size: str = "1Gi"
    #: Secret whose keys become the engine's environment (e.g. HF_TOKEN)
    engine_env_secret: str | None = None
    #: Secret whose keys become the bridge's environment (e.g. MIGSERVE_NATS_PASSWORD)
    bridge_env_secret: str | None = None
    #: hostPath for downloaded weights, shared by the node's engines; None: per-Pod emptyDir
    model_cache_host_path: str | None = None
    #: how long the bridge may drain on shutdown (its --drain-timeout-s)
    bridge_drain_s: float = 60.0
    #: how long the engine may take to exit after SIGTERM
    engine_stop_s: float = 30.0

    @property
    def grace_period_s(self) -> int:
        """terminationGracePeriodSeconds: bridge drain, then engine shutdown, plus margin."""
        return int(self.bridge_drain_s + self.engine_stop_s) + 15


def _quantity(env: Env, name: str, default: str) -> str:
    value = env.text(name, default)
    if not _QUANTITY_RE.fullmatch(value):
        raise ConfigError(f"{name}={value!r} is not a Kubernetes quantity (e.g. 500m, 2, 8Gi)")
    return value


def _dns_name(env: Env, name: str) -> str | None:
    value = env.optional(name)
    if value is not None and not _DNS_NAME_RE.fullmatch(value):
        raise ConfigError(f"{name}={value!r} is not a valid Kubernetes object name")
    return value


def pod_settings_from_env(env: Env, *, required: bool) -> PodSettings:
    """The engine Pods' settings; ``required``: the kubernetes runtime is selected."""
    bridge_image = env.optional("MIGSERVE_BRIDGE_IMAGE") or ""
    if required and not bridge_image:
        raise ConfigError("MIGSERVE_RUNTIME=kubernetes needs MIGSERVE_BRIDGE_IMAGE")
    images = {}
    for kind, variable in IMAGE_VARIABLES.items():
        image = env.optional(variable)
        if image:
            images[kind] = image
    if bridge_image:
        images.setdefault("sim", bridge_image)
    api_url = env.optional("MIGSERVE_K8S_API_URL")
    if api_url is not None and not api_url.startswith(("http://", "https://")):
        raise ConfigError(f"MIGSERVE_K8S_API_URL={api_url!r} is not an http(s) URL")
    runtime_class = env.text("MIGSERVE_K8S_RUNTIME_CLASS", "nvidia")
    engine_port = env.integer("MIGSERVE_K8S_ENGINE_PORT", 8000, min=1, max=65535)
    metrics_port = env.integer("MIGSERVE_K8S_BRIDGE_METRICS_PORT", 9400, min=1, max=65535)
    if engine_port == metrics_port:
        raise ConfigError(
            f"MIGSERVE_K8S_ENGINE_PORT and MIGSERVE_K8S_BRIDGE_METRICS_PORT are both {engine_port}"
        )
    cache = env.optional("MIGSERVE_K8S_MODEL_CACHE_HOSTPATH")
    if cache is not None and not cache.startswith("/"):
        raise ConfigError(f"MIGSERVE_K8S_MODEL_CACHE_HOSTPATH={cache!r} is not an absolute path")
    return PodSettings(
        namespace=env.optional("MIGSERVE_K8S_NAMESPACE") or "",
        api_url=api_url,
        images=images,
        bridge_image=bridge_image,
        engine_port=engine_port,
        bridge_metrics_port=metrics_port,
        runtime_class=None if runtime_class.lower() == "none" else runtime_class,
        image_pull_policy=env.choice(
            "MIGSERVE_K8S_IMAGE_PULL_POLICY", "IfNotPresent", ("Always", "IfNotPresent", "Never")
        ),
        engine_cpu=_quantity(env, "MIGSERVE_K8S_ENGINE_CPU", "2"),
        engine_memory=_quantity(env, "MIGSERVE_K8S_ENGINE_MEMORY", "8Gi"),
        shm_size=_quantity(env, "MIGSERVE_K8S_SHM_SIZE", "1Gi"),
        engine_env_secret=_dns_name(env, "MIGSERVE_K8S_ENGINE_ENV_SECRET"),
        bridge_env_secret=_dns_name(env, "MIGSERVE_K8S_BRIDGE_ENV_SECRET"),
        model_cache_host_path=cache,
        bridge_drain_s=env.number("MIGSERVE_BRIDGE_DRAIN_TIMEOUT_S", 60.0, min=0, max=3600),
        engine_stop_s=env.number("MIGSERVE_K8S_ENGINE_STOP_S", 30.0, min=0, max=3600),
    )


def bridge_environment(
    *, nats_url: str, js_replicas: int, log_json: bool, log_level: str
) -> Mapping[str, str]:
    """The environment of a bridge sidecar (credentials come from its Secret, not here)."""
    return {
        "MIGSERVE_NATS_URL": nats_url,
        "MIGSERVE_JS_REPLICAS": str(js_replicas),
        "MIGSERVE_LOG_FORMAT": "json" if log_json else "text",
        "MIGSERVE_LOG_LEVEL": log_level,
        "PYTHONUNBUFFERED": "1",
    }
