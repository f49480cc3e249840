"""``migserve_agent_slice_info``: one series per slice, labelled with its place and instance."""

from __future__ import annotations

from migserve_agent.metrics import SLICE_INFO, SLICE_INFO_LABELS, AgentMetrics, slice_info_rows
from migserve_shared.messages import GpuState, InstanceRecord, NodeState, SliceState
from prometheus_client import generate_latest


def _state() -> NodeState:
    slices = [
        SliceState(
            gi_id=1, profile_id=19, profile="1g.5gb", start=6, uuid="MIG-a", instance_id="i-1"
        ),
        SliceState(gi_id=2, profile_id=14, profile="2g.10gb", start=0, uuid="MIG-b"),
    ]
    return NodeState(
        node="node-1",
        gpus=[GpuState(index=0, uuid="GPU-0", model="A100-SXM4-40GB", slices=slices)],
    )


def _record() -> InstanceRecord:
    return InstanceRecord(
        instance_id="i-1",
        model_id="org/model",
        node="node-1",
        gpu_index=0,
        gpu_uuid="GPU-0",
        profile="1g.5gb",
        start=6,
        slice_uuid="MIG-a",
        engine="sim",
    )


def test_rows_name_the_instance_and_its_model() -> None:
    rows = slice_info_rows(_state(), [_record()])
    assert rows == [
        ("node-1", "0", "GPU-0", "1g.5gb", "6", "i-1", "org/model"),
        ("node-1", "0", "GPU-0", "2g.10gb", "0", "", ""),
    ]
    assert slice_info_rows(None, [_record()]) == []


def test_the_metric_follows_its_source_at_each_scrape() -> None:
    metrics = AgentMetrics()
    assert metrics.registry.get_sample_value(SLICE_INFO, {}) is None
    rows = slice_info_rows(_state(), [_record()])
    current = [rows]
    metrics.show_slices(lambda: current[0])
    labels = dict(zip(SLICE_INFO_LABELS, rows[0], strict=True))
    assert metrics.value(SLICE_INFO, labels) == 1.0
    text = generate_latest(metrics.registry).decode()
    assert text.count(f"{SLICE_INFO}{{") == 2
    assert 'model="org/model"' in text and 'gpu_uuid="GPU-0"' in text
    current[0] = rows[1:]  # the instance's slice was destroyed
    assert metrics.registry.get_sample_value(SLICE_INFO, labels) is None
    assert generate_latest(metrics.registry).decode().count(f"{SLICE_INFO}{{") == 1
