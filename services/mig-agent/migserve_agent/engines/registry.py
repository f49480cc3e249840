"""The engine adapters a node offers, by engine kind (one registry per agent)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from migserve_shared.errors import NotSupportedError

from migserve_agent.engines.base import EngineAdapter
from migserve_agent.engines.llamacpp import LlamaCppAdapter
from migserve_agent.engines.sim import SimEngineAdapter
from migserve_agent.engines.tgi import TgiEngineAdapter
from migserve_agent.engines.vllm import VllmEngineAdapter


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


def default_registry(
    *,
    sim_startup_s: float,
    python: str = sys.executable,
    llama_server: Path | None = None,
    cpu_count: int | None = None,
) -> EngineRegistry:
    """The engines the agent offers: sim, llamacpp, tgi and vllm.

    ``llama_server`` is the binary the llamacpp adapter runs; without one,
    creating a llamacpp instance fails with a message saying how to build it.
    """
    return EngineRegistry(
        {
            "sim": SimEngineAdapter(python=python, startup_delay_s=sim_startup_s),
            "llamacpp": LlamaCppAdapter(
                binary=llama_server, cpu_count=cpu_count or os.cpu_count() or 1
            ),
            "tgi": TgiEngineAdapter(),
            "vllm": VllmEngineAdapter(),
        }
    )
