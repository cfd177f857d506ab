"""The MAC-budget evidence: test accuracy against MACs on Fashion-MNIST, every method at the same budgets.

    python scripts/pareto.py                       # run (or resume) every missing run, then render
    python scripts/pareto.py --render_only         # only re-render the page from the raw JSON
    python scripts/pareto.py --budgets=0.5 --methods=scp,uniform --seeds_at_half=3

Each (method, budget, seed) runs the demo pipeline (configs/fashion_mnist.py) in its own workdir
(WORKROOT/<method>_<budget>_s<seed>; an interrupted run resumes from its checkpoints) and, once it
finishes, leaves its raw record in docs/results/pareto/<method>_<budget>_s<seed>.json. Rendering
reads only those records: the section between the PARETO markers of docs/RESULTS.md (inserted at
the end when absent) and docs/results/pareto.png (test accuracy against MACs / dense MACs).

Methods, all with the same total epochs (the demo's train + fine-tune epochs):
  scp       SCP with config.target_macs_ratio = budget (the controller, then landing by z)
  scp_cost  the same with config.cost_aware_penalty
  slimming  Network Slimming (Liu et al.'s recipe: L1 on BN scales from 0.5, plain momentum, wd 1e-4),
            its global |scale| threshold at the budget's MACs, then fine-tuned
  uniform   the demo network with every width scaled by one factor so that its MACs match the
            budget, trained from scratch (Liu et al. 2019's baseline)
  dense     the full network (budget 1.0), once per seed
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
from typing import Iterable, Optional, Sequence

from soft_prune_jax.measure import benchmark, flops
from soft_prune_jax.models import get_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAW_DIR = os.path.join(ROOT, "docs", "results", "pareto")
PAGE = os.path.join(ROOT, "docs", "RESULTS.md")
PLOT = os.path.join(ROOT, "docs", "results", "pareto.png")
BEGIN, END = "<!-- PARETO:BEGIN (scripts/pareto.py) -->", "<!-- PARETO:END -->"

METHODS = ("scp", "scp_cost", "slimming", "uniform", "dense")
LABELS = {
    "scp": "SCP (targeted)",
    "scp_cost": "SCP, cost-aware penalty",
    "slimming": "Network Slimming",
    "uniform": "uniform, from scratch",
    "dense": "dense",
}
BUDGETS = (0.3, 0.5, 0.7)
BASELINES = ("slimming", "uniform")  # what the SCP variants are judged against
SINGLE_SEED_NOISE = 0.003  # with one seed per method, a difference within this counts as a tie
DEMO_WIDTHS = (32, 32, "M", 64, 64, "M", 128)  # models.vgg.FMNIST_CNN_WIDTHS
DEMO_INPUT = (28, 28, 1)
# The demo's schedule: 3 epochs of joint training (LR x0.1 after 2) + 1 of fine-tuning = 4 in all.
TRAIN_EPOCHS, FINETUNE_EPOCHS = 3, 1
FROM_SCRATCH_BOUNDARY = 3  # a 4-epoch run from scratch drops its LR after epoch 3 (about 2/3, as the demo)


def run_name(method: str, budget: float, seed: int) -> str:
    return f"{method}_{budget:g}_s{seed}"


def plan_runs(methods: Sequence[str], budgets: Sequence[float], seeds: int, seeds_at_half: int) -> list[tuple]:
    """(method, budget, seed) of every run: ``seeds`` seeds everywhere, ``seeds_at_half`` at budget 0.5,
    and the dense network once per seed it is needed for (budget 1.0)."""
    runs = []
    for method in methods:
        if method == "dense":
            continue
        for budget in budgets:
            n = max(seeds, seeds_at_half) if math.isclose(budget, 0.5) else seeds
            runs += [(method, float(budget), seed) for seed in range(n)]
    if "dense" in methods:
        n = max([seeds] + [seeds_at_half for b in budgets if math.isclose(b, 0.5)])
        runs += [("dense", 1.0, seed) for seed in range(n)]
    return runs


def scaled_widths(factor: float, widths: Sequence = DEMO_WIDTHS) -> tuple:
    return tuple(w if w == "M" else max(1, int(round(w * factor))) for w in widths)


def uniform_widths(budget: float, input_shape: Sequence[int] = DEMO_INPUT, widths: Sequence = DEMO_WIDTHS) -> tuple:
    """The widths, all scaled by one factor, whose MACs are closest to ``budget`` x the full network's."""

    def macs(w):
        return flops.count(get_model("fmnist_cnn", 10, widths=w, mask=None), None, input_shape).macs

    full = macs(tuple(widths))

    def ratio(w):
        return macs(w) / full

    low, high = 0.0, 1.0  # MACs grow with the factor: bisect, then take the nearest rounded widths
    for _ in range(30):
        mid = (low + high) / 2
        low, high = (mid, high) if ratio(scaled_widths(mid, widths)) < budget else (low, mid)
    candidates = {scaled_widths(f, widths) for f in (low, high)}
    return min(candidates, key=lambda w: abs(ratio(w) - budget))


