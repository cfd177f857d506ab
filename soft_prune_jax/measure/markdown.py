"""The Markdown page of a pipeline run (report.md), rendered from its report.json record alone."""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional

ACCURACY_ROWS = (  # (top-1 key, top-5 key, label) of the evaluate record
    ("trained_hard_masked_accuracy", "trained_hard_masked_top5_accuracy", "trained (hard masks)"),
    ("compact_accuracy_before_finetune", "compact_top5_accuracy_before_finetune", "compact before fine-tuning"),
    ("compact_accuracy_after_finetune", "compact_top5_accuracy_after_finetune", "compact after fine-tuning"),
)


def _settings(settings: Mapping[str, Any]) -> str:
    def show(value):
        if isinstance(value, Mapping):
            return "{" + ", ".join(f"{k} {show(v)}" for k, v in value.items()) + "}"
        return f"{value:g}" if isinstance(value, float) else str(value)

    return ", ".join(f"{k} {show(v)}" for k, v in settings.items())


def render(out: Mapping[str, Any], table: str, plot: Optional[str]) -> str:
    """``out``: the report record (pipeline report phase); ``table``: ``report.format_table``; ``plot``: a path."""
    s = out["pruning"]["summary"]
    method = out.get("method_details") or {"label": out["method"], "settings": {}}
    lines = [f"# {out['model']} on {out['dataset']} ({method['label']})", "", "| metric | value |", "|---|---|"]
    if method["settings"]:
        lines.append(f"| method settings | {_settings(method['settings'])} |")
    ev = out.get("evaluate")
    if ev:
        for key, top5_key, label in ACCURACY_ROWS:
            if key in ev:
                top5 = f" (top-5 {100 * ev[top5_key]:.2f}%)" if top5_key in ev else ""
                lines.append(f"| test accuracy, {label} | {100 * ev[key]:.2f}%{top5} |")
        diff = ev["max_abs_logit_diff_before_finetune"]
        lines.append(f"| max abs logit difference, hard-masked vs compact | {diff:.3g} |")
    lines += [
        f"| MACs per example | {s['dense_macs']:,} -> {s['compact_macs']:,} (-{s['macs_reduction_pct']:.2f}%) |",
        f"| parameters | {s['dense_params']:,} -> {s['compact_params']:,} (-{s['params_reduction_pct']:.2f}%) |",
        f"| channels of masked layers | {s['total_channels']:,} -> {s['kept_channels']:,} "
        f"(-{s['channel_reduction_pct']:.2f}%) |",
    ]
    for row in (out.get("benchmark") or {}).get("rows", []):
        lines.append(
            f"| latency at batch {row['batch_size']} (median, {out['benchmark']['device']}) | "
            f"dense {row['dense']['median_ms']:.2f} ms, compact {row['compact']['median_ms']:.2f} ms, "
            f"speed-up {row['speedup']:.2f}x (MACs ratio {out['benchmark']['mac_ratio']:.2f}x) |"
        )
    timings = out.get("timings") or {}
    if timings:
        lines.append("| wall time per phase (s) | " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()) + " |")
    landing = (out.get("prune") or {}).get("budget")
    if landing and "measured_latency_ratio" in landing:  # a latency budget: target, estimate, measurement
        lines.append(
            f"| latency budget (of dense, batch {landing['batch_size']}, {landing['device']}) | target "
            f"{100 * landing['target_latency_ratio_of_dense']:.1f}%, estimated "
            f"{100 * landing['estimated_latency_ratio']:.1f}%, measured {100 * landing['measured_latency_ratio']:.1f}% "
            f"(dense {landing['dense_ms']:.2f} ms, compact {landing['compact_ms']:.2f} ms; "
            f"{len(landing['landing_tries'])} landing tries)"
            + ("; **not met**" if landing.get("met") is False else "")
            + ("; **one channel left in every prunable group**" if landing.get("at_floor") else "")
            + " |"
        )
    elif landing:  # config.target_macs_ratio: the budget, where training left the network, and the cut
        lines.append(
            f"| MAC budget (of dense MACs) | target {100 * landing['target_macs_ratio']:.1f}%, trained "
            f"hard-masked {100 * landing['hard_masked_macs_ratio']:.1f}%, reached "
            f"{100 * landing['reached_macs_ratio']:.1f}% ({landing['removed_by_landing']} channels "
            f"removed by landing) |"
        )
    fallback = (out.get("prune") or {}).get("kept_by_fallback")
    if fallback:
        rule = method.get("keep_one_rule", "the lowest z = (eps - beta) / |gamma|")
        lines += ["", f"Layers that would have lost every channel kept the channel with {rule}: {', '.join(fallback)}."]
    lines += ["", "MACs: " + out["macs_convention"] + ".", "", "```", table, "```"]
    if plot:
        lines += ["", f"![kept channels per layer]({os.path.basename(plot)})"]
    return "\n".join(lines) + "\n"
