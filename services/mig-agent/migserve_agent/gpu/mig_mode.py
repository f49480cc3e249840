"""Whether the node's GPUs can be managed: MIG mode must be on, and migserve never turns it on.

Enabling MIG needs an idle GPU and a GPU reset (or a reboot), which would kill
every process on that GPU, so it is an operator's decision: the agent refuses
to manage a GPU whose MIG mode is off (now, or after the next reset) and says
how to enable it. Nothing here changes a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from migserve_shared.errors import NotSupportedError

from migserve_agent.gpu.base import GpuInfo


class GpuUnusableError(NotSupportedError):
    """The node's GPUs cannot be managed as they are (no NVML, MIG off): the agent exits."""


class MigModeOffError(GpuUnusableError):
    """A GPU the agent should manage has MIG mode off, now or after its next reset."""


@dataclass(frozen=True, slots=True)
class MigMode:
    """A GPU's MIG mode as NVML reports it (nvmlDeviceGetMigMode: current and pending)."""

    #: False when the GPU cannot do MIG at all (NVML_ERROR_NOT_SUPPORTED)
    supported: bool
    current: bool = False
    #: the mode after the next GPU reset
    pending: bool = False

    @property
    def enabled(self) -> bool:
        """On now and after the next reset: only then may slices be made."""
        return self.supported and self.current and self.pending

    def describe(self) -> str:
        if not self.supported:
            return "not supported by this GPU"
        return f"current {_word(self.current)}, pending {_word(self.pending)}"


def _word(on: bool) -> str:
    return "enabled" if on else "disabled"


def enable_hint(index: int) -> str:
    """How an operator turns MIG on for GPU ``index`` (nvidia-smi uses NVML's indices)."""
    return (
        f"migserve never changes MIG mode; an operator enables it with "
        f"`sudo nvidia-smi -i {index} -mig 1` while no process uses the GPU, then resets "
        f"the GPU (`sudo nvidia-smi -i {index} -r`) or reboots the node"
    )


def mig_off_message(gpu: GpuInfo) -> str:
    """Why ``gpu`` cannot be managed, and what to do about it."""
    mode = f" ({gpu.mig_mode})" if gpu.mig_mode else ""
    return (
        f"GPU {gpu.index} ({gpu.name}, {gpu.uuid}) has MIG mode off{mode}: {enable_hint(gpu.index)}"
    )


def require_mig_enabled(gpus: Sequence[GpuInfo]) -> None:
    """Raise MigModeOffError naming every GPU whose MIG mode is off, with the fix."""
    off = [g for g in gpus if not g.mig_enabled]
    if off:
        raise MigModeOffError(
            "refusing to manage GPUs without MIG: "
            + "; ".join(mig_off_message(g) for g in off)
            + ". To leave a GPU out, list the others in MIGSERVE_NVML_GPUS."
        )
