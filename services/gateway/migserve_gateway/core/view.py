"""The gateway's live view of the cluster: registered models and ready instances.

Fed by the KV watchers (``adapters.watch``) and read on every request, so
every read is a dict lookup. Pure state: no I/O, no clock. Listeners added
with ``on_instance_down`` hear the id of every instance that failed, stopped
or vanished from the bucket (the dispatcher ends the streams it was serving).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from migserve_shared.messages import InstanceRecord, ModelSpec

#: instance states after which an instance serves nothing any more
DOWN_STATES: Final = frozenset({"failed", "stopped"})


class LiveView:
    """Models by id, and how many instances of each model are ready."""

    def __init__(self) -> None:
        self._models: dict[str, ModelSpec] = {}
        #: instances-bucket key -> (model id, ready?, instance id)
        self._instances: dict[str, tuple[str, bool, str]] = {}
        self._ready: dict[str, int] = {}
        self._down_listeners: list[Callable[[str], None]] = []

    def on_instance_down(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(instance_id)`` whenever an instance fails, stops or vanishes."""
        self._down_listeners.append(listener)

    def _down(self, instance_id: str) -> None:
        for listener in self._down_listeners:
            listener(instance_id)

    # models ---------------------------------------------------------------
    def put_model(self, spec: ModelSpec) -> None:
        self._models[spec.model_id] = spec

    def drop_model(self, model_id: str) -> None:
        self._models.pop(model_id, None)

    def model(self, model_id: str) -> ModelSpec | None:
        return self._models.get(model_id)

    def models(self) -> list[ModelSpec]:
        """Every registered model, sorted by id."""
        return [self._models[k] for k in sorted(self._models)]

    # instances --------------------------------------------------------------
    def put_instance(self, key: str, record: InstanceRecord) -> None:
        self._forget(key)
        ready = record.state == "ready"
        self._instances[key] = (record.model_id, ready, record.instance_id)
        if ready:
            self._ready[record.model_id] = self._ready.get(record.model_id, 0) + 1
        if record.state in DOWN_STATES:
            self._down(record.instance_id)

    def drop_instance(self, key: str) -> None:
        old = self._forget(key)
        if old is not None:
            self._down(old[2])

    def _forget(self, key: str) -> tuple[str, bool, str] | None:
        old = self._instances.pop(key, None)
        if old is not None and old[1]:
            model = old[0]
            left = self._ready[model] - 1
            if left:
                self._ready[model] = left
            else:
                del self._ready[model]
        return old

    def ready_count(self, model_id: str) -> int:
        return self._ready.get(model_id, 0)

    def ready_models(self) -> dict[str, int]:
        return dict(self._ready)
