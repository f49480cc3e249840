"""The engine adapters a node offers, by engine kind (one registry per agent)."""

from __future__ import annotations

import sys
from collections.abc import Mapping

from migserve_shared.errors import NotSupportedError

from migserve_agent.engines.base import EngineAdapter
from migserve_agent.engines.sim import SimEngineAdapter


class EngineRegistry:
    """Adapters by ``EngineKind`` name."""

    def __init__(self, adapters: Mapping[str, EngineAdapter]) -> None:
        self._adapters = dict(adapters)

    def get(self, kind: str) -> EngineAdapter:
        adapter = self._adapters.get(kind)
        if adapter is None:
            offered = ", ".join(sorted(self._adapters)) or "none"
            raise NotSupportedError(f"engine {kind!r} is not offered on this node ({offered})")
        return adapter

    def kinds(self) -> list[str]:
        return sorted(self._adapters)


def default_registry(*, sim_startup_s: float, python: str = sys.executable) -> EngineRegistry:
    """The engines the agent offers today (llamacpp, tgi and vllm come later)."""
    return EngineRegistry({"sim": SimEngineAdapter(python=python, startup_delay_s=sim_startup_s)})