def command(method: str, budget: float, seed: int, workdir: str) -> list[str]:
    cmd = [
        sys.executable,
        "launch/train.py",
        "--config=configs/fashion_mnist.py",
        f"--workdir={workdir}",
        f"--config.seed={seed}",
        "--phases=train,prune,finetune,evaluate,report",  # accuracy and MACs only: latency is not on this page
    ]
    if method in ("scp", "scp_cost"):
        cmd += [
            f"--config.target_macs_ratio={budget}",
            f"--config.num_epochs={TRAIN_EPOCHS}",
            f"--config.finetune_epochs={FINETUNE_EPOCHS}",
        ]
        if method == "scp_cost":
            cmd.append("--config.cost_aware_penalty=True")
    elif method == "slimming":  # Liu et al.'s recipe, cut at the budget, on the same total epochs
        cmd += [
            "--config.method=slimming",
            "--config.slimming.l1=1e-4",
            "--config.slimming.scale_init=0.5",
            "--config.weight_decay=1e-4",
            "--config.nesterov=False",
            f"--config.slimming.target_macs_ratio={budget}",
            f"--config.num_epochs={TRAIN_EPOCHS}",
            f"--config.finetune_epochs={FINETUNE_EPOCHS}",
            "--config.finetune_learning_rate=0.1",
        ]
    else:  # dense or uniform: trained from scratch for all the epochs
        cmd += [
            "--config.method=dense",
            f"--config.num_epochs={TRAIN_EPOCHS + FINETUNE_EPOCHS}",
            f"--config.lr_boundaries=({FROM_SCRATCH_BOUNDARY},)",
            "--config.finetune_epochs=0",
        ]
        if method == "uniform":
            cmd.append(f"--config.model_kwargs={{'widths': {uniform_widths(budget)!r}}}")
    return cmd


# How the training data of an epoch is ordered (soft_prune_jax/training/data.py). Records without the
# field were made before 2026-11-26, when a whole-split tf.data shuffle buffer ordered it: the same seed
# then gave another (equally random) order, so such a record is like one of another seed.
DATA_ORDER = "numpy permutation"
OLD_DATA_ORDER = "tf.data shuffle buffer"


def record_of(report: dict, method: str, budget: float, seed: int, full_macs: float) -> dict:
    """The raw record of one finished run, from its report.json."""
    summary = report["pruning"]["summary"]
    evaluate = report.get("evaluate") or {}
    accuracy = evaluate.get("compact_accuracy_after_finetune", evaluate.get("compact_accuracy_before_finetune"))
    return {
        "method": method,
        "budget": budget,
        "seed": seed,
        "macs": summary["compact_macs"],
        "macs_ratio": summary["compact_macs"] / full_macs,
        "test_accuracy": accuracy,
        "trained_hard_masked_accuracy": evaluate.get("trained_hard_masked_accuracy"),
        "budget_record": (report.get("prune") or {}).get("budget"),
        "wall_seconds": sum((report.get("timings") or {}).values()),
        "machine": machine(),
        "data_order": DATA_ORDER,
    }


def machine() -> str:
    return f"{benchmark.device_description()}, {platform.system()}"  # e.g. 'cpu: AMD EPYC ... (2 cores), Linux'


