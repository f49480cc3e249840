"""PNG plots of a comparison (matplotlib, Agg backend; imported only for --plots).

Per policy:
- ``tpot-<policy>.png``: per model, the watcher's windowed TPOT against the
  model's SLO over time, with the compute slices of its ready instances as
  steps on the right axis;
- ``layout-<policy>.png``: every GPU's MIG layout over time, one band per GPU
  (8 memory slices high), each slice drawn from creation to destruction and
  coloured by model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from migserve_shared import mig

from migserve_cli.sim.runner import Comparison
from migserve_cli.sim.simulator import Simulator


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(cmp: Comparison, directory: Path) -> list[Path]:
    """Write the PNGs for every policy that ran; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    plt = _pyplot()
    written: list[Path] = []
    for name, sim in cmp.runs.items():
        written.append(_tpot_plot(plt, sim, name, directory / f"tpot-{name}.png", cmp.horizon_s))
        written.append(
            _layout_plot(plt, sim, name, directory / f"layout-{name}.png", cmp.horizon_s)
        )
    return written


def _tpot_plot(plt: Any, sim: Simulator, name: str, path: Path, horizon: float) -> Path:
    models = list(sim.models)
    fig, axes = plt.subplots(
        len(models), 1, figsize=(11, 2.4 * len(models)), sharex=True, squeeze=False
    )
    for ax, model in zip(axes[:, 0], models, strict=True):
        points = [w for w in sim.windows if w.model == model]
        ts = [w.t / 60 for w in points]
        tpot = [w.tpot_ms if w.tpot_ms is not None else float("nan") for w in points]
        ax.plot(ts, tpot, lw=0.8, color="tab:blue", label="TPOT (watcher window)")
        ax.axhline(sim.models[model].slo_ms, color="tab:red", ls="--", lw=1, label="SLO")
        ax.set_ylabel("TPOT ms")
        ax.set_title(model, fontsize=9, loc="left")
        right = ax.twinx()
        right.step(
            ts,
            [w.compute_slices for w in points],
            where="post",
            color="tab:green",
            lw=1,
            label="compute slices (ready)",
        )
        right.set_ylabel("compute slices")
        right.set_ylim(0, max(7, max((w.compute_slices for w in points), default=7)) + 1)
        handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
        ax.legend(handles=handles, fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("minutes")
    axes[-1, 0].set_xlim(0, horizon / 60)
    fig.suptitle(f"{name}: TPOT against SLO, slice size as steps")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _layout_plot(plt: Any, sim: Simulator, name: str, path: Path, horizon: float) -> Path:
    gpus = sim.config.gpus
    fig, ax = plt.subplots(figsize=(11, 0.7 * gpus + 1.5))
    cmap = plt.get_cmap("tab10")
    colours = {m: cmap(i % 10) for i, m in enumerate(sim.models)}
    band = mig.MEMORY_SLICES + 1
    for g in range(gpus):
        ax.broken_barh([(0, horizon / 60)], (g * band, mig.MEMORY_SLICES), facecolors="#f2f2f2")
    for rec in sim.cluster.history:
        end = rec.destroyed_at if rec.destroyed_at is not None else horizon
        y = rec.gpu * band + rec.start
        width = max(end - rec.created_at, 1e-3) / 60
        ax.broken_barh(
            [(rec.created_at / 60, width)],
            (y, rec.profile.memory_slices - 0.1),
            facecolors=colours[rec.model],
            edgecolors="black",
            linewidth=0.3,
        )
        if width > horizon / 60 / 12:
            ax.text(
                rec.created_at / 60 + width / 2,
                y + rec.profile.memory_slices / 2,
                rec.profile.name,
                ha="center",
                va="center",
                fontsize=6,
            )
    ax.set_yticks([g * band + mig.MEMORY_SLICES / 2 for g in range(gpus)])
    ax.set_yticklabels([f"GPU {g}" for g in range(gpus)])
    ax.set_ylim(-0.5, gpus * band)
    ax.invert_yaxis()
    ax.set_xlim(0, horizon / 60)
    ax.set_xlabel("minutes (bar height: memory slices 0-7)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
    ax.legend(handles, list(colours), fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"{name}: MIG layout per GPU over time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
