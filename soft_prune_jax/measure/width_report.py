"""Per-layer comparison of a dense model and its compact (pruned) version.

Built from two ``flops.FlopCount``s of one traced graph (``traced.macs``): the compact count keeps the
layer paths and group names with smaller widths, so layers are matched by path. A layer the compact
count lacks, or counts at 0 MACs, shows 0 channels and 0 MACs after.

    compact, compact_variables = prune_model(model, variables, x)
    dense = macs.count(compact.program.analysis)
    rep = report.compare(dense, macs.of_compact(compact))
    print(report.format_table(rep))
    open("report.json", "w").write(report.to_json(rep))
    report.plot_widths("widths.png", rep, title="ResNet-56, SCP")
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Optional

from soft_prune_jax.measure.flops import FlopCount, reduction


@dataclasses.dataclass(frozen=True)
class LayerChange:
    """One conv/dense layer before and after pruning (MACs per example)."""

    path: str
    kind: str
    in_before: int
    in_after: int
    out_before: int
    out_after: int
    macs_before: int
    macs_after: int

    @property
    def removed(self) -> bool:
        return self.macs_after == 0 and self.macs_before > 0


@dataclasses.dataclass(frozen=True)
class WidthChange:
    """One prunable channel group: its channels, dense vs kept."""

    path: str
    before: int
    after: int


@dataclasses.dataclass(frozen=True)
class PruningReport:
    layers: tuple[LayerChange, ...]
    widths: tuple[WidthChange, ...]
    summary: Mapping[str, float]  # ``flops.reduction(dense, compact)``


def compare(dense: FlopCount, compact: FlopCount) -> PruningReport:
    """Matches layers by module path; compact-only layers are a mistake and raise ValueError."""
    summary = reduction(dense, compact)  # also checks inputs and masked-layer names
    after = compact.by_path()
    extra = sorted(set(after) - {layer.path for layer in dense.layers})
    if extra:
        raise ValueError(
            f"compact model has layers the dense one lacks: {extra[:5]}; expected two counts of the same graph"
        )
    layers = []
    for layer in dense.layers:
        new = after.get(layer.path)
        layers.append(
            LayerChange(
                path=layer.path,
                kind=layer.kind,
                in_before=layer.in_channels,
                in_after=new.in_channels if new else 0,
                out_before=layer.out_channels,
                out_after=new.out_channels if new else 0,
                macs_before=layer.macs,
                macs_after=new.macs if new else 0,
            )
        )
    widths = tuple(
        WidthChange(name, width, compact.masked_channels.get(name, 0)) for name, width in dense.masked_channels.items()
    )
    return PruningReport(layers=tuple(layers), widths=widths, summary=dict(summary))


def _mega(macs: int) -> str:
    return f"{macs / 1e6:.2f}M"


def format_table(rep: PruningReport) -> str:
    """A fixed-width text table: one row per conv/dense layer, then the totals."""
    header = ("layer", "kind", "in before->after", "out before->after", "MACs before->after", "MACs kept")
    rows = [header]
    for c in rep.layers:
        kept = f"{100.0 * c.macs_after / c.macs_before:.1f}%" if c.macs_before else "-"
        rows.append(
            (
                c.path + (" (removed)" if c.removed else ""),
                c.kind,
                f"{c.in_before}->{c.in_after}",
                f"{c.out_before}->{c.out_after}",
                f"{_mega(c.macs_before)}->{_mega(c.macs_after)}",
                kept,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    s = rep.summary
    lines += [
        "",
        f"MACs:     {_mega(s['dense_macs'])} -> {_mega(s['compact_macs'])} (-{s['macs_reduction_pct']:.2f}%)"
        " per example; FLOPs = 2 MACs; BN/ReLU/pool/add not counted",
        f"params:   {s['dense_params']:,} -> {s['compact_params']:,} (-{s['params_reduction_pct']:.2f}%)",
        f"channels: {s['total_channels']:,} -> {s['kept_channels']:,} (-{s['channel_reduction_pct']:.2f}%)"
        " of the masked layers",
    ]
    return "\n".join(lines)


def to_dict(rep: PruningReport) -> dict[str, Any]:
    return {
        "summary": dict(rep.summary),
        "layers": [dataclasses.asdict(c) for c in rep.layers],
        "widths": [dataclasses.asdict(w) for w in rep.widths],
    }


def to_json(rep: PruningReport, indent: Optional[int] = 2) -> str:
    return json.dumps(to_dict(rep), indent=indent)


def from_json(text: str) -> PruningReport:
    data = json.loads(text)
    return PruningReport(
        layers=tuple(LayerChange(**c) for c in data["layers"]),
        widths=tuple(WidthChange(**w) for w in data["widths"]),
        summary=data["summary"],
    )


def plot_widths(path: str, rep: PruningReport, title: Optional[str] = None) -> str:
    """Writes a PNG bar chart of each masked layer's width: dense (light) and kept (dark)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on training machines
    import matplotlib.pyplot as plt

    if not rep.widths:
        raise ValueError("the report has no masked layers to plot (a graph without prunable channel groups?)")
    positions = range(len(rep.widths))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.12 * len(rep.widths) + 2.0), 3.5))
    try:
        ax.bar(positions, [w.before for w in rep.widths], color="#c8d6e5", label="dense")
        ax.bar(positions, [w.after for w in rep.widths], color="#1f4e79", label="kept")
        ax.set_xlabel("channel group (program order)")
        ax.set_ylabel("channels")
        s = rep.summary
        ax.set_title(
            title or f"kept channels: {s['kept_channels']}/{s['total_channels']}, MACs -{s['macs_reduction_pct']:.1f}%"
        )
        ax.legend(loc="upper left")
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=120)
    finally:
        plt.close(fig)
    return path