def run_all(runs: Iterable[tuple], workroot: str, log: str) -> None:
    """Runs (or resumes) every run without a raw record; writes each record as soon as its run ends."""
    full_macs = flops.count(get_model("fmnist_cnn", 10, mask=None), None, DEMO_INPUT).macs
    os.makedirs(RAW_DIR, exist_ok=True)
    for method, budget, seed in runs:
        name = run_name(method, budget, seed)
        raw = os.path.join(RAW_DIR, f"{name}.json")
        if os.path.exists(raw):
            continue
        workdir = os.path.join(workroot, name)
        cmd = command(method, budget, seed, workdir)
        print("$", " ".join(cmd), flush=True)
        with open(log, "a") as f:
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            subprocess.run(cmd, cwd=ROOT, check=True, stdout=f, stderr=subprocess.STDOUT)
        with open(os.path.join(workdir, "report.json")) as f:
            record = record_of(json.load(f), method, budget, seed, full_macs)
        with open(raw + ".tmp", "w") as f:
            json.dump(record, f, indent=2, sort_keys=True)
        os.replace(raw + ".tmp", raw)


# ---------------------------------------------------------------------------------------------
# Rendering: from the raw records alone.
# ---------------------------------------------------------------------------------------------


def load_records(raw_dir: str = RAW_DIR) -> list[dict]:
    records = []
    for name in sorted(os.listdir(raw_dir)) if os.path.isdir(raw_dir) else []:
        if name.endswith(".json"):
            with open(os.path.join(raw_dir, name)) as f:
                records.append(json.load(f))
    return records


