"""The MAC-budget evidence (issue 24): test accuracy at the same MACs on Fashion-MNIST, every arm
under one code version, several seeds, and a stated test.

    nohup nice -n 19 python scripts/pareto.py --plan=main > workdirs/pareto/main.out 2>&1 &
    nohup nice -n 19 python scripts/pareto.py --plan=main,long > workdirs/pareto/all.out 2>&1 &
    nohup nice -n 19 python scripts/pareto.py --plan=latency > workdirs/pareto/latency.out 2>&1 &  # alone
    python scripts/pareto.py --list                  # planned / done / missing per plan, time estimate
    python scripts/pareto.py --render_only           # re-render the page from the records alone
    python scripts/pareto.py --pin=COMMIT            # the code version the runs train with (see below)
    kill PID                                         # stops the runner and its training run (resumable)

Running. Each run is one demo pipeline (configs/fashion_mnist.py:lambda, phases train, prune, finetune,
evaluate, report) in its own workdir, WORKROOT/<commit[:12]>/<plan>/<arm>_<budget>_s<seed>. A run
whose record exists is skipped; an interrupted run resumes from its checkpoints (the same command
again); a failed run is logged and the others go on (exit status 1 at the end). The runner lowers
its own priority to nice 19 (children inherit it) and holds a lock per plan, so a second runner of
the same plan (another session) stops at once. It re-renders the page when it ends.

One code version. The runs do not train with the checkout's code: they train with a snapshot of
the pinned commit (docs/results/pareto/code_version.json; ``git archive`` of soft_prune_jax/,
configs/ and launch/ into WORKROOT/code/<commit>/, imported through PYTHONPATH, checked before the
first run). The first run pins HEAD when nothing is pinned; ``--pin=COMMIT`` pins another (after
the issues that change training have landed). So runs made in later sessions, after the checkout
has moved on, still train with the same code. Verdicts are drawn only from records whose
``code_version`` is the pinned commit and that ran without ``--override``; other records are
listed, never tested. Records of earlier code live in docs/results/pareto/archive/.

Records. As soon as a run ends, docs/results/pareto/<plan>/<arm>_<budget>_s<seed>.json is written
atomically (tmp + os.replace), holding: the workdir's full resolved config (config.json), the code
version (pinned commit; a snapshot of it, so never dirty) and the runner's own commit and dirty
flag, the command, the seed and data order, the schedule per phase, the widths and where they came
from, accuracy and MACs, the machine and device, library versions, start and end times (UTC ISO),
wall time and every attempt.

Arms (plan main: budgets 0.3 and 0.5 of the dense MACs, seeds 0-2, the demo's 4 epochs; the data
order of epoch e of a phase is fixed by (seed, e), the same for every arm):
  scp                 SCP with config.target_macs_ratio = budget: 3 epochs (LR x0.1 after 2),
                      prune, 1 fine-tune epoch
  scp_widths_scratch  SCP's final widths (from the scp record of the same plan, budget and seed, so
                      it runs after it) trained from scratch as a dense network for the same 4 epochs
  uniform             every width of the demo network scaled by one factor to the budget's MACs,
                      trained from scratch (Liu et al. 2019's baseline)
  random              random widths at the budget's MACs, trained from scratch: per-layer factors
                      drawn from U(0.1, 1) (seeded by seed and budget), then one common scale found
                      by bisection so that the MACs are nearest the budget
  slimming            Network Slimming's settings (L1 1e-4 on BN scales from 0.5, plain momentum, wd
                      1e-4, fine-tune from LR 0.1) cut at the budget's MACs, on the same 3 + 1 epochs:
                      "Network Slimming, 4-epoch budget", not Liu et al.'s full recipe (docs/method.md)
  dense               the full network (budget 1), once per seed
Plan long: budget 0.3, seeds 0-2, 15 epochs (SCP 12 + 3, LR x0.1 after 8; from scratch 15, LR x0.1
after 12): scp, scp_widths_scratch, uniform; its own table. Plan cost (not in the default): SCP with
config.cost_aware_penalty at main's budgets and schedule, shown in main's table when it has records.

Plan latency (issue 23 item 4; not in the default: --plan=main,long,latency): budgets 0.5 and 0.7 of
the full demo network's MEASURED latency at batch 64, seeds 0-2, main's schedule; its own table
("4-epoch, latency budget") whose reference is scp_latency:
  scp_latency         SCP with config.target_latency_ratio = budget (the pipeline lands the cut on
                      latency measured at benchmark_batch_sizes[0] = 64 during prune): 3 + 1 epochs
  scp_macs_latency    SCP with config.target_macs_ratio = the macs_ratio of the scp_latency record of
                      the same budget and seed (so it runs after it): "SCP, MAC budget at the latency
                      arm's MACs". The pipeline cannot land a MAC-budget run on a latency, so this arm
                      sits at the latency arm's MACs, and its own measured latency is what it is.
  uniform_latency     every width scaled by one factor, trained from scratch for 4 epochs; the factor
                      chosen before the first run of each budget, once for every seed (saved in
                      WORKROOT/<commit[:12]>/latency/uniform_latency_<budget>_search.json), by
                      bisection over the factor: each step times the network at random init against
                      the full one (batch 64, time_interleaved, medians, SEARCH_RUNS runs); the
                      measured widths nearest the budget are kept, the trials go into the record.
Every run of this plan then has its final model (the workdir's finetuned/ artifact, else compact/)
timed by the runner against the full demo network at random init (input 28x28x1, batch 64,
time_interleaved, LATENCY_RUNS runs, medians), with the pinned code in a child process
(``--measure_latency``); the record's ``latency`` holds batch, dense_ms, model_ms, ratio, runs and the
load average, and the table shows that ratio (one rule for every arm; prune.json's own landing stays
in ``budget_record``). The runs do no benchmark phase. Other runners on the machine (other plans,
other sessions) add noise to these timings: run this plan alone. A latency ratio belongs to the
machine that measured it: the arms of one block (budget and seed) run on one device (the runner skips
the rest of a block timed elsewhere; a width search timed elsewhere is set aside and redone), blocks
may run on different machines (each session may get another one), and the table names the device of
each block.

The test (``compare``), per table (one code version, one schedule): for each budget, the table's
reference (``Plan.reference``: scp, or scp_latency in the latency table) against every other arm
there. The within-group variance is pooled over every group of the table (dense included):
s_p^2 = sum (n_g - 1) s_g^2 / sum (n_g - 1), df = sum (n_g - 1). Difference d = mean(reference) -
mean(arm) in points, SE = s_p sqrt(1/n_1 + 1/n_2), two-sided pooled t test (scipy.stats.t).
Family-wise level 95% over the table's planned comparisons, Holm-Bonferroni step-down (missing
comparisons count, as p = 1). Each interval is at the level of its Holm step, 1 - alpha / (m - i + 1)
for the i-th smallest p, frozen at the first step that fails, so an interval excludes 0 exactly
when Holm rejects. A difference the test cannot resolve is "no difference shown", with the minimum
detectable effect at 80% power at that level: (t_{1 - a/2, df} + t_{0.8, df}) SE.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import importlib.metadata
import io
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from typing import Iterable, NamedTuple, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAW_DIR = os.path.join(ROOT, "docs", "results", "pareto")
ARCHIVE = "archive"
PIN_FILE = "code_version.json"
PAGE = os.path.join(ROOT, "docs", "RESULTS.md")
PLOT = os.path.join(ROOT, "docs", "results", "pareto.png")
WORKROOT = os.path.join(ROOT, "workdirs", "pareto")
BEGIN, END = "<!-- PARETO:BEGIN (scripts/pareto.py) -->", "<!-- PARETO:END -->"
SCHEMA = 2
SNAPSHOT_PATHS = ("soft_prune_jax", "configs", "launch", "pyproject.toml")
LIBRARIES = ("jax", "jaxlib", "flax", "optax", "numpy", "scipy", "orbax-checkpoint", "ml-collections")
TENSORFLOW = ("tensorflow", "tensorflow-cpu")  # whichever distribution is installed
TENSORFLOW_DATASETS = "tensorflow-datasets"

DEMO_WIDTHS = (32, 32, "M", 64, 64, "M", 128)  # models.vgg.FMNIST_CNN_WIDTHS; masked_bn<i> is the i-th int
DEMO_INPUT = (28, 28, 1)
RANDOM_LOW = 0.1  # random arm: per-layer factors from U(RANDOM_LOW, 1)
RANDOM_STREAM = 24  # random arm: the generator is seeded by (RANDOM_STREAM, seed, budget in thousandths)

# The test.
CONFIDENCE = 0.95
POWER = 0.80

# The latency plan's timings (the runner's own, after each run; and the uniform factor's search).
LATENCY_BATCH = 64
LATENCY_RUNS = 50  # each run's final model against the dense network
SEARCH_RUNS = 30  # each step of the uniform_latency factor's bisection
SEARCH_STEPS = 6  # the factor to within 1/64

ARMS = ("scp", "scp_widths_scratch", "uniform", "random", "slimming", "scp_cost", "dense",
        "scp_latency", "scp_macs_latency", "uniform_latency")  # fmt: skip
FROM_SCRATCH = ("scp_widths_scratch", "uniform", "random", "dense", "uniform_latency")
NOT_COMPARED = ("dense",)  # at another budget (1.0): shown, never tested against the reference
# Arms that need another arm's record of the same plan, budget and seed (run after it).
SOURCE_ARM = {"scp_widths_scratch": "scp", "scp_macs_latency": "scp_latency"}


class Plan(NamedTuple):
    """A set of runs that share one schedule. ``table``: plans with the same table share one table
    and one test family (and their schedule must agree)."""

    name: str
    table: str
    arms: tuple
    budgets: tuple
    seeds: int
    train_epochs: int  # SCP and Slimming: trained this long, then pruned
    train_boundaries: tuple  # LR x lr_decay after these epochs of the train phase
    finetune_epochs: int  # then fine-tuned this long (boundaries scaled by the pipeline)
    reference: str = "scp"  # every comparison of the table: this arm against another at the same budget
    measures_latency: bool = False  # the runner times each run's final model (the record's ``latency``)

    @property
    def total_epochs(self) -> int:
        return self.train_epochs + self.finetune_epochs

    @property
    def scratch_boundaries(self) -> tuple:
        # From scratch for the same total epochs, LR x0.1 where SCP's fine-tuning starts (the demo's
        # 4-epoch runs from scratch drop it after epoch 3).
        return (self.train_epochs,)


PLANS = {
    "main": Plan("main", "4-epoch", ("scp", "scp_widths_scratch", "uniform", "random", "slimming", "dense"),
                 (0.3, 0.5), 3, 3, (2,), 1),
    "long": Plan("long", "15-epoch", ("scp", "scp_widths_scratch", "uniform"), (0.3,), 3, 12, (8,), 3),
    "cost": Plan("cost", "4-epoch", ("scp_cost",), (0.3, 0.5), 3, 3, (2,), 1),
    "latency": Plan("latency", "4-epoch, latency budget", ("scp_latency", "scp_macs_latency", "uniform_latency"),
                    (0.5, 0.7), 3, 3, (2,), 1, reference="scp_latency", measures_latency=True),
}  # fmt: skip
DEFAULT_PLANS = ("main", "long")


def label(arm: str, total_epochs: int) -> str:
    return {
        "scp": "SCP (targeted)",
        "scp_cost": "SCP, cost-aware penalty",
        "scp_widths_scratch": "SCP's widths, from scratch",
        "uniform": "uniform widths, from scratch",
        "random": "random widths, from scratch",
        "slimming": f"Network Slimming, {total_epochs}-epoch budget",
        "dense": "dense",
        "scp_latency": "SCP, latency budget",
        "scp_macs_latency": "SCP, MAC budget at the latency arm's MACs",
        "uniform_latency": "uniform widths at the measured latency, from scratch",
    }.get(arm, arm)


def short_name(arm: str) -> str:
    """The reference's name in the comparisons' rows and verdicts."""
    return {"scp": "SCP", "scp_latency": "SCP (latency budget)"}.get(arm, arm)


class Run(NamedTuple):
    plan: str
    arm: str
    budget: float
    seed: int

    @property
    def name(self) -> str:
        return run_name(self.arm, self.budget, self.seed)


def run_name(arm: str, budget: float, seed: int) -> str:
    return f"{arm}_{budget:g}_s{seed}"


def plan_runs(plan: Plan, seeds: Optional[int] = None) -> list[Run]:
    """Every run of ``plan``, seed by seed (so that a partial plan holds whole seeds), at each budget
    in the plan's arm order, which puts the arms another arm reads (``SOURCE_ARM``: scp, scp_latency)
    before the arms that read them."""
    arms = [a for a in plan.arms if a != "dense"]
    runs = []
    for seed in range(plan.seeds if seeds is None else seeds):
        for budget in plan.budgets:
            runs += [Run(plan.name, a, float(budget), seed) for a in arms]
        if "dense" in plan.arms:
            runs.append(Run(plan.name, "dense", 1.0, seed))
    return runs


def table_reference(plans: Sequence[Plan]) -> str:
    """The one reference arm of a table made of ``plans`` (plans sharing a table must agree)."""
    references = {p.reference for p in plans}
    if len(references) != 1:
        raise ValueError(f"plans {[p.name for p in plans]} share a table but not a reference: {sorted(references)}")
    return references.pop()


def planned_comparisons(plans: Sequence[Plan]) -> list[tuple[float, str]]:
    """(budget, arm) of every planned comparison reference vs arm in a table made of ``plans``."""
    reference = table_reference(plans)
    out = []
    for plan in plans:
        for budget in plan.budgets:
            out += [(float(budget), a) for a in plan.arms if a not in (reference, *NOT_COMPARED)]
    return sorted(set(out), key=lambda c: (c[0], ARMS.index(c[1])))


# ---------------------------------------------------------------------------------------------
# The test.
# ---------------------------------------------------------------------------------------------


def pooled_sd(groups: Iterable[Sequence[float]]) -> tuple[float, int]:
    """(s_p, df): the within-group SD pooled over ``groups``; groups of one value add nothing."""
    ss, df = 0.0, 0
    for values in groups:
        n = len(values)
        if n > 1:
            mean = sum(values) / n
            ss += sum((v - mean) ** 2 for v in values)
            df += n - 1
    return (math.sqrt(ss / df) if df else float("nan")), df


def holm_levels(pvalues: Sequence[float], alpha: float) -> tuple[list[bool], list[float]]:
    """Holm-Bonferroni over ``pvalues``: (rejected, the per-test level of its interval). The i-th
    smallest p is tested at alpha / (m - i + 1) until one fails; that one and every later one keep
    the failing step's level, so each interval excludes 0 exactly when its test rejects."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda k: pvalues[k])
    rejected, levels = [False] * m, [0.0] * m
    failed_at = None
    for i, k in enumerate(order):
        step = i if failed_at is None else failed_at
        level = alpha / (m - step)
        if failed_at is None and pvalues[k] <= level:
            rejected[k] = True
        elif failed_at is None:
            failed_at = i
        levels[k] = level
    return rejected, levels


