"""Who may publish and subscribe to what on NATS: the one source of every role's rights.

Each service connects as a NATS user of one role. ``permissions(role)``
derives that role's publish and subscribe allow lists from ``subjects`` (what
it sends and reads) plus the JetStream API subjects those operations use;
everything else is denied by the server. The local stack's nats-server config
and the Kubernetes one are rendered from these lists (cli/migserve_cli/
nats_auth.py), and tests check that neither drifts from them.

Roles and what they may do
    gateway   publish jobs, cancels, demand and model events; write the models
              bucket; read models and instances. Never commands.
    scaler    send commands to any node; publish scale events; consume events;
              write plans and the leader lease; read every bucket.
    watcher   publish metrics and SLO events; read models, instances and the
              jobs consumers' backlog.
    agent     consume ITS node's commands only (``node`` given: the local
              stack; ``node=None``: any node, see docs/security.md); publish
              slice, instance, node and command events; write instances and
              its node's inventory.
    bridge    pull jobs, ack them, answer on the gateway's inboxes; receive
              cancels. Never commands.
    admin     everything (the CLI and operators).

Inboxes: every user receives replies under its own prefix
``inbox_prefix(user)`` (``bus.connect`` sets it), so no user can read
another's replies, including the commands JetStream delivers to an agent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from migserve_shared import subjects
from migserve_shared.ids import encode_token
from migserve_shared.messages import EVENT_KINDS

JS_API: Final = "$JS.API"
JS_ACK: Final = "$JS.ACK"
JS_FLOW_CONTROL: Final = "$JS.FC"
DEFAULT_INBOX: Final = "_INBOX"
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")


class Role(StrEnum):
    GATEWAY = "gateway"
    SCALER = "scaler"
    WATCHER = "watcher"
    AGENT = "agent"
    BRIDGE = "bridge"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Permissions:
    """Subjects a user may publish to and subscribe to (NATS wildcards allowed)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NatsUser:
    """One NATS user: its name, role and rights (the password lives elsewhere)."""

    name: str
    role: Role
    permissions: Permissions
    node: str | None = None


#: event families (the first token of a kind) and the role that publishes them
EVENT_PUBLISHERS: Final[Mapping[str, Role]] = {
    "model": Role.GATEWAY,
    "demand": Role.GATEWAY,
    "metrics": Role.WATCHER,
    "slo": Role.WATCHER,
    "scale": Role.SCALER,
    "slice": Role.AGENT,
    "instance": Role.AGENT,
    "node": Role.AGENT,
    "command": Role.AGENT,
}

#: roles that submit jobs and so receive job replies from bridges on their inboxes
JOB_SUBMITTERS: Final = (Role.GATEWAY,)

STREAMS: Final = (subjects.JOBS_STREAM, subjects.EVENTS_STREAM, subjects.COMMANDS_STREAM)


def user_name(role: Role, node: str | None = None) -> str:
    """The NATS user of ``role``; an agent bound to one node is ``agent-<token(node)>``."""
    if role is Role.AGENT and node is not None:
        return f"agent-{encode_token(node)}"
    return role.value


def inbox_prefix(user: str) -> str:
    """Where ``user`` receives replies: ``_INBOX.<user>`` (its only subscribable inbox)."""
    return f"{DEFAULT_INBOX}.{user}"


def default_inbox_prefix(user: str | None) -> str:
    """The inbox prefix a client of ``user`` uses unless told otherwise: its own
    (``inbox_prefix(user)``) when the name is one subject token, else ``_INBOX``."""
    if user and _TOKEN.fullmatch(user):
        return inbox_prefix(user)
    return DEFAULT_INBOX


def kv_stream(bucket: str) -> str:
    """The JetStream stream that holds a KV bucket."""
    return f"KV_{bucket}"


def event_family(kind: str) -> str:
    return kind.split(".", 1)[0]


def event_kinds_of(role: Role) -> tuple[str, ...]:
    """The event kinds ``role`` may publish."""
    return tuple(k for k in EVENT_KINDS if EVENT_PUBLISHERS.get(event_family(k)) is role)


