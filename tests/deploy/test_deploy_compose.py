"""docker-compose.yml: `docker compose config` accepts it, and it fits the code.

No Docker engine is needed: `config` only parses, validates against the
Compose specification and normalises the file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from deploy_support import (
    COMPOSE_FILE,
    COMPOSE_PROMETHEUS,
    compose_command,
    run,
    settings_builder,
)
from migserve_agent.bridge.settings import settings_from_args

_DURATION = re.compile(r"^(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?$")


def _seconds(duration: str) -> float:
    match = _DURATION.match(duration)
    assert match and duration, f"not a duration: {duration!r}"
    return int(match.group(1) or 0) * 60 + float(match.group(2) or 0)


def test_compose_config_passes() -> None:
    run([*compose_command(), "-f", str(COMPOSE_FILE), "config", "--quiet"])


def test_compose_config_rejects_a_broken_file(tmp_path: Path) -> None:
    """The check above can fail: an unknown key in a service is refused."""
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    data["services"]["gateway"]["restart_policy"] = "always"
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(data))
    import subprocess

    proc = subprocess.run(
        [*compose_command(), "-f", str(broken), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert "restart_policy" in proc.stderr


def test_the_stack_is_complete(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= {
        "nats",
        "prometheus",
        "gateway",
        "scaler",
        "scaler-2",
        "metrics-watcher",
        "mig-agent",
        "llamacpp",
        "llamacpp-bridge",
    }
    assert "-js" in services["nats"]["command"]
    agent = services["mig-agent"]["environment"]
    assert agent["MIGSERVE_GPU_BACKEND"] == "simulated"
    for name in (
        "gateway",
        "scaler",
        "scaler-2",
        "metrics-watcher",
        "mig-agent",
        "llamacpp-bridge",
    ):
        assert services[name]["environment"]["MIGSERVE_NATS_URL"] == "nats://nats:4222", name
        assert services[name]["depends_on"]["nats"]["condition"] == "service_healthy", name


def test_two_scalers_with_their_own_ids(compose: dict[str, Any]) -> None:
    """Leader election tells replicas apart by MIGSERVE_SCALER_ID: each needs its own."""
    scalers = [
        settings_builder("scaler")(svc["environment"])
        for svc in compose["services"].values()
        if svc["image"] == compose["services"]["scaler"]["image"]
    ]
    assert len(scalers) == 2
    assert len({s.scaler_id for s in scalers}) == 2, [s.scaler_id for s in scalers]
    assert len({s.lease_ttl_s for s in scalers}) == 1


def test_published_ports_stay_on_loopback(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port}"


def test_stop_grace_outlasts_each_drain(compose: dict[str, Any]) -> None:
    services = compose["services"]
    gateway = settings_builder("gateway")(services["gateway"]["environment"])
    assert _seconds(services["gateway"]["stop_grace_period"]) > gateway.shutdown_grace_s
    agent = settings_builder("mig-agent")(services["mig-agent"]["environment"])
    assert _seconds(services["mig-agent"]["stop_grace_period"]) > agent.shutdown_timeout_s
    bridge = _bridge_settings(services["llamacpp-bridge"])
    assert _seconds(services["llamacpp-bridge"]["stop_grace_period"]) > bridge.drain_timeout_s


def _bridge_settings(svc: dict[str, Any]) -> Any:
    assert svc["entrypoint"][-1] == "migserve-bridge"
    return settings_from_args(svc["command"], svc["environment"])


def test_llamacpp_bridge_points_at_the_engine(compose: dict[str, Any]) -> None:
    services = compose["services"]
    bridge = _bridge_settings(services["llamacpp-bridge"])
    engine = services["llamacpp"]["command"]
    port = engine[engine.index("--port") + 1]
    assert bridge.engine_url == f"http://llamacpp:{port}"
    assert bridge.engine_kind == "llamacpp"
    assert "--metrics" in engine
    assert bridge.slots == int(engine[engine.index("-np") + 1])
    model = engine[engine.index("-m") + 1]
    fetch = (Path(__file__).parents[2] / "deploy/compose/fetch-model.py").read_text()
    assert f'TARGET = pathlib.Path("{model}")' in fetch


def _listen_port(name: str, svc: dict[str, Any]) -> int:
    """The port a compose service serves /metrics on, from the code's own settings."""
    env = svc.get("environment") or {}
    if name == "gateway":
        return int(settings_builder("gateway")(env).port)
    if name in ("scaler", "scaler-2"):
        return int(settings_builder("scaler")(env).metrics_port)
    if name in ("metrics-watcher", "mig-agent"):
        return int(settings_builder(name)(env).metrics_port)
    if name == "llamacpp-bridge":
        return int(_bridge_settings(svc).metrics_port)
    if name == "llamacpp":
        return int(svc["command"][svc["command"].index("--port") + 1])
    raise AssertionError(f"prometheus scrapes {name}, which serves no metrics")


def test_prometheus_scrapes_what_each_service_serves(compose: dict[str, Any]) -> None:
    config = yaml.safe_load(COMPOSE_PROMETHEUS.read_text())
    services = compose["services"]
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    expected = {
        f"{name}:{_listen_port(name, services[name])}"
        for name in (
            "gateway",
            "scaler",
            "scaler-2",
            "metrics-watcher",
            "mig-agent",
            "llamacpp",
            "llamacpp-bridge",
        )
    }
    assert targets == expected
    mounts = {v["target"]: v["source"] for v in services["prometheus"]["volumes"]}
    assert Path(mounts["/etc/prometheus/prometheus.yml"]) == COMPOSE_PROMETHEUS
