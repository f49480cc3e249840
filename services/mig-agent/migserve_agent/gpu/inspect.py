"""``migserve gpu inspect``: a read-only view of this machine's GPUs through NVML.

For each GPU: its MIG mode (current and pending), its GPU instance profiles
(NVML index and profile id, memory and SM counts as NVML reports them,
possible placements, how many more fit now) and the GPU instances that exist,
with their compute instance and MIG device UUID. It only reads: nothing here
creates, destroys or changes anything, MIG mode included. Calls NVML refuses
without root are shown as such instead of failing the whole view.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from migserve_shared import mig
from migserve_shared.errors import MigserveError, NoPermissionError

from migserve_agent.gpu.base import SliceInfo
from migserve_agent.gpu.mig_mode import enable_hint
from migserve_agent.gpu.nvml import NvmlGpuBackend
from migserve_agent.gpu.nvml_calls import MigDevice, ProfileReport


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuReport:
    """Everything ``migserve gpu inspect`` shows about one GPU."""

    index: int
    uuid: str
    name: str
    #: migserve's name for the model (``migserve_shared.mig``), None if it does not know it
    model: str | None
    memory_mb: int
    mig_supported: bool
    mig_current: bool
    mig_pending: bool
    #: the slices migserve could make (MIG on now and after the next reset)
    mig_enabled: bool
    #: how an operator enables MIG, when it is not enabled
    enable_hint: str | None
    profiles: list[ProfileReport]
    #: None when NVML refused to list them (it needs root)
    instances: list[SliceInfo] | None
    mig_devices: list[MigDevice]
    notes: list[str] = field(default_factory=list)


def inspect_gpus(backend: NvmlGpuBackend) -> list[GpuReport]:
    """Read every GPU the backend manages (read-only calls only)."""
    reports = []
    for gpu in backend.list_gpus():
        mode = backend.mig_mode(gpu.index)
        notes: list[str] = []
        try:
            instances: list[SliceInfo] | None = backend.list_slices(gpu.index)
        except NoPermissionError as exc:
            instances = None
            notes.append(f"GPU instances are listed only for root: {exc}")
        profiles = backend.profiles(gpu.index)
        if any(p.starts is None for p in profiles):
            notes.append("placements and free capacity are reported only for root")
        reports.append(
            GpuReport(
                index=gpu.index,
                uuid=gpu.uuid,
                name=gpu.name,
                model=_model_name(gpu.name),
                memory_mb=gpu.memory_mb,
                mig_supported=mode.supported,
                mig_current=mode.current,
                mig_pending=mode.pending,
                mig_enabled=mode.enabled,
                enable_hint=None if mode.enabled or not mode.supported else enable_hint(gpu.index),
                profiles=profiles,
                instances=instances,
                mig_devices=backend.mig_devices(gpu.index),
                notes=notes,
            )
        )
    return reports


def inspect_node(*, nvml: Any = None, index: int | None = None) -> list[GpuReport]:
    """Open NVML (the real pynvml unless ``nvml`` is given), read, shut NVML down."""
    with NvmlGpuBackend(nvml=nvml, gpu_indices=None if index is None else [index]) as backend:
        return inspect_gpus(backend)


def to_json(reports: Sequence[GpuReport]) -> bytes:
    return msgspec.json.encode({"gpus": list(reports)})


def render_text(reports: Sequence[GpuReport]) -> str:
    lines: list[str] = []
    for r in reports:
        if lines:
            lines.append("")
        model = f" ({r.model})" if r.model and r.model not in r.name else ""
        lines.append(f"GPU {r.index}: {r.name}{model}  {r.uuid}  {r.memory_mb} MB")
        lines.append(f"  MIG mode: {_mode_text(r)}")
        if r.enable_hint:
            lines.append(f"  migserve will not manage this GPU: {r.enable_hint}")
        if r.profiles:
            lines.append("  GPU instance profiles:")
            lines.extend("    " + row for row in _table(_profile_rows(r.profiles)))
        if r.instances is not None and r.mig_current:
            lines.extend(_instance_lines(r, r.instances))
        elif r.instances is None:
            lines.append("  MIG devices:")
            rows = [["index", "GI", "CI", "uuid"]]
            rows += [[str(d.index), str(d.gi_id), str(d.ci_id), d.uuid] for d in r.mig_devices]
            lines.extend("    " + row for row in _table(rows))
        lines.extend(f"  note: {note}" for note in r.notes)
    return "\n".join(lines) if lines else "no GPU"


def _mode_text(r: GpuReport) -> str:
    if not r.mig_supported:
        return "not supported by this GPU"
    state = "enabled" if r.mig_enabled else "OFF"
    on = {True: "enabled", False: "disabled"}
    return f"{state} (current {on[r.mig_current]}, pending {on[r.mig_pending]})"


def _profile_rows(profiles: Sequence[ProfileReport]) -> list[list[str]]:
    rows = [
        [
            "profile",
            "id",
            "NVML index",
            "compute",
            "memory slices",
            "max",
            "fit now",
            "memory MB",
            "SMs",
            "starts",
        ]
    ]
    for p in profiles:
        index = p.index_name.removeprefix("NVML_GPU_INSTANCE_PROFILE_")
        rows.append(
            [
                p.name,
                str(p.id),
                f"{p.index} ({index})",
                str(p.compute_slices),
                _opt(p.memory_slices),
                str(p.max_count),
                _opt(p.remaining),
                str(p.memory_mb),
                str(p.sm_count),
                "?" if p.starts is None else " ".join(map(str, p.starts)),
            ]
        )
    return rows


def _instance_lines(r: GpuReport, instances: Sequence[SliceInfo]) -> list[str]:
    if not instances:
        return ["  GPU instances: none"]
    rows = [["GI", "CI", "profile", "start", "memory MB", "SMs", "MIG device"]]
    for s in instances:
        ci = str(s.ci_id) if s.ci_id >= 0 else "-"
        uuid = s.uuid or "(no compute instance)"
        rows.append(
            [str(s.gi_id), ci, s.profile, str(s.start), str(s.memory_mb), str(s.sm_count), uuid]
        )
    lines = ["  GPU instances:", *("    " + row for row in _table(rows))]
    bar = _layout_bar(r.model, instances)
    if bar:
        lines.append(f"  memory slices: {bar}")
    return lines


def _layout_bar(model_name: str | None, instances: Sequence[SliceInfo]) -> str | None:
    if model_name is None:
        return None
    try:
        model = mig.gpu_model(model_name)
        return mig.render_bar(model, [mig.Slice(s.profile_id, s.start) for s in instances])
    except MigserveError:  # a profile migserve does not know
        return None


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _opt(value: int | None) -> str:
    return "?" if value is None else str(value)


def _model_name(name: str) -> str | None:
    try:
        return mig.gpu_model(name).name
    except MigserveError:
        return None