# Building blocks --------------------------------------------------------------------
def _bootstrap(*, create: Iterable[str], update: bool = False) -> list[str]:
    """``bus.ensure_jetstream`` and ``bus.open_buckets``: read every stream and
    bucket, create the missing ones in ``create`` (a create cannot change an
    existing stream), update a stream whose settings changed (scaler only)."""
    streams = [*STREAMS, *(kv_stream(b) for b in subjects.ALL_BUCKETS)]
    out = [f"{JS_API}.INFO"]
    out += [f"{JS_API}.STREAM.INFO.{s}" for s in streams]
    out += [f"{JS_API}.STREAM.CREATE.{s}" for s in create]
    if update:
        out += [f"{JS_API}.STREAM.UPDATE.{s}" for s in streams]
    return out


def _all_but_commands() -> list[str]:
    return [
        subjects.JOBS_STREAM,
        subjects.EVENTS_STREAM,
        *(kv_stream(b) for b in subjects.ALL_BUCKETS),
    ]


def _everything() -> list[str]:
    return [*STREAMS, *(kv_stream(b) for b in subjects.ALL_BUCKETS)]


def _kv_read(bucket: str) -> list[str]:
    """Get a key (stream get; direct get for buckets made with ``direct``) and
    watch or list the bucket (an ordered push consumer: create, info, flow control)."""
    stream = kv_stream(bucket)
    return [
        f"{JS_API}.DIRECT.GET.{stream}",
        f"{JS_API}.DIRECT.GET.{stream}.>",
        f"{JS_API}.STREAM.MSG.GET.{stream}",
        f"{JS_API}.CONSUMER.CREATE.{stream}",
        f"{JS_API}.CONSUMER.CREATE.{stream}.>",
        f"{JS_API}.CONSUMER.INFO.{stream}.*",
        f"{JS_FLOW_CONTROL}.{stream}.>",
    ]


def _kv_write(bucket: str, key: str = ">") -> list[str]:
    return [f"$KV.{bucket}.{key}"]


def _events(role: Role) -> list[str]:
    families = sorted({event_family(k) for k in event_kinds_of(role)})
    return [f"{subjects.PREFIX}.evt.{family}.>" for family in families]


def _pull_consumer(stream: str, consumer: str, *, create: Sequence[str]) -> list[str]:
    """Create (``create`` lists the allowed create subjects), bind, fetch and ack."""
    return [
        *create,
        f"{JS_API}.CONSUMER.INFO.{stream}.{consumer}",
        f"{JS_API}.CONSUMER.MSG.NEXT.{stream}.{consumer}",
        f"{JS_ACK}.{stream}.{consumer}.>",
    ]


def _agent_commands(node: str | None) -> list[str]:
    """An agent's durable command consumer. The create subject carries the
    filter (``$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>``, which the
    server checks against the request), so a node-bound agent can create only
    its own consumer filtered to its own commands."""
    stream = subjects.COMMANDS_STREAM
    if node is None:
        consumer = "*"
        filt = f"{subjects.PREFIX}.cmd.agent.*"
    else:
        consumer = subjects.agent_consumer(node)
        filt = subjects.agent_commands(node)
    create = [f"{JS_API}.CONSUMER.CREATE.{stream}.{consumer}.{filt}"]
    return _pull_consumer(stream, consumer, create=create)


