"""Every message migserve puts on the wire or in a KV bucket, defined once.

Messages are frozen msgspec Structs, JSON on the wire (readable in
``nats sub``), grouped in tagged unions: events by ``kind``, commands and job
replies by ``type``. Every field added later must have a default so old and
new services can talk during a rollout. Decode with the ``decode_*``
functions: they raise ``BadMessageError`` with the reason on bad input.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Final, Generic, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct, field

from migserve_shared.errors import BadMessageError, ErrorCode
from migserve_shared.ids import new_id

# Constrained scalar types ---------------------------------------------------
Id = Annotated[str, Meta(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$")]
ModelId = Annotated[
    str, Meta(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$")
]
NonNegInt = Annotated[int, Meta(ge=0)]
PosInt = Annotated[int, Meta(ge=1)]
PosFloat = Annotated[float, Meta(gt=0)]
NonNegFloat = Annotated[float, Meta(ge=0)]
MemSlice = Annotated[int, Meta(ge=0, le=7)]

EngineKind = Literal["sim", "llamacpp", "tgi", "vllm"]
InstanceState = Literal["starting", "ready", "draining", "stopped", "failed"]


def now() -> float:
    """Wall-clock time in seconds, as carried in messages."""
    return time.time()


# Registry --------------------------------------------------------------------
class ModelSpec(Struct, frozen=True, kw_only=True):
    """A model that migserve may serve, and its policy (the models KV bucket)."""

    model_id: ModelId
    engine: EngineKind = "sim"
    #: memory the engine needs on a slice: weights plus KV-cache headroom
    memory_mb: PosInt
    #: mean time per output token the model must stay under
    tpot_slo_ms: PosFloat
    min_profile: str | None = None
    max_profile: str | None = None
    min_replicas: NonNegInt = 0
    max_replicas: PosInt = 4
    #: where the engine loads the model from (a path or hub id); default model_id
    source: str | None = None
    engine_args: dict[str, str] = field(default_factory=dict)
    registered_at: float = 0.0
    #: on an SLO violation: a bigger slice first ("vertical") or another replica first
    #: ("horizontal"); either falls back to the other at its limit
    scaling: Literal["vertical", "horizontal"] = "vertical"
    #: with min_replicas 0: retire every replica after this many idle seconds (0: never)
    idle_to_zero_s: NonNegFloat = 0.0


# Inference jobs ---------------------------------------------------------------
class ChatMessage(Struct, frozen=True):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class SamplingParams(Struct, frozen=True, kw_only=True):
    max_tokens: PosInt = 256
    temperature: NonNegFloat | None = None
    top_p: Annotated[float, Meta(gt=0, le=1)] | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)


class InferenceJob(Struct, frozen=True, kw_only=True):
    """One inference request, published on ``subjects.infer(model)``.

    Tokens stream back as ``JobReply`` messages to ``reply_to``; the bridge
    drops the job with a TIMEOUT error if it is taken after ``deadline``.
    """

    job_id: Id
    model: ModelId
    api: Literal["chat", "completion"] = "chat"
    messages: list[ChatMessage] = field(default_factory=list)
    prompt: str = ""
    params: SamplingParams = field(default_factory=SamplingParams)
    reply_to: Id
    deadline: float
    trace_id: str = ""
    request_id: str = ""
    traceparent: str = ""
    created: float = 0.0
    #: instances that already failed this job before its first token
    attempts: NonNegInt = 0


class _Reply(Struct, frozen=True, kw_only=True, tag_field="type"):
    pass


class JobAccepted(_Reply, tag="accepted", frozen=True, kw_only=True):
    """A bridge took the job; the first token follows."""

    instance_id: str
    node: str = ""


class TokenChunk(_Reply, tag="token", frozen=True, kw_only=True):
    """Tokens ``index`` .. ``index + count - 1`` of the answer, in one message.

    Replies are core NATS messages: across a NATS outage some can be lost
    while later ones arrive. ``count`` lets the receiver see such a gap (the
    next chunk's ``index`` must be this one's ``index + count``); 0 means the
    sender did not say (an older bridge) and nothing is checked.
    """

    text: str
    index: NonNegInt = 0
    count: NonNegInt = 0


class JobEnd(_Reply, tag="end", frozen=True, kw_only=True):
    """The explicit end marker of a token stream."""

    finish_reason: Literal["stop", "length", "cancelled"] = "stop"
    prompt_tokens: NonNegInt = 0
    completion_tokens: NonNegInt = 0
    instance_id: str = ""
    #: how many tokens the bridge sent in chunks (None: not said): a receiver
    #: that got fewer lost some
    tokens_sent: NonNegInt | None = None


class JobError(_Reply, tag="error", frozen=True, kw_only=True):
    """A typed error reply; ``retryable`` when no token was sent yet."""

    code: ErrorCode
    message: str
    retryable: bool = False
    instance_id: str = ""


JobReply = JobAccepted | TokenChunk | JobEnd | JobError


# Cluster state (KV values) ------------------------------------------------------
class SliceState(Struct, frozen=True, kw_only=True):
    """One MIG GPU instance (with its one compute instance) on a GPU."""

    gi_id: NonNegInt
    profile_id: NonNegInt
    profile: str
    start: MemSlice
    uuid: str = ""
    #: instance using this slice, if any
    instance_id: str | None = None
    #: True when migserve created the slice (only those may be destroyed)
    ours: bool = True
    memory_mb: NonNegInt = 0
    sm_count: NonNegInt = 0


class GpuState(Struct, frozen=True, kw_only=True):
    index: NonNegInt
    uuid: str
    model: str
    mig_enabled: bool = True
    memory_mb: NonNegInt = 0
    slices: list[SliceState] = field(default_factory=list)


class NodeState(Struct, frozen=True, kw_only=True):
    """A node's actual state as its agent last saw it (the nodes KV bucket)."""

    node: Id
    gpus: list[GpuState] = field(default_factory=list)
    gpu_backend: str = "simulated"
    runtime: str = "process"
    engines: list[EngineKind] = field(default_factory=list)
    agent_id: str = ""
    updated: float = 0.0


