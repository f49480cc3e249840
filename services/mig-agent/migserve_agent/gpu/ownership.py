"""Which slices migserve made, kept in a file in the agent's state directory.

NVML keeps no owner on a GPU instance, so the agent records every slice it
creates (by MIG UUID) and for which instance. Only slices recorded here are
ever destroyed by the agent; any other slice on the GPU is reported as not
ours and left alone.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import msgspec

from migserve_agent.gpu.base import OwnedSlice

log = logging.getLogger(__name__)


class _File(msgspec.Struct):
    version: int = 1
    slices: list[OwnedSlice] = msgspec.field(default_factory=list)


class SliceOwnership:
    """The slices migserve made on this node, persisted after every change."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._slices: dict[str, OwnedSlice] = {}
        if path.exists():
            try:
                data = msgspec.json.decode(path.read_bytes(), type=_File)
                self._slices = {s.uuid: s for s in data.slices}
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                broken = path.with_suffix(".corrupt")
                log.warning("slice ownership file %s unreadable (%s); moved to %s; slices "
                            "it named will be treated as not ours", path, exc, broken)  # fmt: skip
                path.replace(broken)

    def record(self, owned: OwnedSlice) -> None:
        self._slices[owned.uuid] = owned
        self._save()

    def forget(self, uuid: str) -> None:
        if self._slices.pop(uuid, None) is not None:
            self._save()

    def get(self, uuid: str) -> OwnedSlice | None:
        return self._slices.get(uuid)

    def for_instance(self, instance_id: str) -> OwnedSlice | None:
        return next((s for s in self._slices.values() if s.instance_id == instance_id), None)

    def all(self) -> list[OwnedSlice]:
        return sorted(self._slices.values(), key=lambda s: (s.gpu_index, s.start))

    def _save(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(_File(slices=self.all())))
        os.replace(tmp, self._path)