def compare(
    groups: dict,
    comparisons: Sequence[tuple],
    confidence: float = CONFIDENCE,
    power: float = POWER,
) -> list[dict]:
    """The stated test. ``groups``: {key: accuracies (fractions)}; ``comparisons``: (key_a, key_b)
    pairs, the whole family (a pair with a missing group counts with p = 1 and gets no interval).
    Returns one dict per comparison, in order: diff (a - b), se, t, df, p, rejected, level (the
    family-corrected two-sided level of its test and interval), low/high, mde (minimum detectable
    effect at ``power`` and that level), n_a, n_b; all differences in the groups' units."""
    from scipy import stats

    sd, df = pooled_sd(groups.values())
    alpha = 1.0 - confidence
    rows = []
    for a, b in comparisons:
        ga, gb = groups.get(a), groups.get(b)
        row = {"a": a, "b": b, "n_a": len(ga or ()), "n_b": len(gb or ()), "pooled_sd": sd, "df": df}
        if not ga or not gb or not df:
            row.update(diff=None, se=None, t=None, p=1.0)
        else:
            diff = sum(ga) / len(ga) - sum(gb) / len(gb)
            se = sd * math.sqrt(1 / len(ga) + 1 / len(gb))
            t = diff / se if se > 0 else math.copysign(math.inf, diff) if diff else 0.0
            row.update(diff=diff, se=se, t=t, p=float(2 * stats.t.sf(abs(t), df)))
        rows.append(row)
    rejected, levels = holm_levels([r["p"] for r in rows], alpha)
    for row, rej, level in zip(rows, rejected, levels):
        row["level"] = level
        row["rejected"] = bool(rej and row["diff"] is not None)
        if row["diff"] is None:
            row.update(low=None, high=None, mde=None)
            continue
        half = stats.t.ppf(1 - level / 2, df) * row["se"]
        row.update(
            low=row["diff"] - half,
            high=row["diff"] + half,
            mde=(stats.t.ppf(1 - level / 2, df) + stats.t.ppf(power, df)) * row["se"],
        )
    return rows


# ---------------------------------------------------------------------------------------------
# Widths.
# ---------------------------------------------------------------------------------------------


