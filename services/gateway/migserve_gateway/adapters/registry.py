"""The model registry store: model specs in the models KV bucket, plus their events.

Writes go to KV first (``create`` is an atomic claim, so two gateways cannot
both register one model without ``replace``), then a ``ModelRegistered`` /
``ModelRemoved`` event is published, and the local live view is updated at
once so the next request on this gateway already sees the change.
"""

from __future__ import annotations

import logging
from typing import Protocol

from migserve_gateway.core.view import LiveView
from migserve_gateway.metrics import GatewayMetrics
from migserve_shared import subjects
from migserve_shared.bus import EventPublisher, kv_values
from migserve_shared.errors import BadMessageError, MigserveError
from migserve_shared.messages import (
    ModelRegistered,
    ModelRemoved,
    ModelSpec,
    decode_model_spec,
    encode,
)
from nats.errors import Error as NatsError
from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

log = logging.getLogger(__name__)


class ModelExistsError(MigserveError):
    """A model with this id is already registered (and replace was not asked for)."""


class RegistryUnavailableError(MigserveError):
    """The models bucket or the event stream could not be reached."""


class ModelRegistry(Protocol):
    """Where model specs are stored."""

    async def register(self, spec: ModelSpec, *, replace: bool, trace_id: str) -> bool:
        """Store ``spec``; True when it is new, False when it replaced one."""
        ...

    async def get(self, model_id: str) -> ModelSpec | None: ...

    async def list(self) -> list[ModelSpec]: ...

    async def remove(self, model_id: str, *, trace_id: str) -> bool:
        """Delete a model; False when there was none."""
        ...


class KvModelRegistry:
    """``ModelRegistry`` on the models KV bucket."""

    def __init__(
        self, *, kv: KeyValue, events: EventPublisher, view: LiveView, metrics: GatewayMetrics
    ) -> None:
        self._kv = kv
        self._events = events
        self._view = view
        self._metrics = metrics

    async def register(self, spec: ModelSpec, *, replace: bool, trace_id: str) -> bool:
        key = subjects.model_key(spec.model_id)
        try:
            if replace:
                created = await self._revision(key) is None
                await self._kv.put(key, encode(spec))
            else:
                try:
                    await self._kv.create(key, encode(spec))
                except KeyWrongLastSequenceError as exc:
                    raise ModelExistsError(
                        f"model {spec.model_id!r} is already registered; "
                        "POST with ?replace=true to replace it"
                    ) from exc
                created = True
            self._view.put_model(spec)
            await self._events.publish(ModelRegistered(model=spec, trace_id=trace_id))
        except NatsError as exc:
            raise RegistryUnavailableError(
                f"registering {spec.model_id!r} failed: {exc!r}"
            ) from exc
        return created

    async def _revision(self, key: str) -> int | None:
        try:
            entry = await self._kv.get(key)
        except (KeyNotFoundError, KeyDeletedError):
            return None
        return entry.revision

    def _decode(self, model_id: str, value: bytes | None) -> ModelSpec | None:
        try:
            return decode_model_spec(value or b"")
        except BadMessageError as exc:
            self._metrics.bad_messages.labels(source="models").inc()
            log.warning("model %s: undecodable spec in the registry: %s", model_id, exc)
            return None

    async def get(self, model_id: str) -> ModelSpec | None:
        try:
            entry = await self._kv.get(subjects.model_key(model_id))
        except (KeyNotFoundError, KeyDeletedError):
            return None
        except NatsError as exc:
            raise RegistryUnavailableError(f"reading {model_id!r} failed: {exc!r}") from exc
        return self._decode(model_id, entry.value)

    async def list(self) -> list[ModelSpec]:
        try:
            rows = await kv_values(self._kv)
        except NatsError as exc:
            raise RegistryUnavailableError(f"listing models failed: {exc!r}") from exc
        specs = [s for key, value, _ in rows if (s := self._decode(key, value)) is not None]
        return sorted(specs, key=lambda s: s.model_id)

    async def remove(self, model_id: str, *, trace_id: str) -> bool:
        key = subjects.model_key(model_id)
        try:
            revision = await self._revision(key)
            if revision is None:
                return False
            await self._kv.delete(key, last=revision)
            self._view.drop_model(model_id)
            await self._events.publish(ModelRemoved(model_id=model_id, trace_id=trace_id))
        except NatsError as exc:
            raise RegistryUnavailableError(f"removing {model_id!r} failed: {exc!r}") from exc
        return True
