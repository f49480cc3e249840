"""migserve_shared.permissions: what each NATS role may and may not touch.

Checked by matching the allow lists against concrete subjects with NATS's
own wildcard rules (``*`` one token, ``>`` the rest), so a widened pattern
anywhere fails here; tests/integration/test_nats_auth.py checks the same
against a real server.
"""

from __future__ import annotations

import pytest
from migserve_cli.nats_auth import DOCS_FILE, render_capability_table, replace_docs_table
from migserve_shared import subjects
from migserve_shared.messages import EVENT_KINDS
from migserve_shared.permissions import (
    EVENT_PUBLISHERS,
    NatsUser,
    Role,
    cluster_users,
    default_inbox_prefix,
    event_family,
    event_kinds_of,
    inbox_prefix,
    permissions,
    stack_users,
    subject_matches,
    user,
    user_name,
)

NODES = ("node-1", "gpu/rack-7.b")
JS = "$JS.API"
CMD = subjects.COMMANDS_STREAM


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, a final ``>`` one or more."""
    pat, sub = pattern.split("."), subject.split(".")
    for i, token in enumerate(pat):
        if token == ">":
            return len(sub) > i
        if i >= len(sub) or (token != "*" and token != sub[i]):
            return False
    return len(pat) == len(sub)


def can_publish(u: NatsUser, subject: str) -> bool:
    return any(matches(p, subject) for p in u.permissions.publish)


def can_subscribe(u: NatsUser, subject: str) -> bool:
    return any(matches(p, subject) for p in u.permissions.subscribe)


def command_stream_access(node: str) -> list[str]:
    """Every way to put a command on, or get one off, the command stream."""
    consumer = subjects.agent_consumer(node)
    return [
        subjects.agent_commands(node),
        f"{JS}.STREAM.CREATE.{CMD}",
        f"{JS}.STREAM.UPDATE.{CMD}",
        f"{JS}.STREAM.DELETE.{CMD}",
        f"{JS}.STREAM.PURGE.{CMD}",
        f"{JS}.STREAM.MSG.GET.{CMD}",
        f"{JS}.STREAM.MSG.DELETE.{CMD}",
        f"{JS}.DIRECT.GET.{CMD}",
        f"{JS}.DIRECT.GET.{CMD}.{subjects.agent_commands(node)}",
        f"{JS}.CONSUMER.CREATE.{CMD}",
        f"{JS}.CONSUMER.CREATE.{CMD}.{consumer}",
        f"{JS}.CONSUMER.CREATE.{CMD}.{consumer}.{subjects.agent_commands(node)}",
        f"{JS}.CONSUMER.DURABLE.CREATE.{CMD}.{consumer}",
        f"{JS}.CONSUMER.MSG.NEXT.{CMD}.{consumer}",
        f"$JS.ACK.{CMD}.{consumer}.1.1.1.1.0",
    ]


def test_matches_follows_nats_wildcards() -> None:
    assert matches("a.*.c", "a.b.c") and not matches("a.*.c", "a.b.c.d")
    assert matches("a.>", "a.b.c") and not matches("a.>", "a")
    assert not matches("a.b", "a.b.c") and not matches("a.b.c", "a.b")


def test_every_event_family_has_exactly_one_publisher() -> None:
    families = {event_family(k) for k in EVENT_KINDS}
    missing = families - set(EVENT_PUBLISHERS)
    assert not missing, (
        f"event families {sorted(missing)} have no publisher: add them to "
        "EVENT_PUBLISHERS in migserve_shared/permissions.py (and re-render k8s: "
        "`uv run python -m migserve_cli.nats_auth --write-k8s`)"
    )
    roles = [user(r) for r in Role if r is not Role.ADMIN]
    for kind in EVENT_KINDS:
        subject = subjects.event(kind, "some/model:1")
        allowed = [u.role for u in roles if can_publish(u, subject)]
        assert allowed == [EVENT_PUBLISHERS[event_family(kind)]], kind
        assert kind in event_kinds_of(EVENT_PUBLISHERS[event_family(kind)])


@pytest.mark.parametrize("role", [Role.GATEWAY, Role.WATCHER, Role.BRIDGE])
@pytest.mark.parametrize("node", NODES)
def test_no_service_but_scaler_and_agents_reaches_the_command_stream(role: Role, node: str) -> None:
    u = user(role)
    reachable = [s for s in command_stream_access(node) if can_publish(u, s)]
    assert not reachable, f"{role} may publish {reachable}"
    assert not can_subscribe(u, subjects.agent_commands(node))


def test_only_the_scaler_and_the_admin_send_commands() -> None:
    subject = subjects.agent_commands("node-1")
    senders = [u.role for u in cluster_users() + stack_users(NODES) if can_publish(u, subject)]
    assert set(senders) == {Role.SCALER, Role.ADMIN}


@pytest.mark.parametrize(("mine", "other"), [NODES, NODES[::-1]])
def test_a_node_bound_agent_reaches_only_its_own_commands(mine: str, other: str) -> None:
    agent = user(Role.AGENT, node=mine)
    own_consumer = subjects.agent_consumer(mine)
    assert can_publish(
        agent, f"{JS}.CONSUMER.CREATE.{CMD}.{own_consumer}.{subjects.agent_commands(mine)}"
    )
    assert can_publish(agent, f"{JS}.CONSUMER.MSG.NEXT.{CMD}.{own_consumer}")
    assert can_publish(agent, f"$JS.ACK.{CMD}.{own_consumer}.1.5.5.1700000000.0")
    # creating the stream when it is missing (bootstrap) reads and writes no command
    bootstrap = f"{JS}.STREAM.CREATE.{CMD}"
    reachable = [
        s for s in command_stream_access(other) if s != bootstrap and can_publish(agent, s)
    ]
    assert not reachable, reachable
    # its own consumer name, another node's filter: refused too
    assert not can_publish(
        agent, f"{JS}.CONSUMER.CREATE.{CMD}.{own_consumer}.{subjects.agent_commands(other)}"
    )
    assert not can_publish(agent, f"{JS}.CONSUMER.DURABLE.CREATE.{CMD}.{own_consumer}")
    assert not can_publish(agent, subjects.agent_commands(mine))  # only the scaler sends
    assert can_publish(agent, f"$KV.{subjects.KV_NODES}.{subjects.node_key(mine)}")
    assert not can_publish(agent, f"$KV.{subjects.KV_NODES}.{subjects.node_key(other)}")


def test_the_shared_agent_user_serves_any_node() -> None:
    agent = user(Role.AGENT)
    for node in NODES:
        consumer = subjects.agent_consumer(node)
        filt = subjects.agent_commands(node)
        assert can_publish(agent, f"{JS}.CONSUMER.CREATE.{CMD}.{consumer}.{filt}")
        assert can_publish(agent, f"{JS}.CONSUMER.MSG.NEXT.{CMD}.{consumer}")
        assert not can_publish(agent, subjects.agent_commands(node))
    assert not can_publish(agent, f"{JS}.CONSUMER.CREATE.{CMD}")  # no unfiltered consumer


def test_each_user_reads_only_its_own_inbox() -> None:
    users = stack_users(NODES)
    for u in users:
        if u.role is Role.ADMIN:
            continue
        assert can_subscribe(u, f"{inbox_prefix(u.name)}.abc.1")
        for other in users:
            if other.name != u.name:
                assert not can_subscribe(u, f"{inbox_prefix(other.name)}.abc.1"), (u, other)
        assert not can_subscribe(u, "_INBOX.abc.1")


def test_bridges_answer_only_on_the_gateways_inboxes() -> None:
    bridge = user(Role.BRIDGE)
    inbox_pubs = [p for p in bridge.permissions.publish if p.startswith("_INBOX")]
    assert inbox_pubs == [f"{inbox_prefix('gateway')}.>"]
    assert can_subscribe(bridge, subjects.cancel("job-1"))
    assert not any(can_publish(bridge, subjects.event(k, "x")) for k in EVENT_KINDS)


def test_no_service_may_delete_purge_or_reconfigure_what_it_does_not_own() -> None:
    for u in cluster_users():
        if u.role is Role.ADMIN:
            assert u.permissions.publish == (">",)
            continue
        assert ">" not in u.permissions.publish and f"{JS}.>" not in u.permissions.publish
        for stream in (subjects.JOBS_STREAM, subjects.EVENTS_STREAM, "KV_migserve_models"):
            assert not can_publish(u, f"{JS}.STREAM.DELETE.{stream}")
            assert not can_publish(u, f"{JS}.STREAM.PURGE.{stream}")
            assert can_publish(u, f"{JS}.STREAM.UPDATE.{stream}") == (u.role is Role.SCALER)


def test_writes_go_only_to_the_buckets_a_role_owns() -> None:
    owners = {
        subjects.KV_MODELS: {Role.GATEWAY},
        subjects.KV_NODES: {Role.AGENT},
        subjects.KV_INSTANCES: {Role.AGENT},
        subjects.KV_PLANS: {Role.SCALER},
        subjects.KV_LEADER: {Role.SCALER},
    }
    for bucket, roles in owners.items():
        writers = {u.role for u in cluster_users() if can_publish(u, f"$KV.{bucket}.key-1")} - {
            Role.ADMIN
        }
        assert writers == roles, bucket


def test_user_names_and_inboxes() -> None:
    assert user_name(Role.GATEWAY) == "gateway"
    assert user_name(Role.AGENT) == "agent"
    assert user_name(Role.AGENT, "gpu/rack-7.b") == "agent-gpu_2frack-7_2eb"
    assert default_inbox_prefix("agent-node-1") == "_INBOX.agent-node-1"
    assert default_inbox_prefix("alice.smith") == "_INBOX"  # not one subject token
    assert default_inbox_prefix(None) == "_INBOX"
    with pytest.raises(ValueError, match="only an agent"):
        permissions(Role.GATEWAY, node="node-1")


def test_the_user_lists() -> None:
    local = stack_users(["node-1", "node-2"])
    assert [u.name for u in local] == [
        "gateway", "scaler", "watcher", "bridge", "agent-node-1", "agent-node-2", "admin",
    ]  # fmt: skip
    assert [u.name for u in cluster_users()] == [
        "gateway", "scaler", "watcher", "bridge", "agent", "admin",
    ]  # fmt: skip
    assert [u.name for u in cluster_users(["a", "b"])][4:6] == ["agent-a", "agent-b"]
    for users in (local, cluster_users()):
        for u in users:
            assert len(set(u.permissions.publish)) == len(u.permissions.publish), u.name


def test_the_docs_table_is_the_generated_one() -> None:
    text = DOCS_FILE.read_text()
    assert replace_docs_table(text, render_capability_table()) == text, (
        "docs/security.md's capability table drifted from migserve_shared.permissions: "
        "run `uv run python -m migserve_cli.nats_auth --write-docs`"
    )


def test_subject_matches_agrees_with_the_tests_own_matcher() -> None:
    cases = [
        ("a.*.c", "a.b.c"), ("a.>", "a.b.c"), ("a.>", "a"), ("a.b", "a.b.c"),
        ("*", "a"), (">", "a.b"), ("a.*", "a"), ("$JS.API.>", "$JS.API.INFO"),
    ]  # fmt: skip
    for pattern, subject in cases:
        assert subject_matches(pattern, subject) == matches(pattern, subject), (pattern, subject)