def _macs(widths: Sequence) -> int:
    """MACs per example of the demo network with ``widths``, read off its graph as the pipeline's report
    counts them (``traced.macs``), from shapes alone (nothing is computed)."""
    import jax
    import jax.numpy as jnp

    from soft_prune_jax.graph import groups, ir
    from soft_prune_jax.models import get_model
    from soft_prune_jax.ops import fast_conv
    from soft_prune_jax.traced import macs

    model = get_model("fmnist_cnn", 10, widths=tuple(widths))
    x = jax.ShapeDtypeStruct((1,) + DEMO_INPUT, jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
    with fast_conv.flax_conv_formulation("xla"):  # one equation per conv, as the pipeline traces
        graph = ir.trace(lambda v, x: model.apply(v, x, train=False), dict(variables), x)
    return macs.count(groups.analyze(graph, strip=1)).macs


_MACS_CACHE: dict = {}


def macs_of(widths: Sequence) -> int:
    key = tuple(widths)
    if key not in _MACS_CACHE:
        _MACS_CACHE[key] = _macs(key)
    return _MACS_CACHE[key]


def full_widths(conv_widths: Sequence[int], template: Sequence = DEMO_WIDTHS) -> tuple:
    """The demo's widths with its convs' widths replaced by ``conv_widths`` (pools kept in place)."""
    convs = sum(w != "M" for w in template)
    if len(conv_widths) != convs:
        raise ValueError(f"{len(conv_widths)} widths for the demo network's {convs} convs: {list(conv_widths)}")
    it = iter(conv_widths)
    return tuple("M" if w == "M" else int(next(it)) for w in template)


def _nearest(budget: float, widths_of, low: float, high: float) -> tuple:
    """The widths ``widths_of(s)`` (MACs non-decreasing in s) whose MACs ratio is nearest ``budget``."""
    full = macs_of(DEMO_WIDTHS)
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if macs_of(widths_of(mid)) / full < budget else (low, mid)
    return min({widths_of(low), widths_of(high)}, key=lambda w: abs(macs_of(w) / full - budget))


def scaled_widths(factor: float, widths: Sequence = DEMO_WIDTHS) -> tuple:
    return tuple(w if w == "M" else max(1, int(round(w * factor))) for w in widths)


def uniform_widths(budget: float) -> tuple:
    """Every width scaled by one factor: the widths whose MACs are nearest ``budget`` x dense."""
    return _nearest(budget, scaled_widths, 0.0, 1.0)


def random_factors(budget: float, seed: int) -> list[float]:
    import numpy as np

    rng = np.random.default_rng([RANDOM_STREAM, int(seed), int(round(1000 * budget))])
    return [float(f) for f in rng.uniform(RANDOM_LOW, 1.0, sum(w != "M" for w in DEMO_WIDTHS))]


def random_widths(budget: float, seed: int) -> tuple:
    """Random widths at the budget: per-layer factors f_i ~ U(0.1, 1) (seeded by seed and budget),
    width_i = clip(round(s f_i w_i), 1, w_i), the common scale s found by bisection."""
    factors = random_factors(budget, seed)
    convs = [w for w in DEMO_WIDTHS if w != "M"]

    def widths_of(s):
        return full_widths([min(w, max(1, int(round(s * f * w)))) for f, w in zip(factors, convs)])

    return _nearest(budget, widths_of, 0.0, 1.0 / min(factors))


def widths_from_record(record: dict) -> tuple:
    """The compact network's widths in a finished run's record (its ``widths``: masked_bn0, 1, ...)."""
    return full_widths(record["widths"])


def kept_widths(report: dict) -> list[int]:
    """Kept channels of masked_bn0, masked_bn1, ... from a workdir's report.json."""
    kept = (report.get("prune") or {}).get("kept_channels") or {}
    return [kept[k] for k in sorted(kept, key=lambda k: int(k.rsplit("bn", 1)[1]))]


# ---------------------------------------------------------------------------------------------
# Measured latency (plan latency): run with the pinned code, in a child process (``--measure_latency``).
# ---------------------------------------------------------------------------------------------


def uniform_latency_search(budget: float, timer, steps: int = SEARCH_STEPS) -> dict:
    """The uniformly scaled widths whose MEASURED latency ratio is nearest ``budget``: bisection over
    the factor in (0, 1], one timing per new widths (``timer(widths)`` -> {'ratio', ...}); latency
    grows with the factor only roughly (noise, slow odd widths), so the widths kept are the measured
    ones nearest the budget, not the last midpoint. Returns the choice and every trial."""
    low, high, trials = 0.0, 1.0, {}
    for _ in range(steps):
        mid = (low + high) / 2
        widths = scaled_widths(mid)
        if widths not in trials:
            trials[widths] = {"factor": mid, "widths": list(widths), **timer(widths)}
        low, high = (mid, high) if trials[widths]["ratio"] < budget else (low, mid)
    best = min(trials.values(), key=lambda t: abs(t["ratio"] - budget))
    return {
        "budget": budget,
        "device": best.get("device"),
        "widths": best["widths"],
        "factor": best["factor"],
        "ratio": best["ratio"],
        "steps": steps,
        "trials": list(trials.values()),
    }


def search_source(search: dict) -> str:
    return (
        f"uniform at the measured latency: factor {search['factor']:.4f} on every width, measured latency "
        f"{search['ratio']:.3f} of the full demo network (budget {search['budget']:g}), chosen by bisection over "
        f"the factor before the runs ({len(search['trials'])} timings, each random init, batch {LATENCY_BATCH}, "
        f"{search.get('runs', SEARCH_RUNS)} interleaved runs, medians; trials in widths_search)"
    )


def _demo_model(widths: Sequence):
    """The demo network at ``widths`` with random weights (only its speed is measured)."""
    import jax
    import jax.numpy as jnp

    from soft_prune_jax.models import get_model

    model = get_model("fmnist_cnn", 10, widths=tuple(widths))
    return model, model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + DEMO_INPUT), train=False)


def time_against_dense(model, variables, runs: int) -> dict:
    """Median latency of ``model`` and of the full demo network at random init, taking turns run by
    run (``time_interleaved``), at batch ``LATENCY_BATCH``."""
    from soft_prune_jax.measure import timing

    x = timing.random_inputs(LATENCY_BATCH, DEMO_INPUT, 0)
    dense, dense_variables = _demo_model(DEMO_WIDTHS)
    before = load_average()
    result = timing.time_interleaved(
        {
            "dense": (lambda v, x: dense.apply(v, x, train=False), (dense_variables, x)),
            "model": (lambda v, x: model.apply(v, x, train=False), (variables, x)),
        },
        runs=runs,
    )
    dense_ms, model_ms = result["dense"]["median_ms"], result["model"]["median_ms"]
    return {
        "batch": LATENCY_BATCH,
        "dense_ms": dense_ms,
        "model_ms": model_ms,
        "ratio": model_ms / dense_ms,
        "runs": runs,
        "load_average": {"before": before, "after": load_average()},
        "device": timing.device_description(),
        "measured_at": utc_now(),
    }


def measure_latency(spec: dict) -> dict:
    """What ``--measure_latency=JSON`` prints: {'artifact': workdir} times the workdir's final model
    (finetuned/, else compact/) against the dense network; {'search_uniform': budget} runs the uniform
    factor's search. Run with the pinned code on PYTHONPATH (``snapshot_latency``)."""
    import soft_prune_jax

    if "artifact" in spec:
        which = "finetuned" if os.path.isdir(os.path.join(spec["artifact"], "finetuned")) else "compact"
        model, variables = soft_prune_jax.load_artifact(os.path.join(spec["artifact"], which))
        result = {**time_against_dense(model, variables, LATENCY_RUNS), "model": which}
    elif "search_uniform" in spec:
        timer = lambda widths: time_against_dense(*_demo_model(widths), SEARCH_RUNS)  # noqa: E731
        result = {**uniform_latency_search(float(spec["search_uniform"]), timer), "runs": SEARCH_RUNS}
    else:
        raise ValueError(f"--measure_latency={json.dumps(spec)}: expected 'artifact' or 'search_uniform'")
    return {**result, "package": soft_prune_jax.__file__}


def snapshot_latency(code: str):
    """``measure_latency`` in a child process that imports the pinned code (checked, as ``probe``)."""

    def measure(spec: dict) -> dict:
        done = subprocess.run(
            [sys.executable, os.path.abspath(__file__), f"--measure_latency={json.dumps(spec)}"],
            cwd=code,
            env=snapshot_env(code),
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"--measure_latency={json.dumps(spec)} exited {done.returncode}: {done.stderr[-2000:]}")
        found = json.loads(done.stdout.strip().splitlines()[-1])
        if not os.path.realpath(found.pop("package")).startswith(os.path.realpath(code) + os.sep):
            raise RuntimeError(f"the latency was measured with code outside the snapshot {code}")
        return found

    return measure


# ---------------------------------------------------------------------------------------------
# Commands.
# ---------------------------------------------------------------------------------------------


