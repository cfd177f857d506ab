"""Progress of a training phase: finite-loss checks, one log line per window, TensorBoard scalars.

Device metrics are fetched only here (every ``log_every_steps`` and at epoch ends), so the host
does not wait on every step; a non-finite loss found here stops the run before the next save.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

import numpy as np
from absl import logging

from soft_prune_jax.scp import masks as M
from soft_prune_jax.training.checkpoint import TrainCheckpointer
from soft_prune_jax.training.parallel import Parallel
from soft_prune_jax.training.summaries import Summaries


def channel_summary(params, mask_cfg: Optional[M.MaskConfig]) -> Optional[dict]:
    """Hard kept channels (``masks.hard_masks``) and the pi of every masked layer; None without masks."""
    if mask_cfg is None or not M.masked_layers(params):
        return None
    probs = M.layer_probabilities(params, mask_cfg)
    kept = M.kept_channels({name: p["hard_mask"] for name, p in probs.items()})
    kept["pi"] = {name: np.asarray(p["pi"]) for name, p in probs.items()}
    return kept


def mean_metrics(window: list[dict]) -> dict:
    return {k: float(np.mean([m[k] for m in window])) for k in window[0]}


def format_progress(name, step, total, rate, metrics, channels, macs) -> str:
    line = (
        f"{name} step {step}/{total} | {rate:.2f} steps/s | loss {metrics['loss']:.4f} "
        f"(ce {metrics['cross_entropy']:.4f}) | acc {metrics['accuracy']:.4f} | lr {metrics['learning_rate']:.4g}"
    )
    if channels is not None:
        line += f" | kept channels {channels['kept']}/{channels['total']} ({100 * channels['ratio']:.1f}%)"
    if macs is not None:
        line += f" | MACs {macs['macs'] / 1e6:.2f}M ({100 * macs['ratio']:.1f}% of dense)"
    if "lambda" in metrics:  # a MAC budget or the cost-aware penalty (training/budget_control.py)
        line += (
            f" | lambda {metrics['lambda']:.3g} | MACs expected {100 * metrics['macs_expected_ratio']:.1f}%"
            f" hard-masked {100 * metrics['macs_hard_ratio']:.1f}%"
        )
        if "macs_target_ratio" in metrics:
            line += (
                f" early {100 * metrics['macs_signal_ratio']:.1f}% (target now "
                f"{100 * metrics['macs_target_ratio']:.1f}%)"
            )
        if "latency_target_ratio" in metrics:  # a latency budget: the estimate the controller steers
            line += (
                f" | latency est. expected {100 * metrics['latency_expected_ratio']:.1f}%"
                f" hard-masked {100 * metrics['latency_hard_ratio']:.1f}%"
                f" early {100 * metrics['latency_signal_ratio']:.1f}% (target now "
                f"{100 * metrics['latency_target_ratio']:.1f}%)"
            )
    return line


class Progress:
    """Collects the device metrics of finished steps and reports them (see the module docstring).

    name: the phase; mask: its mask config (None: no channel counts); macs_fn: variables ->
    {'macs', 'ratio'} for the log line, or None; view: params -> the masked BN layers the channel
    counts read (None: the params as they are).
    """

    def __init__(
        self,
        name: str,
        mask: Optional[M.MaskConfig],
        parallel: Parallel,
        total_steps: int,
        start_step: int,
        checkpointer: TrainCheckpointer,
        macs_fn: Optional[Callable[[Any], dict]],
        summaries: Summaries,
        view: Optional[Callable[[Any], Any]] = None,
    ):
        self.name, self.mask, self.parallel, self.total_steps = name, mask, parallel, total_steps
        self.checkpointer, self.macs_fn, self.summaries = checkpointer, macs_fn, summaries
        self.view = view if view is not None else (lambda params: params)
        self.pending: list[tuple[int, Any]] = []  # (step, device metrics) not yet checked
        self.window: list[dict] = []  # checked host metrics since the last progress line
        self.last_mean: dict = {}  # the mean metrics of the last progress line
        self.last_saved = checkpointer.latest_step()
        self._last_log = (time.perf_counter(), start_step)

    def flush(self, step: int, state, *, log: bool) -> None:
        for s, device_metrics in self.pending:
            metrics = self.parallel.unreplicate(device_metrics)
            if not np.isfinite(metrics["loss"]):
                self.checkpointer.wait_until_finished()
                raise FloatingPointError(
                    f"non-finite loss {float(metrics['loss'])} at step {s} of phase {self.name!r}; "
                    f"the last good checkpoint (step {self.last_saved}) in {self.checkpointer.directory} is kept"
                )
            self.window.append({k: float(v) for k, v in metrics.items()})
        self.pending.clear()
        if log and self.window:
            self._log(step, state)

    def _log(self, step: int, state) -> None:
        now = time.perf_counter()
        rate = (step - self._last_log[1]) / max(now - self._last_log[0], 1e-9)
        self._last_log = (now, step)
        mean = self.last_mean = mean_metrics(self.window)
        self.window.clear()
        host = self.parallel.unreplicate(state)
        channels = channel_summary(self.view(host.params), self.mask) if self.mask is not None else None
        macs = self.macs_fn(host.variables) if self.macs_fn is not None else None
        logging.info(format_progress(self.name, step, self.total_steps, rate, mean, channels, macs))
        scalars = {f"train/{k}": v for k, v in mean.items()} | {"train/steps_per_second": rate}
        if channels is not None:
            scalars |= {"channels/kept": channels["kept"], "channels/kept_ratio": channels["ratio"]}
            scalars |= {f"kept_channels/{n}": k for n, (k, _) in channels["per_layer"].items()}
            self.summaries.histograms(step, {f"pi/{n}": pi for n, pi in channels["pi"].items()})
        if macs is not None:
            scalars |= {"macs/expected": macs["macs"], "macs/ratio": macs["ratio"]}
        self.summaries.scalars(step, scalars)
