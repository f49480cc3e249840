"""Where the watcher's per-model evidence comes from: one Protocol, chosen at start-up.

- ``direct`` (``adapters.direct``): scrape every ready instance's engine and
  bridge /metrics and difference the counters over the window.
- ``prometheus`` (``adapters.prometheus``): ask a Prometheus that scrapes them
  (PromQL per engine kind, as in FACTS.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from migserve_shared.messages import InstanceRecord, ModelSpec, SloEvidence


class MetricsSource(Protocol):
    """One round of evidence: one ``SloEvidence`` per registered model with ready
    instances. A model whose instances gave no data gets evidence with TPOT None."""

    name: str

    async def collect(
        self, specs: Mapping[str, ModelSpec], records: Sequence[InstanceRecord]
    ) -> dict[str, SloEvidence]: ...