def command(
    run: Run, plan: Plan, workdir: str, widths: Optional[Sequence] = None, target_macs: Optional[float] = None
) -> list[str]:
    """launch/train.py's command line for ``run`` (relative to the code snapshot it runs in).
    ``widths``: a from-scratch arm's; ``target_macs``: scp_macs_latency's MAC budget."""
    cmd = [
        sys.executable,
        "launch/train.py",
        "--config=configs/fashion_mnist.py:lambda",  # SCP's fixed lambda; each arm sets its own budget
        f"--workdir={workdir}",
        f"--config.seed={run.seed}",
        # Accuracy and MACs; a latency budget is landed during prune; the runner times the final model itself.
        "--phases=train,prune,finetune,evaluate,report",
    ]
    pruned = [
        f"--config.num_epochs={plan.train_epochs}",
        f"--config.lr_boundaries={tuple(plan.train_boundaries)!r}",
        f"--config.finetune_epochs={plan.finetune_epochs}",
    ]
    if run.arm in ("scp", "scp_cost"):
        cmd += [f"--config.target_macs_ratio={run.budget}"] + pruned
        if run.arm == "scp_cost":
            cmd.append("--config.cost_aware_penalty=True")
    elif run.arm == "scp_latency":
        cmd += [f"--config.target_latency_ratio={run.budget}"] + pruned
    elif run.arm == "scp_macs_latency":
        if target_macs is None:
            raise ValueError(f"{run.name}: needs the scp_latency record's MACs ratio")
        cmd += [f"--config.target_macs_ratio={target_macs:.6g}"] + pruned
    elif run.arm == "slimming":  # Network Slimming's settings, cut at the budget, on the same epochs
        cmd += [
            "--config.method=slimming",
            "--config.slimming.l1=1e-4",
            "--config.slimming.scale_init=0.5",
            "--config.weight_decay=1e-4",
            "--config.nesterov=False",
            f"--config.slimming.target_macs_ratio={run.budget}",
            "--config.finetune_learning_rate=0.1",
        ] + pruned
    elif run.arm in FROM_SCRATCH:
        cmd += [
            "--config.method=dense",
            f"--config.num_epochs={plan.total_epochs}",
            f"--config.lr_boundaries={tuple(plan.scratch_boundaries)!r}",
            "--config.finetune_epochs=0",
        ]
        if run.arm != "dense":
            if widths is None:
                raise ValueError(f"{run.name}: a from-scratch arm needs its widths")
            cmd.append(f"--config.model_kwargs={{'widths': {tuple(widths)!r}}}")
    else:
        raise ValueError(f"unknown arm {run.arm!r}: expected one of {', '.join(ARMS)}")
    return cmd


def schedule_of(config: dict) -> dict:
    """The schedule per phase of a run, from its resolved config (the fine-tune phase's boundaries
    are the train phase's scaled to its epochs, as soft_prune_jax/pipeline/phases/finetune.py does)."""
    epochs, fine = int(config["num_epochs"]), int(config.get("finetune_epochs") or 0)
    optimiser = {
        "momentum": config.get("momentum"),
        "nesterov": config.get("nesterov"),
        "weight_decay": config.get("weight_decay"),
        "batch_size": config.get("batch_size"),
        "lr_decay": config.get("lr_decay"),
    }
    boundaries = list(config.get("lr_boundaries") or [])
    train = {
        "epochs": epochs,
        "method": config.get("method"),
        "learning_rate": config.get("learning_rate"),
        "lr_boundaries": boundaries,
        **optimiser,
    }
    finetune = {"epochs": fine}
    if fine:
        finetune.update(
            learning_rate=config.get("finetune_learning_rate"),
            lr_boundaries=[b * fine / epochs for b in boundaries],
            **optimiser,
        )
    return {"total_epochs": epochs + fine, "train": train, "finetune": finetune}


def data_order_of(config: dict) -> dict:
    return {
        "kind": "numpy permutation",
        "seed": config.get("seed"),
        "rule": "epoch e of a phase reads the training split in np.random.default_rng(...).permutation order, "
        "seeded by loop.epoch_seed(seed, e) (soft_prune_jax/training/loop.py, soft_prune_jax/training/data/"
        "reading.py); each phase counts its epochs from 0, so a fine-tune epoch e reads in the order of "
        "training epoch e",
        "augment": config.get("augment"),
        "num_train_examples": config.get("num_train_examples"),
    }


# ---------------------------------------------------------------------------------------------
# Provenance.
# ---------------------------------------------------------------------------------------------


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def git(*args: str, cwd: str = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def checkout_state() -> dict:
    """The runner's own checkout: commit and whether tracked files differ from it."""
    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.CalledProcessError) as e:
        return {"commit": None, "dirty": None, "error": str(e)}


def library_versions() -> dict:
    out = {}
    for name in LIBRARIES + (TENSORFLOW_DATASETS,):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["tensorflow"] = None
    for name in TENSORFLOW:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out["tensorflow"] = f"{importlib.metadata.version(name)} ({name})"
            break
    out["python"] = platform.python_version()
    return out


def machine_of(device: str) -> dict:
    return {
        "device": device,  # soft_prune_jax.measure.timing.device_description(), in the snapshot
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }


def load_average() -> Optional[list]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------
# The pinned code.
# ---------------------------------------------------------------------------------------------


