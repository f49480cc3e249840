"""Every NATS subject, stream, consumer and KV bucket name migserve uses.

No other module spells a subject as a literal. Ids that appear inside subjects
(model ids, node names, instance ids) go through :func:`encode_token` so any
id is subject-safe and two ids never collide.

Subjects
    llm.infer.<model>            inference jobs (JetStream work queue JOBS)
    llm.reply.<...>              (inboxes) token streams back to the gateway
    llm.cancel.<job>             core NATS: cancel a job in flight
    llm.evt.<kind>.<id>          events (JetStream stream EVENTS)
    llm.cmd.agent.<node>         commands to one node's agent (stream COMMANDS)
"""

from __future__ import annotations

from typing import Final

from migserve_shared.ids import encode_token

PREFIX: Final = "llm"

# Streams -------------------------------------------------------------------
JOBS_STREAM: Final = "MIGSERVE_JOBS"
EVENTS_STREAM: Final = "MIGSERVE_EVENTS"
COMMANDS_STREAM: Final = "MIGSERVE_COMMANDS"

JOBS_WILDCARD: Final = f"{PREFIX}.infer.>"
EVENTS_WILDCARD: Final = f"{PREFIX}.evt.>"
COMMANDS_WILDCARD: Final = f"{PREFIX}.cmd.agent.>"
CANCEL_WILDCARD: Final = f"{PREFIX}.cancel.*"

# KV buckets ----------------------------------------------------------------
KV_MODELS: Final = "migserve_models"  # key: model token -> ModelSpec
KV_NODES: Final = "migserve_nodes"  # key: node token -> NodeState
KV_INSTANCES: Final = "migserve_instances"  # key: instance token -> InstanceRecord
KV_PLANS: Final = "migserve_plans"  # key: model token -> Plan
KV_LEADER: Final = "migserve_leader"  # key: "scaler" -> lease

ALL_BUCKETS: Final = (KV_MODELS, KV_NODES, KV_INSTANCES, KV_PLANS, KV_LEADER)

#: key of the scaler's lease in KV_LEADER (migserve_scaler.leader)
SCALER_LEASE_KEY: Final = "scaler"


def model_key(model_id: str) -> str:
    """KV key for a model id in the models and plans buckets."""
    return encode_token(model_id)


def node_key(node: str) -> str:
    """KV key for a node name in the nodes bucket."""
    return encode_token(node)


def instance_key(instance_id: str) -> str:
    """KV key for an instance id in the instances bucket."""
    return encode_token(instance_id)


def infer(model_id: str) -> str:
    """Subject on which jobs for ``model_id`` are published."""
    return f"{PREFIX}.infer.{encode_token(model_id)}"


def jobs_consumer(model_id: str) -> str:
    """Durable pull consumer shared by every instance of ``model_id``."""
    return f"jobs-{encode_token(model_id)}"


def cancel(job_id: str) -> str:
    """Core-NATS subject that cancels job ``job_id`` wherever it runs."""
    return f"{PREFIX}.cancel.{encode_token(job_id)}"


def event(kind: str, subject_id: str) -> str:
    """Event subject: ``llm.evt.<kind>.<token(subject_id)>``.

    ``kind`` is one of the dotted event kinds in ``messages`` (for example
    ``slo.violation``); ``subject_id`` is what the event is about: a model id,
    instance id or node name.
    """
    return f"{PREFIX}.evt.{kind}.{encode_token(subject_id)}"


def events_of_kind(kind: str) -> str:
    """Wildcard for every event of one kind."""
    return f"{PREFIX}.evt.{kind}.*"


def agent_commands(node: str) -> str:
    """Subject of the command stream for the agent on ``node``."""
    return f"{PREFIX}.cmd.agent.{encode_token(node)}"


def agent_consumer(node: str) -> str:
    """Durable consumer name for the agent on ``node``."""
    return f"agent-{encode_token(node)}"
