"""What an engine Pod's state means to the runtime (pure: Pods are plain JSON dicts)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from migserve_agent.runtime.pods import (
    ANN_BRIDGE_PORT,
    ANN_ENGINE_PORT,
    ANN_INSTANCE_ID,
    ANN_MODEL_ID,
    ANN_NODE,
    MANAGED_BY,
)

#: container waiting reasons that mean the container will not start by itself
_STUCK: Final = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
        "CrashLoopBackOff",
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerView:
    """One container's state: running, waiting (with a reason) or terminated."""

    state: str = "waiting"  # running | waiting | terminated
    reason: str = ""
    message: str = ""
    exit_code: int | None = None
    ready: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class PodView:
    """What the runtime reads from a Pod object."""

    name: str
    instance_id: str
    model_id: str
    node: str
    uid: str = ""
    resource_version: str = ""
    phase: str = "Pending"
    pod_ip: str = ""
    deleting: bool = False
    ready: bool = False
    engine_port: int = 0
    bridge_metrics_port: int = 0
    containers: Mapping[str, ContainerView] = field(default_factory=dict)
    #: the kubelet's reason for a failed Pod (e.g. Evicted, OutOfcpu)
    reason: str = ""
    message: str = ""

    def url(self, port: int) -> str:
        host = f"[{self.pod_ip}]" if ":" in self.pod_ip else self.pod_ip
        return f"http://{host}:{port}"

    @property
    def engine_url(self) -> str:
        return self.url(self.engine_port) if self.pod_ip else ""

    @property
    def bridge_metrics_url(self) -> str:
        return self.url(self.bridge_metrics_port) + "/metrics" if self.pod_ip else ""

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    def container_alive(self, name: str) -> bool:
        """Not known to have exited (a container that has not started yet counts as alive)."""
        if self.finished or self.deleting:
            return False
        c = self.containers.get(name)
        return c is None or c.state != "terminated"

    def start_failure(self) -> str | None:
        """Why this Pod will never become ready by itself, or None while it still may."""
        if self.deleting:
            return f"pod {self.name} is being deleted"
        if self.finished:
            why = f" ({self.reason}: {self.message})" if self.reason else ""
            return f"pod {self.name} is {self.phase}{why}{self._describe_containers()}"
        for name, c in sorted(self.containers.items()):
            if c.state == "terminated":
                return f"pod {self.name}: {name} exited{self._describe(c)}"
            if c.state == "waiting" and c.reason in _STUCK:
                return f"pod {self.name}: {name} cannot start{self._describe(c)}"
        return None

    def describe(self) -> str:
        """Phase and container states, for error messages."""
        parts = [f"phase {self.phase}"] + [
            f"{name} {c.state}{' ' + c.reason if c.reason else ''}"
            for name, c in sorted(self.containers.items())
        ]
        return ", ".join(parts)

    def _describe_containers(self) -> str:
        parts = [
            f"{name}{self._describe(c)}"
            for name, c in sorted(self.containers.items())
            if c.state == "terminated"
        ]
        return "; " + "; ".join(parts) if parts else ""

    @staticmethod
    def _describe(c: ContainerView) -> str:
        bits = [b for b in (f"exit code {c.exit_code}" if c.exit_code is not None else "",
                            c.reason, c.message) if b]  # fmt: skip
        return f" ({', '.join(bits)})" if bits else ""


def _int(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def _container(status: Mapping[str, Any]) -> ContainerView:
    state = status.get("state") or {}
    ready = bool(status.get("ready"))
    for kind in ("terminated", "running", "waiting"):
        detail = state.get(kind)
        if detail is not None:
            code = detail.get("exitCode") if kind == "terminated" else None
            return ContainerView(
                state=kind,
                reason=str(detail.get("reason") or ""),
                message=str(detail.get("message") or "")[:500],
                exit_code=code if isinstance(code, int) else None,
                ready=ready,
            )
    return ContainerView(ready=ready)


def view(pod: Mapping[str, Any]) -> PodView | None:
    """The runtime's view of a Pod, or None if it is not an engine Pod migserve made."""
    meta = pod.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    labels = meta.get("labels") or {}
    instance_id = annotations.get(ANN_INSTANCE_ID)
    if labels.get("app.kubernetes.io/managed-by") != MANAGED_BY or not instance_id:
        return None
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    containers = {str(s.get("name")): _container(s) for s in status.get("containerStatuses") or []}
    return PodView(
        name=str(meta.get("name") or ""),
        instance_id=str(instance_id),
        model_id=str(annotations.get(ANN_MODEL_ID) or ""),
        node=str(spec.get("nodeName") or annotations.get(ANN_NODE) or ""),
        uid=str(meta.get("uid") or ""),
        resource_version=str(meta.get("resourceVersion") or ""),
        phase=str(status.get("phase") or "Pending"),
        pod_ip=str(status.get("podIP") or ""),
        deleting=bool(meta.get("deletionTimestamp")),
        ready=ready,
        engine_port=_int(annotations.get(ANN_ENGINE_PORT)),
        bridge_metrics_port=_int(annotations.get(ANN_BRIDGE_PORT)),
        containers=containers,
        reason=str(status.get("reason") or ""),
        message=str(status.get("message") or "")[:500],
    )


def newer(candidate: PodView, current: PodView | None) -> bool:
    """Whether ``candidate`` may replace ``current`` in a cache fed by a watch and by reads.

    Resource versions are opaque, but the API server's are etcd revisions
    (integers); when both are integers the larger wins, otherwise the newer
    arrival does.
    """
    if current is None or candidate.uid != current.uid:
        return True
    try:
        return int(candidate.resource_version) >= int(current.resource_version)
    except ValueError:
        return True