class InstanceRecord(Struct, frozen=True, kw_only=True):
    """One engine instance on one slice (the instances KV bucket, key instance_id)."""

    instance_id: Id
    model_id: ModelId
    node: Id
    gpu_index: NonNegInt
    gpu_uuid: str = ""
    profile: str
    start: MemSlice
    slice_uuid: str = ""
    engine: EngineKind = "sim"
    state: InstanceState = "starting"
    slots: PosInt = 1
    engine_url: str = ""
    bridge_metrics_url: str = ""
    engine_pid: int | None = None
    bridge_pid: int | None = None
    plan_id: str = ""
    trace_id: str = ""
    created: float = 0.0
    updated: float = 0.0
    reason: str = ""


PlanAction = Literal["create", "scale_up", "scale_down", "scale_out", "scale_in", "move", "remove"]
PlanStatus = Literal["pending", "running", "done", "failed", "rolled_back"]


class PlanStep(Struct, frozen=True, kw_only=True):
    """One command of a plan and what became of it."""

    op: Literal["create", "retire"]
    command_id: Id
    instance_id: Id
    node: Id
    gpu_index: NonNegInt = 0
    profile: str = ""
    start: MemSlice = 0
    status: Literal["pending", "sent", "done", "failed"] = "pending"
    reason: str = ""
    #: how many times the step's command was sent (resends and retries included)
    attempts: NonNegInt = 0
    #: when the command was last sent, and first sent
    sent_at: float = 0.0
    first_sent_at: float = 0.0
    #: the model whose instance the step creates or retires ("": the plan's model);
    #: another model's when the plan moves its instance to make room
    model_id: str = ""
    #: for a create: the instance the new one replaces (retired by a later step)
    replaces: str = ""
    #: a step added to undo the plan after a failure
    rollback: bool = False


class Plan(Struct, frozen=True, kw_only=True):
    """The scaler's plan for one model (the plans KV bucket, key model token)."""

    plan_id: Id
    model_id: ModelId
    action: PlanAction
    reason: str = ""
    status: PlanStatus = "pending"
    steps: list[PlanStep] = field(default_factory=list)
    trace_id: str = ""
    created: float = 0.0
    updated: float = 0.0
    #: the old instance is retired before its replacement is made (nothing else fits)
    break_before_make: bool = False


