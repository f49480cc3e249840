"""k8s/: NATS users and permissions are exactly what ``migserve_shared.permissions`` says.

* the authorization block of the nats-config ConfigMap is the rendered one (no
  drift; regenerate with ``uv run python -m migserve_cli.nats_auth --write-k8s``);
* every password it references comes from the Secret ``nats-credentials``;
* every service connects as its own role's user with that user's password;
* the block loads in a real nats-server and enforces the roles.
"""

from __future__ import annotations

import re
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import ROOT, VARIANTS, find, pod_spec
from migserve_cli.nats_auth import (
    K8S_BRIDGE_ENV_SECRET,
    K8S_NATS_FILE,
    K8S_SECRET,
    extract_block,
    k8s_password_var,
    new_password,
    render_k8s_block,
    render_k8s_secrets,
    replace_block,
)
from migserve_cli.nats_server import start_nats_server
from migserve_shared import subjects
from migserve_shared.bus import connect, ensure_jetstream, send_command
from migserve_shared.env import NatsSettings
from migserve_shared.ids import new_id
from migserve_shared.messages import RetireInstance
from migserve_shared.permissions import Role, cluster_users, user_name
from nats.aio.client import Client as NATS

Docs = list[dict[str, Any]]

#: workload -> the NATS users its containers connect as (env prefix -> user)
EXPECTED_USERS = {
    ("Deployment", "gateway"): {"MIGSERVE_NATS": "gateway"},
    ("Deployment", "scaler"): {"MIGSERVE_NATS": "scaler"},
    ("Deployment", "metrics-watcher"): {"MIGSERVE_NATS": "watcher"},
    ("DaemonSet", "mig-agent"): {"MIGSERVE_NATS": "agent", "MIGSERVE_BRIDGE_NATS": "bridge"},
}


def _nats_conf(docs: Docs) -> str:
    return str(find(docs, "ConfigMap", "nats-config")["data"]["nats.conf"])


def _container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod_spec(workload)["containers"] if c["name"] == name)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_nats_config_grants_what_permissions_says(
    rendered: dict[str, Docs], variant: str
) -> None:
    block = extract_block(_nats_conf(rendered[variant]))
    assert block, "no authorization block in the nats-config ConfigMap"
    assert block == render_k8s_block(), (
        "k8s/base/nats.yaml drifted from migserve_shared.permissions: "
        "run `uv run python -m migserve_cli.nats_auth --write-k8s`"
    )


def test_rewriting_the_block_changes_nothing() -> None:
    text = K8S_NATS_FILE.read_text()
    assert replace_block(text, render_k8s_block()) == text


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_password_comes_from_the_secret(rendered: dict[str, Docs], variant: str) -> None:
    docs = rendered[variant]
    referenced = set(re.findall(r"password: \$(\w+)", extract_block(_nats_conf(docs))))
    users = {k8s_password_var(u.name): u.name for u in cluster_users()}
    assert referenced == set(users)
    env = {
        e["name"]: e for e in _container(find(docs, "StatefulSet", "nats"), "nats").get("env", [])
    }
    for var, user in users.items():
        ref = env[var]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == (K8S_SECRET, user), var


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_service_connects_as_its_own_user(rendered: dict[str, Docs], variant: str) -> None:
    docs = rendered[variant]
    for (kind, name), users in EXPECTED_USERS.items():
        workload = find(docs, kind, name)
        spec = pod_spec(workload)
        container = _container(workload, name)
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for prefix, user in users.items():
            assert env[f"{prefix}_USER"] == user, f"{variant} {name} {prefix}_USER"
            path = Path(env[f"{prefix}_PASSWORD_FILE"])
            secret = volumes[mounts[str(path.parent)]]["secret"]
            assert secret["secretName"] == K8S_SECRET, name
            items = {i["path"]: i["key"] for i in secret["items"]}
            assert items[path.name] == user, f"{variant} {name}: {path} holds {items[path.name]}"


@pytest.mark.parametrize("variant", ["k8s/overlays/a100", "k8s/overlays/h100"])
def test_engine_pods_bridges_connect_as_the_bridge_user(
    rendered: dict[str, Docs], variant: str
) -> None:
    agent = _container(find(rendered[variant], "DaemonSet", "mig-agent"), "mig-agent")
    env = {e["name"]: e.get("value") for e in agent["env"]}
    assert env["MIGSERVE_RUNTIME"] == "kubernetes"
    assert env["MIGSERVE_K8S_BRIDGE_ENV_SECRET"] == K8S_BRIDGE_ENV_SECRET


def test_the_secrets_generator_gives_every_user_a_fresh_password() -> None:
    first = list(yaml.safe_load_all(render_k8s_secrets()))
    second = list(yaml.safe_load_all(render_k8s_secrets()))
    creds, bridge_env = first
    assert creds["metadata"]["name"] == K8S_SECRET
    assert set(creds["stringData"]) == {u.name for u in cluster_users()}
    assert bridge_env["metadata"]["name"] == K8S_BRIDGE_ENV_SECRET
    assert bridge_env["stringData"] == {
        "MIGSERVE_NATS_USER": "bridge",
        "MIGSERVE_NATS_PASSWORD": creds["stringData"]["bridge"],
    }
    assert creds["stringData"]["admin"] != second[0]["stringData"]["admin"]
    assert all(re.fullmatch(r"[A-Za-z][A-Za-z0-9]{39}", pw) for pw in creds["stringData"].values())


async def test_the_k8s_block_loads_in_nats_server_and_enforces_the_roles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passwords = {u.name: new_password() for u in cluster_users()}
    for name, password in passwords.items():
        monkeypatch.setenv(k8s_password_var(name), password)  # as the Secret gives them
    config = tmp_path / "nats.conf"
    config.write_text(extract_block(_nats_conf_from_file()))
    server = start_nats_server(tmp_path / "nats", config_file=config)

    async def as_role(stack: AsyncExitStack, role: Role) -> NATS:
        name = user_name(role)
        nc = await connect(NatsSettings(url=server.url, user=name, password=passwords[name]))
        stack.push_async_callback(nc.close)
        return nc

    try:
        async with AsyncExitStack() as stack:
            admin = await as_role(stack, Role.ADMIN)
            await ensure_jetstream(admin.jetstream())
            gateway = await as_role(stack, Role.GATEWAY)
            scaler = await as_role(stack, Role.SCALER)
            cmd = RetireInstance(command_id=new_id(), instance_id="i-1")
            with pytest.raises(TimeoutError):
                await send_command(gateway.jetstream(timeout=0.5), "gpu-1", cmd)
            await send_command(scaler.jetstream(), "gpu-1", cmd)
            info = await admin.jetstream().stream_info(subjects.COMMANDS_STREAM)
            assert info.state.messages == 1
    finally:
        server.stop()


def _nats_conf_from_file() -> str:
    docs = [d for d in yaml.safe_load_all((ROOT / "k8s/base/nats.yaml").read_text()) if d]
    return _nats_conf(docs)
