"""Prometheus file_sd targets for the local stack, written as instances come and go.

Every ready instance gives one target group for its engine's /metrics and
one for its bridge's, labelled so that PromQL can select a model's instances
and tell them apart without relying on the exporters' own labels:
``migserve_model``, ``migserve_instance``, ``migserve_node``,
``migserve_engine``, ``migserve_profile`` and ``migserve_target``
(``engine`` or ``bridge``). A non-default metrics path travels as
``__metrics_path__``.

The file is replaced atomically (write a temporary file, then rename), and only
when its content changes, so Prometheus never reads half a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from migserve_shared.messages import InstanceRecord

from migserve_watcher.adapters.scrape import metrics_url

TargetGroup = dict[str, object]


def target_groups(records: Iterable[InstanceRecord]) -> list[TargetGroup]:
    """The file_sd groups of the ready instances, in a stable order."""
    groups: list[TargetGroup] = []
    for r in sorted(records, key=lambda r: r.instance_id):
        if r.state != "ready":
            continue
        for target, base in (("engine", r.engine_url), ("bridge", r.bridge_metrics_url)):
            if not base:
                continue
            url = urlsplit(metrics_url(base))
            if not url.netloc:
                continue
            labels = {
                "migserve_model": r.model_id,
                "migserve_instance": r.instance_id,
                "migserve_node": r.node,
                "migserve_engine": r.engine,
                "migserve_profile": r.profile,
                "migserve_target": target,
            }
            if url.path != "/metrics":
                labels["__metrics_path__"] = url.path
            if url.scheme == "https":
                labels["__scheme__"] = "https"
            groups.append({"targets": [url.netloc], "labels": labels})
    return groups


def render(records: Iterable[InstanceRecord]) -> str:
    return json.dumps(target_groups(records), indent=2, sort_keys=True) + "\n"


def write_file_sd(path: Path, records: Iterable[InstanceRecord]) -> bool:
    """Write the targets to ``path`` if they changed; True when it wrote."""
    text = render(records)
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return True