# Commands (llm.cmd.agent.<node>) ---------------------------------------------------
class _Command(Struct, frozen=True, kw_only=True, tag_field="type"):
    command_id: Id
    trace_id: str = ""
    plan_id: str = ""
    issued_at: float = 0.0


class CreateInstance(_Command, tag="create_instance", frozen=True, kw_only=True):
    """Create a slice of ``profile`` at ``start`` on GPU ``gpu_index``, start an engine."""

    instance_id: Id
    model: ModelSpec
    gpu_index: NonNegInt
    profile: str
    start: MemSlice


class RetireInstance(_Command, tag="retire_instance", frozen=True, kw_only=True):
    """Drain and stop an instance, then destroy its slice."""

    instance_id: Id
    drain_timeout_s: PosFloat = 30.0


Command = CreateInstance | RetireInstance


# Events (llm.evt.<kind>.<id>) --------------------------------------------------------
class _Event(Struct, frozen=True, kw_only=True, tag_field="kind"):
    event_id: str = field(default_factory=lambda: new_id("evt-"))
    time: float = field(default_factory=now)
    source: str = ""
    trace_id: str = ""


class ModelRegistered(_Event, tag="model.registered", frozen=True, kw_only=True):
    model: ModelSpec


class ModelRemoved(_Event, tag="model.removed", frozen=True, kw_only=True):
    model_id: ModelId


class Demand(_Event, tag="demand", frozen=True, kw_only=True):
    """Requests for ``model_id`` are waiting and no instance is ready."""

    model_id: ModelId
    waiting: NonNegInt = 1
    request_id: str = ""


class SloEvidence(Struct, frozen=True, kw_only=True):
    tpot_ms: float | None = None
    slo_ms: float = 0.0
    window_s: float = 0.0
    windows: NonNegInt = 0
    tokens: NonNegInt = 0
    in_flight: NonNegInt = 0
    waiting: NonNegInt = 0
    request_rate: float = 0.0
    instances: list[str] = field(default_factory=list)
    source: str = ""
    query: str = ""
    #: the engines' own TPOT (cross-check of ``tpot_ms``, which comes from the
    #: bridges' inter-token histograms); None when the engines export none
    engine_tpot_ms: float | None = None


class MetricsSnapshot(_Event, tag="metrics.snapshot", frozen=True, kw_only=True):
    """Per-model TPOT and load over the last window (None: no completed work)."""

    model_id: ModelId
    evidence: SloEvidence


class SloViolation(_Event, tag="slo.violation", frozen=True, kw_only=True):
    model_id: ModelId
    evidence: SloEvidence


class SloRecovered(_Event, tag="slo.recovered", frozen=True, kw_only=True):
    model_id: ModelId
    evidence: SloEvidence


class SloUnderload(_Event, tag="slo.underload", frozen=True, kw_only=True):
    model_id: ModelId
    evidence: SloEvidence


class ScaleDecided(_Event, tag="scale.decided", frozen=True, kw_only=True):
    model_id: ModelId
    plan_id: str
    action: PlanAction
    reason: str = ""
    node: str = ""
    gpu_index: NonNegInt = 0
    profile: str = ""
    start: MemSlice = 0
    instance_id: str = ""
    #: the plan retires the old instance before its replacement is ready
    break_before_make: bool = False


class ScaleFailed(_Event, tag="scale.failed", frozen=True, kw_only=True):
    model_id: ModelId
    plan_id: str = ""
    code: ErrorCode = ErrorCode.INTERNAL
    reason: str = ""


class _SliceEvent(_Event, frozen=True, kw_only=True):
    node: str
    gpu_index: NonNegInt
    profile: str
    start: MemSlice
    slice_uuid: str = ""
    instance_id: str = ""


class SliceCreated(_SliceEvent, tag="slice.created", frozen=True, kw_only=True):
    pass


class SliceDestroyed(_SliceEvent, tag="slice.destroyed", frozen=True, kw_only=True):
    reason: str = ""


class _InstanceEvent(_Event, frozen=True, kw_only=True):
    instance_id: str
    model_id: ModelId
    node: str
    profile: str = ""
    reason: str = ""


