"""k8s/: every rendered manifest is a valid Kubernetes object, and the pieces fit.

kustomize renders the base and each overlay; every document passes
kubernetes-validate --strict (unknown fields and wrong types fail) against the
oldest and newest Kubernetes versions we support. The PodMonitor of
components/prometheus-operator (a custom resource) is kept out of those
renders and checked on its own below.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
import yaml
from deploy_support import (
    DASHBOARD,
    K8S_SCRAPE,
    KUBERNETES_VERSIONS,
    NAMESPACE,
    VARIANTS,
    find,
    is_custom_resource,
    kind_name,
    pod_spec,
    workloads,
)

Docs = list[dict[str, Any]]


def _kubernetes_validate() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate is not installed: it belongs in the dev dependency group")
    return kubernetes_validate


def _strict_failures(docs: Docs, version: str) -> list[str]:
    kv = _kubernetes_validate()
    failures = []
    for doc in docs:
        if is_custom_resource(doc):
            continue
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as exc:
            path = ".".join(str(p) for p in exc.absolute_path)
            failures.append(f"{kind_name(doc)} at {path}: {exc.message}")
        except kv.SchemaNotFoundError as exc:
            failures.append(f"{kind_name(doc)}: {exc.message}")
    return failures


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_document_passes_strict_validation(
    rendered: dict[str, Docs], variant: str, version: str
) -> None:
    docs = rendered[variant]
    crds = [kind_name(d) for d in docs if is_custom_resource(d)]
    assert not crds, f"{variant} renders custom resources {crds}: keep them in a component"
    failures = _strict_failures(docs, version)
    assert not failures, f"{variant} against Kubernetes {version}:\n" + "\n".join(failures)


def test_strict_validation_rejects_an_unknown_field(rendered: dict[str, Docs]) -> None:
    """The check above can fail: a misspelt field in a rendered Deployment is caught."""
    gateway = json.loads(json.dumps(find(rendered["k8s/base"], "Deployment", "gateway")))
    pod_spec(gateway)  # the shape the test relies on
    gateway["spec"]["template"]["spec"]["terminationGracePeriod"] = 90
    assert _strict_failures([gateway], KUBERNETES_VERSIONS[-1])


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_install_is_complete(rendered: dict[str, Docs], variant: str) -> None:
    docs = rendered[variant]
    for kind, name in (
        ("Namespace", NAMESPACE),
        ("StatefulSet", "nats"),
        ("Service", "nats"),
        ("Service", "nats-headless"),
        ("PodDisruptionBudget", "nats"),
        ("Deployment", "gateway"),
        ("Service", "gateway"),
        ("PodDisruptionBudget", "gateway"),
        ("HorizontalPodAutoscaler", "gateway"),
        ("Deployment", "scaler"),
        ("PodDisruptionBudget", "scaler"),
        ("ConfigMap", "scaler-config"),
        ("Deployment", "metrics-watcher"),
        ("DaemonSet", "mig-agent"),
        ("ConfigMap", "migserve-common"),
        ("ConfigMap", "grafana-dashboard-migserve"),
        ("ConfigMap", "prometheus-scrape-migserve"),
    ):
        find(docs, kind, name)
    assert find(docs, "StatefulSet", "nats")["spec"]["replicas"] == 3
    assert find(docs, "Deployment", "scaler")["spec"]["replicas"] == 2
    leftovers = [kind_name(d) for d in docs if d["metadata"]["name"] == "migserve-images"]
    assert not leftovers, "the build-time images ConfigMap must not be deployed"


@pytest.mark.parametrize("variant", VARIANTS)
def test_everything_lives_in_the_migserve_namespace(
    rendered: dict[str, Docs], variant: str
) -> None:
    for doc in rendered[variant]:
        if doc["kind"] == "Namespace":
            continue
        assert doc["metadata"].get("namespace") == NAMESPACE, kind_name(doc)
        for subject in doc.get("subjects", []):
            assert subject.get("namespace") == NAMESPACE, f"{kind_name(doc)} subject {subject}"


def _labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _pods_selected(docs: Docs, selector: Mapping[str, str]) -> list[dict[str, Any]]:
    return [
        w
        for w in workloads(docs)
        if _labels_match(selector, w["spec"]["template"]["metadata"]["labels"])
    ]


@pytest.mark.parametrize("variant", VARIANTS)
def test_selectors_select_and_named_ports_exist(rendered: dict[str, Docs], variant: str) -> None:
    docs = rendered[variant]
    for w in workloads(docs):
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert labels.get("app.kubernetes.io/part-of") == "migserve", kind_name(w)
        assert _labels_match(w["spec"]["selector"]["matchLabels"], labels), kind_name(w)
        for c in pod_spec(w)["containers"]:
            names = {p["name"] for p in c.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                action = c.get(probe, {})
                port = (action.get("httpGet") or action.get("tcpSocket") or {}).get("port")
                if isinstance(port, str):
                    assert port in names, f"{kind_name(w)} {probe} names port {port}"
    for doc in docs:
        if doc["kind"] == "Service":
            pods = _pods_selected(docs, doc["spec"]["selector"])
            assert pods, f"{kind_name(doc)} selects no pods"
            names = {
                p["name"]
                for w in pods
                for c in pod_spec(w)["containers"]
                for p in c.get("ports", [])
            }
            for port in doc["spec"]["ports"]:
                assert port["targetPort"] in names, f"{kind_name(doc)} targets {port['targetPort']}"
        if doc["kind"] == "PodDisruptionBudget":
            assert _pods_selected(docs, doc["spec"]["selector"]["matchLabels"]), kind_name(doc)
        if doc["kind"] == "HorizontalPodAutoscaler":
            target = doc["spec"]["scaleTargetRef"]
            find(docs, target["kind"], target["name"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_least_privilege(rendered: dict[str, Docs], variant: str) -> None:
    docs = rendered[variant]
    cluster_wide = [
        kind_name(d) for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")
    ]
    assert not cluster_wide, f"no cluster-wide RBAC: {cluster_wide}"
    for doc in docs:
        if doc["kind"] == "Role":
            assert doc["metadata"]["name"] == "mig-agent", kind_name(doc)
            assert doc["rules"] == [
                {
                    "apiGroups": [""],
                    "resources": ["pods"],
                    "verbs": ["create", "delete", "get", "list", "watch"],
                }
            ]
    roles = {d["metadata"]["name"] for d in docs if d["kind"] == "Role"}
    for w in workloads(docs):
        spec = pod_spec(w)
        token = spec.get("automountServiceAccountToken", True)
        # only an agent that starts engine Pods talks to the API server
        assert token == ("mig-agent" in roles and w["metadata"]["name"] == "mig-agent"), (
            f"{kind_name(w)} automountServiceAccountToken={token}"
        )
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), kind_name(w)
        for c in spec["containers"]:
            sc = c.get("securityContext", {})
            assert not sc.get("privileged"), f"{kind_name(w)}: never privileged"
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), kind_name(w)
            gpu_agent = w["metadata"]["name"] == "mig-agent" and variant != "k8s/base"
            if gpu_agent:
                assert sc["capabilities"].get("add") == ["SYS_ADMIN"], kind_name(w)
            else:
                assert sc.get("allowPrivilegeEscalation") is False, kind_name(w)
                assert not sc.get("capabilities", {}).get("add"), kind_name(w)
                assert sc.get("readOnlyRootFilesystem") is True, kind_name(w)
                assert spec["securityContext"].get("runAsNonRoot") is True, kind_name(w)


def _env(container: Mapping[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_base_agent_uses_simulated_gpus(rendered: dict[str, Docs]) -> None:
    agent = find(rendered["k8s/base"], "DaemonSet", "mig-agent")
    spec = pod_spec(agent)
    env = _env(spec["containers"][0])
    assert env["MIGSERVE_GPU_BACKEND"] == "simulated"
    assert env["MIGSERVE_RUNTIME"] == "process"
    assert "runtimeClassName" not in spec
    assert not any(k.startswith("NVIDIA_") for k in env)


@pytest.mark.parametrize("variant", ["k8s/overlays/a100", "k8s/overlays/h100"])
def test_gpu_agent_owns_the_mig_gpus_of_its_node(rendered: dict[str, Docs], variant: str) -> None:
    agent = find(rendered[variant], "DaemonSet", "mig-agent")
    spec = pod_spec(agent)
    (container,) = spec["containers"]
    env = _env(container)
    assert env["MIGSERVE_GPU_BACKEND"] == "nvml"
    assert env["MIGSERVE_RUNTIME"] == "kubernetes"
    assert "MIGSERVE_SIM_GPUS" not in env
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert env["NVIDIA_MIG_CONFIG_DEVICES"] == "all"
    assert spec["runtimeClassName"] == "nvidia"
    assert spec["nodeSelector"]["nvidia.com/mig.capable"] == "true"
    assert spec["nodeSelector"]["migserve.io/node"] == "true"
    assert "nvidia.com/gpu.family" in spec["nodeSelector"]
    # sees every GPU through the runtime without claiming one from the device plugin
    resources = container.get("resources", {})
    claimed = [k for part in resources.values() for k in part if k.startswith("nvidia.com/")]
    assert not claimed, f"the agent must not request GPUs: {claimed}"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["state"]["hostPath"]["path"] == "/var/lib/migserve"
    assert "emptyDir" not in volumes["state"]
    tolerated = {t["key"] for t in spec["tolerations"]}
    assert {"migserve.io/node", "nvidia.com/gpu"} <= tolerated


def test_gpu_overlays_differ_in_gpu_family(rendered: dict[str, Docs]) -> None:
    family = {
        variant: pod_spec(find(rendered[variant], "DaemonSet", "mig-agent"))["nodeSelector"][
            "nvidia.com/gpu.family"
        ]
        for variant in ("k8s/overlays/a100", "k8s/overlays/h100")
    }
    assert family == {"k8s/overlays/a100": "ampere", "k8s/overlays/h100": "hopper"}


def test_nats_is_a_three_server_jetstream_cluster(rendered: dict[str, Docs]) -> None:
    docs = rendered["k8s/base"]
    conf = find(docs, "ConfigMap", "nats-config")["data"]["nats.conf"]
    sts = find(docs, "StatefulSet", "nats")
    assert "jetstream" in conf
    routes = [f"nats://nats-{i}.{sts['spec']['serviceName']}:6222" for i in range(3)]
    assert all(route in conf for route in routes), conf
    assert find(docs, "Service", sts["spec"]["serviceName"])["spec"]["clusterIP"] == "None"
    lame_duck = int(conf.split("lame_duck_duration:")[1].split("s")[0])
    assert pod_spec(sts)["terminationGracePeriodSeconds"] > lame_duck
    (container,) = pod_spec(sts)["containers"]
    assert "ldm" in " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
    # docs/deploy.md deletes the volumes by this label on uninstall
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["labels"]["app.kubernetes.io/name"] == "nats"
    common = find(docs, "ConfigMap", "migserve-common")["data"]
    assert common["MIGSERVE_NATS_URL"] == "nats://nats:4222"
    find(docs, "Service", "nats")


def test_monitoring_configmaps_carry_the_files(rendered: dict[str, Docs]) -> None:
    docs = rendered["k8s/base"]
    dashboard = find(docs, "ConfigMap", "grafana-dashboard-migserve")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["migserve.json"]) == json.loads(DASHBOARD.read_text())
    scrape = find(docs, "ConfigMap", "prometheus-scrape-migserve")["data"]["migserve-scrape.yml"]
    assert yaml.safe_load(scrape) == yaml.safe_load(K8S_SCRAPE.read_text())


# The Prometheus Operator component: a custom resource, checked structurally ----------------
_PODMONITOR_SPEC_KEYS = {"selector", "podMetricsEndpoints", "namespaceSelector", "jobLabel"}
_ENDPOINT_KEYS = {"port", "path", "interval", "scrapeTimeout", "honorLabels", "relabelings"}
_SCRAPED_PORTS = {"http", "metrics", "bridge-metrics"}


def test_operator_component_adds_only_a_podmonitor(
    rendered_with_operator: Docs, rendered: dict[str, Docs]
) -> None:
    crs = [d for d in rendered_with_operator if is_custom_resource(d)]
    assert [kind_name(d) for d in crs] == ["PodMonitor/migserve"]
    others = [d for d in rendered_with_operator if not is_custom_resource(d)]
    assert others == rendered["k8s/overlays/h100"]
    (monitor,) = crs
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == NAMESPACE
    spec = monitor["spec"]
    assert set(spec) <= _PODMONITOR_SPEC_KEYS, set(spec) - _PODMONITOR_SPEC_KEYS
    selected = _pods_selected(others, spec["selector"]["matchLabels"])
    assert {w["metadata"]["name"] for w in selected} >= {
        "gateway",
        "scaler",
        "metrics-watcher",
        "mig-agent",
    }
    ports = {p["port"] for p in spec["podMetricsEndpoints"]}
    assert ports == _SCRAPED_PORTS
    for endpoint in spec["podMetricsEndpoints"]:
        assert set(endpoint) <= _ENDPOINT_KEYS, endpoint
        assert endpoint["path"] == "/metrics"
    served = {
        p["name"] for w in selected for c in pod_spec(w)["containers"] for p in c.get("ports", [])
    }
    # bridge-metrics belongs to the engine Pods the agent creates (kubernetes runtime)
    assert ports - {"bridge-metrics"} <= served


def test_plain_scrape_config_keeps_the_same_ports() -> None:
    job = yaml.safe_load(K8S_SCRAPE.read_text())["scrape_configs"][0]
    keep = next(
        r
        for r in job["relabel_configs"]
        if r["source_labels"] == ["__meta_kubernetes_pod_container_port_name"]
    )
    assert set(keep["regex"].split("|")) == _SCRAPED_PORTS
    assert job["kubernetes_sd_configs"][0]["namespaces"]["names"] == [NAMESPACE]