# Roles ------------------------------------------------------------------------------
def permissions(role: Role, *, node: str | None = None) -> Permissions:
    """The allow lists of ``role``; ``node`` binds an agent to one node's commands."""
    if node is not None and role is not Role.AGENT:
        raise ValueError(f"only an agent is bound to a node, not a {role}")
    inbox = f"{inbox_prefix(user_name(role, node))}.>"
    pub: list[str]
    sub: list[str] = [inbox]
    if role is Role.ADMIN:
        return Permissions(publish=(">",), subscribe=(">",))
    if role is Role.GATEWAY:
        pub = _bootstrap(create=_all_but_commands())
        pub += [subjects.JOBS_WILDCARD, subjects.CANCEL_WILDCARD, *_events(role)]
        pub += _kv_read(subjects.KV_MODELS) + _kv_write(subjects.KV_MODELS)
        pub += _kv_read(subjects.KV_INSTANCES)
    elif role is Role.SCALER:
        pub = _bootstrap(create=_everything(), update=True)
        pub += [subjects.COMMANDS_WILDCARD, *_events(role)]
        events = subjects.EVENTS_STREAM
        pub += _pull_consumer(
            events,
            "*",
            create=[
                f"{JS_API}.CONSUMER.CREATE.{events}.>",
                f"{JS_API}.CONSUMER.DURABLE.CREATE.{events}.*",
            ],
        )
        for bucket in subjects.ALL_BUCKETS:
            pub += _kv_read(bucket)
        pub += _kv_write(subjects.KV_PLANS) + _kv_write(subjects.KV_LEADER)
    elif role is Role.WATCHER:
        pub = _bootstrap(create=_all_but_commands())
        pub += _events(role)
        pub += [f"{JS_API}.CONSUMER.INFO.{subjects.JOBS_STREAM}.*"]
        pub += _kv_read(subjects.KV_MODELS) + _kv_read(subjects.KV_INSTANCES)
    elif role is Role.AGENT:
        pub = _bootstrap(create=_everything())
        pub += _events(role) + _agent_commands(node)
        pub += _kv_read(subjects.KV_INSTANCES) + _kv_write(subjects.KV_INSTANCES)
        pub += _kv_read(subjects.KV_NODES)
        pub += _kv_write(subjects.KV_NODES, "*" if node is None else subjects.node_key(node))
    elif role is Role.BRIDGE:
        jobs = subjects.JOBS_STREAM
        pub = _bootstrap(create=_all_but_commands())
        pub += _pull_consumer(
            jobs, "*", create=[f"{JS_API}.CONSUMER.CREATE.{jobs}.*.{subjects.PREFIX}.infer.*"]
        )
        pub += [f"{inbox_prefix(user_name(r))}.>" for r in JOB_SUBMITTERS]
        sub += [subjects.CANCEL_WILDCARD]
    else:  # pragma: no cover - every Role is handled above
        raise ValueError(f"unknown role {role!r}")
    return Permissions(publish=tuple(_unique(pub)), subscribe=tuple(_unique(sub)))


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS matching: ``*`` stands for one token, a final ``>`` for one or more."""
    pat, sub = pattern.split("."), subject.split(".")
    for i, token in enumerate(pat):
        if token == ">":
            return len(sub) > i
        if i >= len(sub) or (token != "*" and token != sub[i]):
            return False
    return len(pat) == len(sub)


def may_publish(perms: Permissions, subject: str) -> bool:
    return any(subject_matches(p, subject) for p in perms.publish)


def may_subscribe(perms: Permissions, subject: str) -> bool:
    return any(subject_matches(p, subject) for p in perms.subscribe)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def user(role: Role, *, node: str | None = None) -> NatsUser:
    return NatsUser(
        name=user_name(role, node), role=role, permissions=permissions(role, node=node), node=node
    )


SERVICE_ROLES: Final = (Role.GATEWAY, Role.SCALER, Role.WATCHER, Role.BRIDGE)


def stack_users(nodes: Sequence[str]) -> list[NatsUser]:
    """The local stack's users: one per service role, one agent per node, admin."""
    users = [user(role) for role in SERVICE_ROLES]
    users += [user(Role.AGENT, node=node) for node in nodes]
    return [*users, user(Role.ADMIN)]


def cluster_users(agent_nodes: Sequence[str] | None = None) -> list[NatsUser]:
    """Kubernetes' users: one per role. Nodes come and go there, so agents share
    one ``agent`` user unless ``agent_nodes`` lists them (one user each)."""
    users = [user(role) for role in SERVICE_ROLES]
    if agent_nodes is None:
        users.append(user(Role.AGENT))
    else:
        users += [user(Role.AGENT, node=node) for node in agent_nodes]
    return [*users, user(Role.ADMIN)]