def aggregate(records: Sequence[dict]) -> dict[tuple[str, float], dict]:
    """{(method, budget): mean and spread (min, max) of accuracy and MACs ratio over seeds, n}."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in records:
        groups.setdefault((r["method"], float(r["budget"])), []).append(r)
    out = {}
    for key, rows in groups.items():
        acc = [r["test_accuracy"] for r in rows]
        macs = [r["macs_ratio"] for r in rows]
        out[key] = {
            "n": len(rows),
            "acc": sum(acc) / len(acc),
            "acc_min": min(acc),
            "acc_max": max(acc),
            "macs": sum(macs) / len(macs),
            "macs_min": min(macs),
            "macs_max": max(macs),
            "seeds": sorted(r["seed"] for r in rows),
        }
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _spread(stats: dict, lo: str, hi: str) -> str:
    return "" if stats["n"] < 2 else f" ({_pct(stats[lo])} to {_pct(stats[hi])})"


def _judge(ours: dict, theirs: dict) -> tuple[str, float, float]:
    """'beats' / 'ties with' / 'loses to', the difference, and the noise it was judged against: the
    larger seed spread of the two (or, with one seed each, 0.3 points, about this demo's run-to-run
    spread)."""
    diff = ours["acc"] - theirs["acc"]
    spreads = [s["acc_max"] - s["acc_min"] for s in (ours, theirs) if s["n"] > 1]
    noise = max(spreads) if spreads else SINGLE_SEED_NOISE
    word = "ties with" if abs(diff) <= noise else ("beats" if diff > 0 else "loses to")
    return word, diff, noise


def verdicts(stats: dict[tuple[str, float], dict]) -> list[str]:
    """One plain sentence per SCP variant and budget, judged against each baseline there (Network
    Slimming, the pruning method SCP is published against; the uniformly thinner network trained from
    scratch, Liu et al.'s test). A difference counts only when it exceeds the noise (``_judge``)."""
    lines = []
    for budget in sorted({b for (_, b) in stats if b < 1.0}):
        baselines = [(m, stats[(m, budget)]) for m in BASELINES if (m, budget) in stats]
        for method in ("scp", "scp_cost"):
            ours = stats.get((method, budget))
            if ours is None or not baselines:
                continue
            parts = []
            for name, theirs in baselines:
                word, diff, noise = _judge(ours, theirs)
                parts.append(
                    f"{word} {LABELS[name]} ({_pct(theirs['acc'])}, MACs {_pct(theirs['macs'])}; "
                    f"{100 * diff:+.2f} points, noise {100 * noise:.2f})"
                )
            lines.append(
                f"- At {budget:g} of the dense MACs, {LABELS[method]} ({_pct(ours['acc'])}, MACs {_pct(ours['macs'])}) "
                + " and ".join(parts)
                + "."
            )
    return lines


def render_section(records: Sequence[dict], plot: Optional[str]) -> str:
    stats = aggregate(records)
    machines = sorted({r.get("machine", "?") for r in records})
    lines = [
        BEGIN,
        "## MAC budgets: accuracy against MACs on Fashion-MNIST",
        "",
        "Produced by `python scripts/pareto.py` from the raw records in `docs/results/pareto/` "
        f"(machine: {'; '.join(machines) or 'none yet'}). The demo network and data "
        "(configs/fashion_mnist.py), the same total epochs for every method "
        f"({TRAIN_EPOCHS + FINETUNE_EPOCHS}); test accuracy of the final network on the 10,000 test "
        "images; MACs of the final network over the full dense network's. With several seeds: the mean, "
        "and the range over seeds in brackets.",
        "",
    ]
    if not records:
        return "\n".join(lines + ["No finished run yet.", END]) + "\n"
    orders = sorted({r.get("data_order", OLD_DATA_ORDER) for r in records})
    if len(orders) > 1:
        old_runs = sorted(run_name(r["method"], r["budget"], r["seed"]) for r in records if "data_order" not in r)
        lines += [
            f"Data order: the runs {', '.join(old_runs)} were made when a tf.data shuffle buffer ordered "
            "each epoch, the others with a numpy permutation of the same seed (soft_prune_jax/training/data.py): "
            "the same seed gave a different but equally random order, so across that change a seed is in "
            "effect a new draw.",
            "",
        ]
    lines += ["| budget | method | seeds | test accuracy | MACs / dense |", "|---|---|---|---|---|"]
    order = {m: i for i, m in enumerate(METHODS)}
    for (method, budget), s in sorted(stats.items(), key=lambda kv: (kv[0][1], order.get(kv[0][0], 99))):
        lines.append(
            f"| {budget:g} | {LABELS.get(method, method)} | {s['n']} | {_pct(s['acc'])}"
            f"{_spread(s, 'acc_min', 'acc_max')} | {_pct(s['macs'])}{_spread(s, 'macs_min', 'macs_max')} |"
        )
    found = verdicts(stats)
    if found:
        lines += ["", "Where SCP wins and where it does not:", ""] + found
    if plot:
        lines += ["", f"![test accuracy against MACs](results/{os.path.basename(plot)})"]
    return "\n".join(lines + ["", END]) + "\n"


def plot_records(records: Sequence[dict], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = aggregate(records)
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    try:
        for method in METHODS:
            points = sorted((b, s) for (m, b), s in stats.items() if m == method)
            if not points:
                continue
            xs = [s["macs"] for _, s in points]
            ys = [100 * s["acc"] for _, s in points]
            err = [
                [100 * (s["acc"] - s["acc_min"]) for _, s in points],
                [100 * (s["acc_max"] - s["acc"]) for _, s in points],
            ]
            ax.errorbar(
                xs,
                ys,
                yerr=err,
                marker="o",
                capsize=3,
                label=LABELS[method],
                linestyle="none" if method == "dense" else "-",
            )
        ax.set_xlabel("MACs / dense MACs")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("Fashion-MNIST, demo network: accuracy against MACs")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=120)
    finally:
        plt.close(fig)
    return path


def write_page(section: str, page: str = PAGE) -> None:
    """Replaces the PARETO block of ``page`` (or appends it): the rest of the page is left as it is."""
    text = ""
    if os.path.exists(page):
        with open(page) as f:
            text = f.read()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section
    with open(page, "w") as f:
        f.write(text)


def render(raw_dir: str = RAW_DIR, page: str = PAGE, plot: str = PLOT) -> str:
    records = load_records(raw_dir)
    section = render_section(records, plot_records(records, plot) if records else None)
    write_page(section, page)
    return section


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--budgets", default=",".join(f"{b:g}" for b in BUDGETS))
    parser.add_argument("--seeds", type=int, default=1, help="seeds at every budget")
    parser.add_argument("--seeds_at_half", type=int, default=2, help="seeds at budget 0.5")
    parser.add_argument("--workroot", default=os.path.join(ROOT, "workdirs", "pareto"))
    parser.add_argument("--render_only", action="store_true")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"--methods={args.methods!r} has unknown {unknown}: expected a subset of {','.join(METHODS)}")
    budgets = [float(b) for b in args.budgets.split(",") if b]
    if not all(0 < b < 1 for b in budgets):
        parser.error(f"--budgets={args.budgets!r} is invalid: expected numbers in (0, 1)")
    if not args.render_only:
        os.makedirs(args.workroot, exist_ok=True)
        log = os.path.join(args.workroot, f"pareto_{datetime.date.today().isoformat()}.log")
        run_all(plan_runs(methods, budgets, args.seeds, args.seeds_at_half), args.workroot, log)
    print(render())


if __name__ == "__main__":
    main()