def read_pin(raw_dir: str = RAW_DIR) -> Optional[dict]:
    path = os.path.join(raw_dir, PIN_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_pin(commit: str, raw_dir: str = RAW_DIR, note: str = "") -> dict:
    full = git("rev-parse", "--verify", f"{commit}^{{commit}}")
    pin = {"commit": full, "pinned_at": utc_now(), "subject": git("log", "-1", "--format=%s", full)[:200]}
    if note:
        pin["note"] = note
    os.makedirs(raw_dir, exist_ok=True)
    _write_json(os.path.join(raw_dir, PIN_FILE), pin)
    return pin


def snapshot(commit: str, workroot: str) -> str:
    """WORKROOT/code/<commit>: soft_prune_jax/, configs/, launch/ of ``commit`` (git archive)."""
    target = os.path.join(workroot, "code", commit)
    if os.path.isfile(os.path.join(target, "launch", "train.py")):
        return target
    tmp = f"{target}.tmp{os.getpid()}"
    os.makedirs(tmp, exist_ok=True)
    data = subprocess.run(
        ["git", "archive", "--format=tar", commit, *SNAPSHOT_PATHS], cwd=ROOT, check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(tmp, filter="data")
    try:
        os.replace(tmp, target)
    except OSError:  # another runner (another plan) made it meanwhile: the same commit, the same files
        if not os.path.isfile(os.path.join(target, "launch", "train.py")):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def snapshot_env(code: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = code + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def probe(code: str) -> dict:
    """Imports the package in a fresh process the way the runs do: its path (must be the snapshot's)
    and the device description."""
    script = (
        "import json, soft_prune_jax; from soft_prune_jax.measure.timing import device_description; "
        "print(json.dumps({'package': soft_prune_jax.__file__, 'device': device_description()}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=code, env=snapshot_env(code), check=True, capture_output=True, text=True
    ).stdout
    found = json.loads(out.strip().splitlines()[-1])
    if not os.path.realpath(found["package"]).startswith(os.path.realpath(code) + os.sep):
        raise RuntimeError(f"the runs would import soft_prune_jax from {found['package']}, not the snapshot {code}")
    return found


# ---------------------------------------------------------------------------------------------
# Records and the runner.
# ---------------------------------------------------------------------------------------------


def _write_json(path: str, data) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def record_path(raw_dir: str, run: Run) -> str:
    return os.path.join(raw_dir, run.plan, f"{run.name}.json")


def make_record(
    run: Run,
    plan: Plan,
    *,
    report: dict,
    config: dict,
    code_version: str,
    runner: dict,
    cmd: Sequence[str],
    overrides: Sequence[str],
    widths_source: str,
    device: str,
    attempts: Sequence[dict],
    full_macs: int,
    latency: Optional[dict] = None,
    extra: Optional[dict] = None,
) -> dict:
    """The record of one finished run, from its workdir's report.json and config.json. ``full_macs``:
    the demo network's MACs at full widths (a from-scratch arm's report counts its own widths as dense).
    ``latency``: the runner's timing of the final model (plan latency); ``extra``: the arm's inputs
    (the uniform factor's search, the MACs target's source)."""
    summary = report["pruning"]["summary"]
    evaluate = report.get("evaluate") or {}
    accuracy = evaluate.get("final_accuracy")
    if accuracy is None:
        accuracy = evaluate.get("compact_accuracy_after_finetune", evaluate.get("compact_accuracy_before_finetune"))
    last = attempts[-1]
    return {
        "schema": SCHEMA,
        "plan": run.plan,
        "table": plan.table,
        "arm": run.arm,
        "label": label(run.arm, plan.total_epochs),
        "budget": run.budget,
        "seed": run.seed,
        "code_version": code_version,
        "code_dirty": False,  # the runs train with a snapshot of the pinned commit
        "runner": runner,
        "command": list(cmd),
        "overrides": list(overrides),
        "config": config,
        "schedule": schedule_of(config),
        "data_order": data_order_of(config),
        "widths": kept_widths(report),
        "widths_source": widths_source,
        "test_accuracy": accuracy,
        "test_examples": evaluate.get("test_examples"),
        "trained_hard_masked_accuracy": evaluate.get("trained_hard_masked_accuracy"),
        "accuracy_before_finetune": evaluate.get("compact_accuracy_before_finetune"),
        "macs": summary["compact_macs"],
        "dense_macs": full_macs,
        "model_dense_macs": summary["dense_macs"],
        "macs_ratio": summary["compact_macs"] / full_macs,
        "params": summary.get("compact_params"),
        "budget_record": (report.get("prune") or {}).get("budget"),
        "pipeline_timings": report.get("timings") or {},
        "started_at": attempts[0]["started_at"],  # the first attempt's start (a resumed run has several)
        "ended_at": last["ended_at"],
        "wall_seconds": round(sum(a["seconds"] or 0.0 for a in attempts), 2),  # attempts killed hard: unknown
        "attempts": list(attempts),
        "machine": machine_of(device),
        "libraries": library_versions(),
        **({"latency": latency} if latency is not None else {}),
        **(extra or {}),
    }


class Locked(RuntimeError):
    pass


@contextlib.contextmanager
def plan_lock(workroot: str, plan: str):
    os.makedirs(workroot, exist_ok=True)
    with open(os.path.join(workroot, f"{plan}.lock"), "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise Locked(f"another runner holds plan {plan!r} ({f.name}); it resumes where it is") from e
        f.write(f"{os.getpid()} {socket.gethostname()} {utc_now()}\n")
        f.flush()
        yield


def load_json(path: str) -> Optional[dict]:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


class Inputs(NamedTuple):
    """What a run needs besides its plan: a from-scratch arm's widths, scp_macs_latency's MACs target,
    where they came from, record fields about them; ``waits``: a source record is missing."""

    widths: Optional[tuple] = None
    target_macs: Optional[float] = None
    source: str = "pruned by the run itself"
    extra: Optional[dict] = None
    waits: bool = False


def device_slug(device: str) -> str:
    """A file-name-safe form of a device description ('cpu: AMD EPYC (2 cores)' -> 'cpu-amd-epyc-2-cores')."""
    return "-".join(re.findall(r"[a-z0-9]+", device.lower())) or "unknown"


def search_device(search: dict) -> Optional[str]:
    """The device a width search timed on (older searches hold it only in their trials)."""
    return search.get("device") or next((t.get("device") for t in search.get("trials", ()) if t.get("device")), None)


def uniform_search(budget: float, search_dir: str, latency, device: Optional[str] = None) -> dict:
    """The uniform_latency widths of ``budget``: searched once (``latency({'search_uniform': budget})``)
    and saved under ``search_dir``, so every seed, and a resumed run, trains the same widths. A search
    timed on another device than ``device`` says nothing about this one: it is set aside (its device in
    its file name) and searched again."""
    path = os.path.join(search_dir, f"uniform_latency_{budget:g}_search.json")
    search = load_json(path)
    found = search_device(search) if search is not None else None
    if search is not None and device and found and found != device:
        aside = path[: -len(".json")] + f".{device_slug(found)}.json"
        os.replace(path, aside)
        print(f"the width search {path} timed {found!r}, not this {device!r}: kept as {aside}; searching again")
        search = None
    if search is None:
        search = latency({"search_uniform": budget})
        os.makedirs(search_dir, exist_ok=True)
        _write_json(path, search)
    return search


def inputs_for(run: Run, raw_dir: str, search_dir: str, latency, device: Optional[str] = None) -> Inputs:
    """The inputs of ``run`` (``latency``: the measuring function, called only by uniform_latency, whose
    width search must have timed ``device``)."""
    if run.arm == "dense":
        return Inputs(source="the full demo network")
    if run.arm == "uniform_latency":
        search = uniform_search(run.budget, search_dir, latency, device)
        return Inputs(widths=tuple(search["widths"]), source=search_source(search), extra={"widths_search": search})
    if run.arm == "scp_macs_latency":
        source = Run(run.plan, SOURCE_ARM[run.arm], run.budget, run.seed)
        rel = os.path.relpath(record_path(raw_dir, source), raw_dir)
        record = load_json(record_path(raw_dir, source))
        if record is None:
            return Inputs(source=f"waits for {rel}", waits=True)
        target = float(record["macs_ratio"])
        return Inputs(
            target_macs=target,
            source=f"pruned by the run itself at config.target_macs_ratio = {target:.6g}, the MACs / dense of {rel}",
            extra={"macs_target": {"ratio": target, "from": rel}},
        )
    if run.arm in FROM_SCRATCH:
        widths, source = widths_for(run, raw_dir)
        return Inputs(widths=widths, source=source, waits=widths is None)
    return Inputs()


def widths_for(run: Run, raw_dir: str) -> tuple[Optional[tuple], str]:
    """(widths, where they came from) of a from-scratch arm; (None, why) while it must wait."""
    if run.arm == "uniform":
        return uniform_widths(run.budget), "uniform: one factor on every width, MACs nearest the budget"
    if run.arm == "random":
        factors = ", ".join(f"{f:.3f}" for f in random_factors(run.budget, run.seed))
        return random_widths(run.budget, run.seed), (
            f"random: factors U({RANDOM_LOW}, 1) from default_rng([{RANDOM_STREAM}, seed, "
            f"{int(round(1000 * run.budget))}]) = [{factors}], scaled to the budget's MACs"
        )
    if run.arm == "scp_widths_scratch":
        source = Run(run.plan, "scp", run.budget, run.seed)
        rel = os.path.relpath(record_path(raw_dir, source), raw_dir)
        record = load_json(record_path(raw_dir, source))
        if record is None:
            return None, f"waits for {rel}"
        return widths_from_record(record), f"SCP's final widths, from {rel}"
    return None, "pruned by the run itself"


def block_device(plan: Plan, run: Run, raw_dir: str) -> Optional[str]:
    """The device that timed the records of ``run``'s block (its budget and seed, every arm) in a plan
    that measures latency; None while the block has no record. A latency ratio belongs to the device
    that measured it, so the arms compared within a block run on one device (the blocks of a plan may
    differ: each session may get another machine)."""
    for arm in plan.arms:
        record = load_json(record_path(raw_dir, Run(plan.name, arm, run.budget, run.seed)))
        if record is not None:
            return (record.get("machine") or {}).get("device")
    return None


def run_plan(
    plan: Plan,
    *,
    code: str,
    code_version: str,
    device: str,
    workroot: str,
    raw_dir: str,
    log: str,
    overrides: Sequence[str] = (),
    only: Optional[set] = None,
    seeds: Optional[int] = None,
    latency=None,
) -> int:
    """Runs (or resumes) every run of ``plan`` without a record; returns the number that failed.
    ``latency``: spec -> dict, ``measure_latency`` with the pinned code (``snapshot_latency(code)``
    unless given; only plan latency uses it)."""
    failed = 0
    runner = checkout_state()
    full_macs = macs_of(DEMO_WIDTHS)
    latency = latency or snapshot_latency(code)
    plan_dir = os.path.join(workroot, code_version[:12], plan.name)
    for run in plan_runs(plan, seeds):
        if only and run.name not in only:
            continue
        path = record_path(raw_dir, run)
        existing = load_json(path)
        if existing is not None:
            if existing.get("code_version") != code_version:
                print(
                    f"skip {run.plan}/{run.name}: its record is of code {str(existing.get('code_version'))[:12]}, "
                    f"not the pinned {code_version[:12]}; git mv it to {ARCHIVE}/ to rerun it",
                    flush=True,
                )
            continue
        elsewhere = block_device(plan, run, raw_dir) if plan.measures_latency else None
        if elsewhere not in (None, device):
            print(
                f"skip {run.plan}/{run.name}: its block (budget {run.budget:g}, seed {run.seed}) was timed on "
                f"{elsewhere!r}, not this {device!r}; the arms of a block share one device (git mv the block's "
                f"records to {ARCHIVE}/ to run it here)",
                flush=True,
            )
            continue
        try:
            inputs = inputs_for(run, raw_dir, plan_dir, latency, device)
        except (OSError, ValueError, RuntimeError, subprocess.CalledProcessError) as e:
            failed += 1
            print(f"FAILED {run.plan}/{run.name}: its inputs: {e}; going on", flush=True)
            continue
        if inputs.waits:
            print(f"skip {run.plan}/{run.name}: {inputs.source}", flush=True)
            continue
        workdir = os.path.join(plan_dir, run.name)
        cmd = command(run, plan, workdir, inputs.widths, inputs.target_macs) + [f"--config.{o}" for o in overrides]
        os.makedirs(workdir, exist_ok=True)
        state_path = os.path.join(workdir, "runner_attempts.json")
        attempts = load_json(state_path) or []
        start, t0 = utc_now(), time.monotonic()
        attempts.append({"started_at": start, "ended_at": None, "seconds": None, "returncode": None,
                         "load_average_start": load_average()})  # fmt: skip
        _write_json(state_path, attempts)
        print(f"{start} {run.plan}/{run.name}: $ {' '.join(cmd)}", flush=True)
        rc = None
        try:
            with open(log, "a") as f:
                f.write(f"{start} {run.plan}/{run.name}\n$ {' '.join(cmd)}\n")
                f.flush()
                # Stopping the runner (SIGTERM, Ctrl-C) kills this child too; it resumes next time.
                rc = subprocess.run(
                    cmd, cwd=code, env=snapshot_env(code), stdout=f, stderr=subprocess.STDOUT
                ).returncode
        finally:
            attempts[-1].update(
                ended_at=utc_now(),
                seconds=round(time.monotonic() - t0, 2),
                returncode=rc if rc is not None else "stopped",
                load_average_end=load_average(),
            )
            _write_json(state_path, attempts)
        if rc != 0:
            failed += 1
            print(f"FAILED {run.plan}/{run.name} (exit {rc}; see {log}); going on", flush=True)
            continue
        measured = None
        if plan.measures_latency:  # the final model, timed by the runner: the number the table shows
            try:
                measured = latency({"artifact": workdir})
            except (OSError, ValueError, RuntimeError, subprocess.CalledProcessError) as e:
                failed += 1
                print(f"FAILED {run.plan}/{run.name}: timing its final model: {e}; going on", flush=True)
                continue
        record = make_record(
            run,
            plan,
            report=load_json(os.path.join(workdir, "report.json")),
            config=load_json(os.path.join(workdir, "config.json")),
            code_version=code_version,
            runner=runner,
            cmd=cmd,
            overrides=overrides,
            widths_source=inputs.source,
            device=device,
            attempts=attempts,
            full_macs=full_macs,
            latency=measured,
            extra=inputs.extra,
        )
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _write_json(path, record)
        timed = f", latency {measured['ratio']:.3f}" if measured else ""
        print(f"{record['ended_at']} wrote {path}: {100 * record['test_accuracy']:.2f}%, "
              f"MACs {record['macs_ratio']:.3f}{timed}, {record['wall_seconds']:.0f} s", flush=True)  # fmt: skip
    return failed


# ---------------------------------------------------------------------------------------------
# Reading the records.
# ---------------------------------------------------------------------------------------------


def load_records(raw_dir: str = RAW_DIR) -> tuple[list[dict], list[dict]]:
    """(records of the plans' folders, archived records), each tagged with its file ('_file')."""
    current, archived = [], []
    if not os.path.isdir(raw_dir):
        return current, archived
    for folder in sorted(os.listdir(raw_dir)):
        full = os.path.join(raw_dir, folder)
        if not os.path.isdir(full):
            continue
        for name in sorted(os.listdir(full)):
            if name.endswith(".json"):
                with open(os.path.join(full, name)) as f:
                    record = json.load(f)
                record["_file"] = f"{folder}/{name}"
                (archived if folder == ARCHIVE else current).append(record)
    return current, archived


def usable(record: dict, version: Optional[str]) -> bool:
    """Whether a record may enter the verdicts: the pinned code version, the plan as declared."""
    return bool(version) and record.get("code_version") == version and not record.get("overrides")


def planned_counts(records: Sequence[dict], version: Optional[str]) -> dict[str, tuple[int, int]]:
    """{plan: (usable records that the plan declares, planned runs)}."""
    out = {}
    for name, plan in PLANS.items():
        names = {r.name for r in plan_runs(plan)}
        done = {
            run_name(r["arm"], float(r["budget"]), r["seed"])
            for r in records
            if r.get("plan") == name and usable(r, version)
        }
        out[name] = (len(names & done), len(names))
    return out


def group(records: Sequence[dict]) -> dict[tuple[str, float], list[dict]]:
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in records:
        groups.setdefault((r["arm"], float(r["budget"])), []).append(r)
    return groups


def table_plans(table: str, records: Sequence[dict]) -> list[Plan]:
    """The plans of a table: the default ones, and the optional ones (cost, latency) with records."""
    return [
        p
        for p in PLANS.values()
        if p.table == table and (p.name in DEFAULT_PLANS or any(r["plan"] == p.name for r in records))
    ]


def table_comparisons(table: str, records: Sequence[dict]) -> tuple[list[tuple], dict]:
    """The family of a table (the planned comparisons of its plans, each the table's reference against
    another arm) and {(arm, budget): accuracies}."""
    plans = table_plans(table, records)
    reference = table_reference(plans)
    groups = {key: [r["test_accuracy"] for r in rows] for key, rows in group(records).items()}
    pairs = [((reference, b), (arm, b)) for b, arm in planned_comparisons(plans)]
    return pairs, groups


# ---------------------------------------------------------------------------------------------
# Rendering: from the records alone.
# ---------------------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _pts(x: float) -> str:
    return f"{100 * x:+.2f}"


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def _sd(xs: Sequence[float]) -> Optional[float]:
    if len(xs) < 2:
        return None
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _runner(record: dict) -> str:
    runner = record.get("runner") or {}
    return f"{str(runner.get('commit'))[:12]}{' (dirty)' if runner.get('dirty') else ''}"


def _phase(phase: dict) -> str:
    if not phase.get("epochs"):
        return "none"
    text = f"{phase['epochs']} epochs"
    if phase.get("method"):
        text += f", {phase['method']}"
    boundaries = [round(b, 3) for b in phase.get("lr_boundaries") or []]
    return (
        f"{text}, LR {phase['learning_rate']} x{phase['lr_decay']} after epochs {boundaries}, "
        f"momentum {phase['momentum']} (nesterov {phase['nesterov']}), wd {phase['weight_decay']}, "
        f"batch {phase['batch_size']}"
    )


def latency_ratio(rows: Sequence[dict]) -> Optional[float]:
    """Mean over ``rows`` of the runner's measured latency ratio (None where none was measured)."""
    ratios = [r["latency"]["ratio"] for r in rows if r.get("latency")]
    return _mean(ratios) if ratios else None


def device_lines(records: Sequence[dict]) -> list[str]:
    """Which device timed which block (budget, seed) of a latency table, and a warning where a block mixes
    devices (its arms then stand at ratios of different machines)."""
    blocks: dict = {}
    for r in records:
        blocks.setdefault((float(r["budget"]), r["seed"]), set()).add((r.get("machine") or {}).get("device", "?"))
    by_device: dict = {}
    for (budget, seed), devices in sorted(blocks.items()):
        if len(devices) == 1:
            by_device.setdefault(next(iter(devices)), []).append(f"{budget:g}/s{seed}")
    mixed = [f"{b:g}/s{s}" for (b, s), devices in sorted(blocks.items()) if len(devices) > 1]
    lines = [
        "",
        "Devices: each block (budget/seed) ran all its arms on one machine, its ratios that machine's; the "
        "blocks ran on " + "; ".join(f"{d}: {', '.join(bs)}" for d, bs in sorted(by_device.items())) + ".",
    ]
    if mixed:
        lines[-1] += f" **Warning: blocks {', '.join(mixed)} mix devices; their arms are not at comparable ratios.**"
    return lines


def table_section(table: str, records: Sequence[dict], counts: dict, version: str) -> list[str]:
    plans = table_plans(table, records)
    total = plans[0].total_epochs
    names = {a: label(a, total) for a in ARMS}
    reference = short_name(table_reference(plans))
    timed = any(p.measures_latency for p in plans)
    status = "; ".join(f"plan {p.name}: {counts[p.name][0]} of {counts[p.name][1]} planned runs" for p in plans)
    pinned = f"code version `{version[:12]}`" if version else "code version not pinned yet"
    lines = [f"### {table} schedule", "", f"{status} ({pinned})."]
    if not records:
        return lines + ["", "No record of this code version yet.", ""]
    machines = sorted({(r.get("machine") or {}).get("device", "?") for r in records})
    runners = sorted({_runner(r) for r in records})
    times = sorted(r["started_at"] for r in records)
    folders = ", ".join(f"`docs/results/pareto/{p}/`" for p in sorted({r["plan"] for r in records}))
    lines += [
        "",
        f"{len(records)} records in {folders}, "
        f"all trained with commit `{version}`; device: {'; '.join(machines)}; runner at {', '.join(runners)}; "
        f"started {times[0]} to {times[-1]}. Test accuracy of the final network on the test images (mean "
        "over seeds, SD over seeds); MACs of the final network over the dense network's.",
        "",
    ]
    if timed:
        lines[-1:-1] = [
            "",
            "Budgets here are fractions of the full network's measured latency at batch "
            f"{LATENCY_BATCH}. Latency / dense: the final network (its finetuned/ artifact, else compact/) timed by "
            f"the runner after its run against the full demo network at random init, batch {LATENCY_BATCH}, "
            "interleaved runs, medians, mean over seeds (`latency` in each record); the same rule for every arm.",
        ]
        lines[-1:-1] = device_lines(records) if len(machines) > 1 else []
    lines += [
        "| budget | arm | seeds | test accuracy | SD (points) | MACs / dense |"
        + (" latency / dense (measured) |" if timed else "")
        + " mean wall |",
        "|---|---|---|---|---|---|" + ("---|" if timed else "") + "---|",
    ]
    order = {a: i for i, a in enumerate(ARMS)}
    groups = group(records)
    for (arm, budget), rows in sorted(groups.items(), key=lambda kv: (kv[0][1], order.get(kv[0][0], 99))):
        acc = [r["test_accuracy"] for r in rows]
        sd = _sd(acc)
        lines.append(
            f"| {budget:g} | {names.get(arm, arm)} | {len(rows)} ({', '.join(str(r['seed']) for r in rows)}) "
            f"| {_pct(_mean(acc))} | {'-' if sd is None else f'{100 * sd:.2f}'} "
            f"| {_pct(_mean([r['macs_ratio'] for r in rows]))} "
            + (f"| {'-' if latency_ratio(rows) is None else _pct(latency_ratio(rows))} " if timed else "")
            + f"| {_mean([r['wall_seconds'] for r in rows]):.0f} s |"
        )
    pairs, accs = table_comparisons(table, records)
    results = compare(accs, pairs)
    sd, df = pooled_sd(accs.values())
    lines += [
        "",
        f"The test (scripts/pareto.py, `compare`): pooled within-group SD {100 * sd:.3f} points over the "
        f"{len(accs)} groups above (df = {df}); two-sided pooled t test of {reference} against each other arm at "
        f"the same budget; {int(100 * CONFIDENCE)}% family-wise over the {len(pairs)} planned comparisons "
        "(Holm-Bonferroni); intervals at the level of each comparison's Holm step."
        if df
        else "",
        "",
    ]
    lines += [
        f"| budget | comparison | difference, points ({reference} - arm) | interval | Holm verdict "
        "| detectable (80% power) |",
        "|---|---|---|---|---|---|",
    ]
    for row in results:
        budget, other = row["b"][1], names.get(row["b"][0], row["b"][0])
        if row["diff"] is None:
            lines.append(f"| {budget:g} | {reference} vs {other} | not run yet | | | |")
            continue
        verdict = (
            f"{reference} {'better' if row['diff'] > 0 else 'worse'}" if row["rejected"] else "no difference shown"
        )
        lines.append(
            f"| {budget:g} | {reference} vs {other} | {_pts(row['diff'])} (n = {row['n_a']}, {row['n_b']}) "
            f"| {_pts(row['low'])} to {_pts(row['high'])} ({100 * (1 - row['level']):.2f}%) | {verdict} "
            f"| {100 * row['mde']:.2f} |"
        )
    lines += [
        "",
        f"{reference} better / worse: the test resolves the difference at the family-wise level. No difference "
        "shown: it cannot; the last column is the smallest difference (points) these runs could have detected with "
        f"{int(100 * POWER)}% power at that comparison's level, so a true difference below it may exist.",
    ]
    lines += ["", "Schedules as recorded (first record of each arm):", "",
              "| arm | train phase | fine-tune phase |", "|---|---|---|"]  # fmt: skip
    seen = set()
    for r in sorted(records, key=lambda r: order.get(r["arm"], 99)):
        if r["arm"] in seen:
            continue
        seen.add(r["arm"])
        schedule = r["schedule"]
        lines.append(
            f"| {names.get(r['arm'], r['arm'])} | {_phase(schedule['train'])} | {_phase(schedule['finetune'])} |"
        )
    return lines + [""]


def archive_section(archived: Sequence[dict]) -> list[str]:
    """The archived records: those of the first version of this script (no ``code_version``), then
    those set aside for another reason (a latency plan's records timed on another device)."""
    legacy = [r for r in archived if not r.get("code_version")]
    return legacy_section(legacy) + set_aside_section([r for r in archived if r.get("code_version")])


def set_aside_section(records: Sequence[dict]) -> list[str]:
    if not records:
        return []
    lines = [
        "### Archived records: set aside, no verdicts",
        "",
        f"{len(records)} records in `docs/results/pareto/{ARCHIVE}/` made by this runner and set aside: a "
        "latency plan's ratios belong to the device that timed them, and a table's records must come from one "
        "device, so records timed on a device other than the one the plan was finished on are kept here.",
        "",
        "| record | code | device | test accuracy | MACs / dense | latency / dense |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(records, key=lambda r: r["_file"]):
        timed = r.get("latency") or {}
        ratio = f"{timed['ratio']:.3f}" if timed.get("ratio") is not None else "-"
        lines.append(
            f"| `{r['_file']}` | `{str(r.get('code_version'))[:12]}` | {(r.get('machine') or {}).get('device', '?')} "
            f"| {_pct(r['test_accuracy'])} | {_pct(r['macs_ratio'])} | {ratio} |"
        )
    return lines + [""]


def legacy_section(archived: Sequence[dict]) -> list[str]:
    if not archived:
        return []
    old = sorted(r["_file"].split("/", 1)[1][:-5] for r in archived if "data_order" not in r)
    lines = [
        "### Archived records: old code, mixed versions, no verdicts",
        "",
        f"{len(archived)} records in `docs/results/pareto/{ARCHIVE}/`, committed 2026-11-26 from runs of the "
        "first version of this script on a shared 2-core AMD EPYC. They mix code versions (the runs "
        f"{', '.join(old)} predate the data-order, host-memory, CPU-split and tf.data changes; the others "
        "postdate them), hold no config, commit, schedule or time, and most groups have one seed. They are "
        "shown as they were and enter no verdict. Their schedules, as that version set them: SCP 3 epochs (LR "
        "x0.1 after 2) + 1 fine-tune epoch from LR 0.01; Network Slimming 3 "
        "epochs + 1 fine-tune epoch from LR 0.1 without Nesterov (its 4-epoch budget, not Liu et al.'s "
        "recipe); dense and uniform 4 epochs from scratch, LR x0.1 after 3.",
        "",
        "| budget | method | seeds | test accuracy per seed | MACs / dense | data order per seed |",
        "|---|---|---|---|---|---|",
    ]
    groups: dict = {}
    for r in archived:
        groups.setdefault((float(r["budget"]), r["method"]), []).append(r)
    order = {a: i for i, a in enumerate(ARMS)}
    for (budget, method), rows in sorted(groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 99))):
        rows = sorted(rows, key=lambda r: r["seed"])
        orders = [r.get("data_order", "tf.data shuffle buffer") for r in rows]
        lines.append(
            f"| {budget:g} | {label(method, 4)} | {len(rows)} | {', '.join(_pct(r['test_accuracy']) for r in rows)} "
            f"| {', '.join(_pct(r['macs_ratio']) for r in rows)} | {', '.join(orders)} |"
        )
    return lines + [""]


def render_section(current: Sequence[dict], archived: Sequence[dict], pin: Optional[dict], plot: Optional[str]) -> str:
    version = (pin or {}).get("commit")
    counts = planned_counts(current, version)
    done, planned = sum(counts[p][0] for p in DEFAULT_PLANS), sum(counts[p][1] for p in DEFAULT_PLANS)
    lines = [
        BEGIN,
        "## MAC budgets: accuracy at the same MACs on Fashion-MNIST",
        "",
        "Rendered by `python scripts/pareto.py` from the records in `docs/results/pareto/` alone. Every "
        "arm at 0.3 and 0.5 of the dense MACs, 3 seeds, the same total epochs and data order per seed (epoch e "
        "of each phase reads the order fixed by the seed and e): "
        "SCP (targeted), SCP's final widths trained from scratch, the uniformly thinner network, random "
        "widths at the same MACs, Network Slimming on the same 4-epoch budget, and dense; plus 15 epochs at "
        "0.3 for SCP, SCP's widths and uniform. Pin the code once the open issues that change training have "
        "landed (`python scripts/pareto.py --pin=HEAD`, then commit `docs/results/pareto/code_version.json`; "
        "without a pin the first run pins HEAD), then start or resume the runs in the background (they skip "
        "what exists and resume what was interrupted):",
        "",
        "```bash",
        "mkdir -p workdirs/pareto",
        "nohup nice -n 19 python scripts/pareto.py --plan=main,long >> workdirs/pareto/runs.out 2>&1 &",
        "python scripts/pareto.py --list         # planned / done / missing, and the time left",
        "python scripts/pareto.py --render_only  # this section from the records",
        "```",
        "",
        "The runs train with a snapshot of one pinned commit (`docs/results/pareto/code_version.json`), "
        "whatever the checkout holds when they run; each record holds its config, commit, seed, data order, "
        "schedule per phase, machine, library versions and times. The script's docstring states the arms "
        "and the test.",
        "",
        "Latency budgets (issue 23): plan latency (`--plan=latency`, not in the default; run it alone on the "
        "machine, since the runner times every final model) has SCP with a latency budget, SCP with a MAC budget "
        "at the latency arm's MACs and the uniformly thinner network at the same measured latency, at 0.5 and 0.7 "
        "of the dense network's measured latency; its table appears below once it has records.",
        "",
        f"**Status:** {done} of {planned} planned runs exist under code version "
        f"{f'`{version[:12]}`' if version else '(not pinned yet)'} ("
        + ", ".join(f"plan {p}: {counts[p][0]} of {counts[p][1]}" for p in DEFAULT_PLANS)
        + ").",
        "",
    ]
    usable_records = [r for r in current if usable(r, version)]
    others = [r for r in current if not usable(r, version)]
    if not usable_records:
        lines += [
            "The evidence is being re-run under one code version (issue 24). Until these runs exist this "
            "page draws no verdict on whether SCP is worth it at a MAC budget; the archived records below "
            "are not evidence for one.",
            "",
        ]
    for table in sorted({p.table for p in PLANS.values()}, key=lambda t: (int(t.split("-")[0]), t)):
        rows = [r for r in usable_records if r.get("table") == table]
        if rows or any(counts[p.name][1] for p in PLANS.values() if p.table == table and p.name in DEFAULT_PLANS):
            lines += table_section(table, rows, counts, version or "")
    if others:
        versions = sorted({str(r.get("code_version"))[:12] for r in others})
        lines += [
            f"Not in any verdict: {len(others)} records of another code version or run with overrides "
            f"({', '.join(r['_file'] for r in others)}; versions {', '.join(versions)}). Move them to "
            f"`docs/results/pareto/{ARCHIVE}/`.",
            "",
        ]
    if plot:
        lines += [f"![test accuracy against MACs (and measured latency)](results/{os.path.basename(plot)})", ""]
    lines += archive_section(archived)
    return "\n".join(lines).rstrip("\n") + "\n\n" + END + "\n"


def plot_records(records: Sequence[dict], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in records if r.get("latency") and r.get("table") == PLANS["latency"].table]
    fig, axes = plt.subplots(1, 2 if timed else 1, figsize=(13.0 if timed else 6.5, 4.0), squeeze=False)
    ax = axes[0][0]
    try:
        for table, marker in (("4-epoch", "o"), ("15-epoch", "s")):
            groups = group([r for r in records if r.get("table") == table])
            for arm in ARMS:
                points = sorted((b, rows) for (a, b), rows in groups.items() if a == arm)
                if not points:
                    continue
                xs = [_mean([r["macs_ratio"] for r in rows]) for _, rows in points]
                ys = [100 * _mean([r["test_accuracy"] for r in rows]) for _, rows in points]
                err = [100 * (_sd([r["test_accuracy"] for r in rows]) or 0.0) for _, rows in points]
                ax.errorbar(xs, ys, yerr=err, marker=marker, capsize=3, linestyle="none" if arm == "dense" else "-",
                            label=f"{label(arm, int(table.split('-')[0]))} ({table})")  # fmt: skip
        ax.set_xlabel("MACs / dense MACs")
        ax.set_ylabel("test accuracy (%), mean and SD over seeds")
        ax.set_title("Fashion-MNIST, demo network: accuracy against MACs")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        if timed:
            plot_latency(axes[0][1], timed)
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=120)
    finally:
        plt.close(fig)
    return path


def plot_latency(ax, records: Sequence[dict]) -> None:
    """Accuracy against the runner's measured latency ratio (means over seeds, SD bars both ways)."""
    groups = group(records)
    for arm in ARMS:
        points = sorted((b, rows) for (a, b), rows in groups.items() if a == arm)
        if not points:
            continue
        ratios = [[r["latency"]["ratio"] for r in rows] for _, rows in points]
        accs = [[100 * r["test_accuracy"] for r in rows] for _, rows in points]
        ax.errorbar([_mean(x) for x in ratios], [_mean(y) for y in accs], xerr=[_sd(x) or 0.0 for x in ratios],
                    yerr=[_sd(y) or 0.0 for y in accs], marker="^", capsize=3, label=label(arm, 4))  # fmt: skip
    ax.set_xlabel(f"measured latency / dense latency (batch {LATENCY_BATCH})")
    ax.set_ylabel("test accuracy (%), mean and SD over seeds")
    ax.set_title("latency budgets: accuracy against measured latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


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
    tmp = f"{page}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, page)


def render(raw_dir: str = RAW_DIR, page: str = PAGE, plot: Optional[str] = PLOT) -> str:
    current, archived = load_records(raw_dir)
    pin = read_pin(raw_dir)
    ready = [r for r in current if usable(r, (pin or {}).get("commit"))]
    section = render_section(current, archived, pin, plot_records(ready, plot) if ready and plot else None)
    write_page(section, page)
    return section


# ---------------------------------------------------------------------------------------------
# Time estimate and the command line.
# ---------------------------------------------------------------------------------------------

# Arms without an archived record of their own are timed like one that trains the same way.
DEFAULT_SECONDS = 400.0  # without any record to go by
TIMED_LIKE = {"scp": "scp_cost", "scp_widths_scratch": "uniform", "random": "uniform", "scp_latency": "scp_cost",
              "scp_macs_latency": "scp_cost", "uniform_latency": "uniform"}  # fmt: skip


def seconds_per_run(archived: Sequence[dict], current: Sequence[dict] = ()) -> dict[str, float]:
    """Median wall seconds of a 4-epoch run per arm: this version's records where there are some,
    else the archived records made after the data-order change (the faster code)."""
    import statistics

    out = {}
    for arm in ARMS:
        mine = [r["wall_seconds"] * 4 / r["schedule"]["total_epochs"] for r in current if r.get("arm") == arm]
        old = [r["wall_seconds"] for r in archived if r.get("method") == TIMED_LIKE.get(arm, arm) and "data_order" in r]
        pick = mine or old
        out[arm] = statistics.median(pick) if pick else DEFAULT_SECONDS
    return out


def list_plans(raw_dir: str, names: Sequence[str]) -> str:
    current, archived = load_records(raw_dir)
    version = (read_pin(raw_dir) or {}).get("commit")
    per_run = seconds_per_run(archived, [r for r in current if usable(r, version)])
    counts = planned_counts(current, version)
    lines = [f"code version: {version or 'not pinned (the first run pins HEAD)'}"]
    for name in names:
        plan = PLANS[name]
        done = {
            run_name(r["arm"], float(r["budget"]), r["seed"])
            for r in current
            if r.get("plan") == name and usable(r, version)
        }
        missing = [r for r in plan_runs(plan) if r.name not in done]
        left = sum(per_run[r.arm] * plan.total_epochs / 4 for r in missing)
        lines.append(
            f"plan {name} ({plan.table}): {counts[name][0]} of {counts[name][1]} planned runs done; "
            f"about {left / 3600:.1f} h left on 2 cores, by the median wall time of earlier runs"
        )
        if missing:
            lines.append(f"  missing ({len(missing)}): {', '.join(r.name for r in missing)}")
    return "\n".join(lines)


def lower_priority() -> None:
    with contextlib.suppress(OSError):
        os.nice(max(0, 19 - os.nice(0)))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", default=",".join(DEFAULT_PLANS), help=f"comma-separated: {', '.join(PLANS)}")
    parser.add_argument("--list", action="store_true", help="print planned / done / missing runs, and exit")
    parser.add_argument("--render_only", action="store_true", help="only re-render the page from the records")
    parser.add_argument("--pin", default=None, help="pin this commit as the code the runs train with, and exit")
    parser.add_argument("--only", default="", help="comma-separated run names (e.g. scp_0.3_s0): only these")
    parser.add_argument("--seeds", type=int, default=None, help="run only the first N seeds of each plan")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="extra config override for every run, e.g. num_train_examples=512 (such records enter no verdict)",
    )
    parser.add_argument("--workroot", default=WORKROOT)
    parser.add_argument("--raw_dir", default=RAW_DIR)
    parser.add_argument("--page", default=PAGE)
    parser.add_argument("--no_render", action="store_true", help="do not re-render the page when the runs end")
    parser.add_argument("--measure_latency", default=None, help=argparse.SUPPRESS)  # the runner's child process
    args = parser.parse_args(argv)
    if args.measure_latency:
        print(json.dumps(measure_latency(json.loads(args.measure_latency))))
        return 0
    names = [p for p in args.plan.split(",") if p]
    unknown = [p for p in names if p not in PLANS]
    if unknown:
        parser.error(f"--plan={args.plan!r} has unknown {unknown}: expected some of {', '.join(PLANS)}")
    plot = (
        PLOT if os.path.abspath(args.raw_dir) == os.path.abspath(RAW_DIR) else os.path.join(args.raw_dir, "pareto.png")
    )
    if args.pin:
        pin = write_pin(args.pin, args.raw_dir)
        print(f"pinned {pin['commit']} ({pin['subject']}) in {os.path.join(args.raw_dir, PIN_FILE)}")
        return 0
    if args.list:
        print(list_plans(args.raw_dir, names))
        return 0
    if args.render_only:
        print(render(args.raw_dir, args.page, plot))
        return 0

    lower_priority()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the running child is killed with it
    pin = read_pin(args.raw_dir)
    if pin is None:
        pin = write_pin("HEAD", args.raw_dir, note="pinned by the first run")
        print(f"pinned HEAD = {pin['commit']} ({pin['subject']}); commit {PIN_FILE} with the records", flush=True)
    version = pin["commit"]
    code = snapshot(version, args.workroot)
    found = probe(code)
    print(f"code {version[:12]} in {code}; device {found['device']}", flush=True)
    log = os.path.join(args.workroot, f"pareto_{datetime.date.today().isoformat()}.log")
    failed = 0
    for name in names:
        try:
            with plan_lock(args.workroot, name):
                failed += run_plan(
                    PLANS[name],
                    code=code,
                    code_version=version,
                    device=found["device"],
                    workroot=args.workroot,
                    raw_dir=args.raw_dir,
                    log=log,
                    overrides=args.override,
                    only={n for n in args.only.split(",") if n} or None,
                    seeds=args.seeds,
                )
        except Locked as e:
            print(f"skip plan {name}: {e}", flush=True)
    if not args.no_render:
        render(args.raw_dir, args.page, plot)
    print(list_plans(args.raw_dir, names))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