class InstanceStarting(_InstanceEvent, tag="instance.starting", frozen=True, kw_only=True):
    pass


class InstanceReady(_InstanceEvent, tag="instance.ready", frozen=True, kw_only=True):
    startup_s: NonNegFloat = 0.0


class InstanceDraining(_InstanceEvent, tag="instance.draining", frozen=True, kw_only=True):
    pass


class InstanceStopped(_InstanceEvent, tag="instance.stopped", frozen=True, kw_only=True):
    pass


class InstanceFailed(_InstanceEvent, tag="instance.failed", frozen=True, kw_only=True):
    code: ErrorCode = ErrorCode.ENGINE_FAILED


class NodeInventory(_Event, tag="node.inventory", frozen=True, kw_only=True):
    node: NodeState


class CommandDone(_Event, tag="command.done", frozen=True, kw_only=True):
    """An agent finished a command (also sent again for a duplicate)."""

    command_id: str
    node: str
    instance_id: str = ""
    duplicate: bool = False


class CommandFailed(_Event, tag="command.failed", frozen=True, kw_only=True):
    command_id: str
    node: str
    code: ErrorCode = ErrorCode.INTERNAL
    reason: str = ""
    instance_id: str = ""


Event = (
    ModelRegistered
    | ModelRemoved
    | Demand
    | MetricsSnapshot
    | SloViolation
    | SloRecovered
    | SloUnderload
    | ScaleDecided
    | ScaleFailed
    | SliceCreated
    | SliceDestroyed
    | InstanceStarting
    | InstanceReady
    | InstanceDraining
    | InstanceStopped
    | InstanceFailed
    | NodeInventory
    | CommandDone
    | CommandFailed
)

EVENT_KINDS: Final[tuple[str, ...]] = tuple(str(t.__struct_config__.tag) for t in Event.__args__)


def event_kind(evt: Event) -> str:
    """The dotted kind of an event, e.g. ``slo.violation``."""
    return str(type(evt).__struct_config__.tag)


def event_subject_id(evt: Event) -> str:
    """What an event is about, for its subject: a model, instance, node or command."""
    for attr in ("instance_id", "model_id", "command_id"):
        value = getattr(evt, attr, "")
        if value:
            return str(value)
    if isinstance(evt, ModelRegistered):
        return evt.model.model_id
    if isinstance(evt, NodeInventory):
        return evt.node.node
    return evt.source or "unknown"


# Codec ----------------------------------------------------------------------------
_encoder = msgspec.json.Encoder()
T = TypeVar("T")


def encode(msg: Any) -> bytes:
    """JSON bytes of any message."""
    return _encoder.encode(msg)


class _Decoder(Generic[T]):
    """A reused msgspec decoder that raises BadMessageError with the reason."""

    def __init__(self, typ: Any, what: str) -> None:
        self._dec: msgspec.json.Decoder[T] = msgspec.json.Decoder(typ)
        self._what = what

    def __call__(self, data: bytes | str) -> T:
        try:
            return self._dec.decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise BadMessageError(f"bad {self._what}: {exc}") from exc
        except RecursionError as exc:  # JSON nested deeper than msgspec follows
            raise BadMessageError(f"bad {self._what}: nested too deeply") from exc
        except UnicodeError as exc:  # lone surrogates in a str; bad UTF-8 inside a tag
            raise BadMessageError(f"bad {self._what}: not valid UTF-8 / Unicode text") from exc


decode_event: _Decoder[Event] = _Decoder(Event, "event")
decode_command: _Decoder[Command] = _Decoder(Command, "command")
decode_job: _Decoder[InferenceJob] = _Decoder(InferenceJob, "inference job")
decode_reply: _Decoder[JobReply] = _Decoder(JobReply, "job reply")
decode_model_spec: _Decoder[ModelSpec] = _Decoder(ModelSpec, "model spec")
decode_node_state: _Decoder[NodeState] = _Decoder(NodeState, "node state")
decode_instance: _Decoder[InstanceRecord] = _Decoder(InstanceRecord, "instance record")
decode_plan: _Decoder[Plan] = _Decoder(Plan, "plan")
