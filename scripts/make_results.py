"""Writes its own sections of docs/RESULTS.md: every number in them is measured by this script on the
machine it runs on. The rest of the page (hand-written sections, scripts/pareto.py's block) is left as
it is: each run replaces only the text between its markers (appended at the end when the markers are
absent).

    python scripts/make_results.py                      # train what is missing, benchmark, write sections 1-3
    python scripts/make_results.py --skip_training      # only reuse finished Fashion-MNIST runs
    python scripts/make_results.py --archs=resnet56,vgg16 --runs=50
    python scripts/make_results.py --goals              # only the speed-goals section

Sections 1-3, between MAIN_BEGIN and MAIN_END (their provenance line first: date, machine):
1. Fashion-MNIST: dense vs SCP vs Network Slimming on the demo's 4-epoch budget (pruned to SCP's MACs;
   not Liu et al.'s full recipe, docs/method.md section 6) through the same pipeline
   (configs/fashion_mnist.py:lambda, `--config.method=...`): accuracy, MACs, parameters, latency.
2. Jitted latency of every architecture, dense vs compact, with random BN parameters pruning ~50% of
   each unit's channels (launch/benchmark.py --random_prune=0.5 --round_to=8): CIFAR-size
   models at batch 64, ImageNet ResNets at batch 1 (a 224x224 batch of 64 takes minutes per run on
   2 CPU cores); plus the SCP train step against the plain one.
3. The paper's CIFAR and ImageNet results beside the config that reproduces each.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR_ARCHS = ["fmnist_cnn", "vgg16", "vgg19", "resnet56", "resnet110", "resnet164", "densenet40"]
IMAGENET_ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101"]
TRAIN_STEP_ARCHS = ["resnet56", "vgg16"]
# Random-prune fractions that give about 50% fewer MACs in plain chains (the speed goals).
HALF_MACS_PRUNE = {"vgg16": 0.3}
METHODS = ("scp", "dense", "slimming")

# docs/method.md, "Published numbers and their sources": (dataset, net, baseline -> pruned accuracy, reductions, config)
PAPER = [
    (
        "CIFAR-10",
        "VGG-16",
        "93.85 -> 93.79",
        "channels 75%, params 93.05%, FLOPs 66.23%",
        "configs/cifar.py:cifar10_vgg16",
    ),
    (
        "CIFAR-10",
        "ResNet-56",
        "93.69 -> 93.23",
        "channels 45%, params 46.47%, FLOPs 51.20%",
        "configs/cifar.py:cifar10_resnet56",
    ),
    (
        "CIFAR-10",
        "DenseNet-40",
        "94.39 -> 93.77",
        "channels 81%, params 75.41%, FLOPs 70.77%",
        "configs/cifar.py:cifar10_densenet40",
    ),
    ("CIFAR-100", "ResNet-164", "77.24 -> 76.62", "params 28.89%, FLOPs 45.36%", "configs/cifar.py:cifar100_resnet164"),
    (
        "CIFAR-100",
        "DenseNet-40",
        "74.24 -> 73.84",
        "params 55.22%, FLOPs 46.25%",
        "configs/cifar.py:cifar100_densenet40",
    ),
    (
        "ILSVRC-12",
        "ResNet-50",
        "75.89 -> 75.27 top-1 (92.98 -> 92.30 top-5)",
        "FLOPs 54.3%",
        "configs/imagenet.py:resnet50",
    ),
]


def run(cmd: list[str], log: str) -> None:
    print("$", " ".join(cmd), flush=True)
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=f, stderr=subprocess.STDOUT)


def train_fashion_mnist(root: str, skip: bool, log: str) -> dict[str, dict]:
    reports = {}
    for method in METHODS:
        workdir = os.path.join(root, f"fashion_mnist_{method}")
        path = os.path.join(workdir, "report.json")
        if not os.path.exists(path) and not skip:
            cmd = [
                sys.executable,
                "launch/train.py",
                "--config=configs/fashion_mnist.py:lambda",
                f"--workdir={workdir}",
                f"--config.method={method}",
            ]
            if method == "slimming" and "scp" in reports:  # prune to SCP's MACs: a matched comparison
                summary = reports["scp"]["pruning"]["summary"]
                ratio = summary["compact_macs"] / summary["dense_macs"]
                cmd.append(f"--config.slimming.target_macs_ratio={ratio:.4f}")
            run(cmd, log)
        if os.path.exists(path):
            with open(path) as f:
                reports[method] = json.load(f)
    return reports


def benchmark(
    arch: str,
    batch: int,
    runs: int,
    out_dir: str,
    log: str,
    train_step: bool = False,
    round_to: int = 8,
    random_prune: float = 0.5,
) -> dict:
    path = os.path.join(
        out_dir, f"bench_{arch}_b{batch}_r{round_to}_p{random_prune}{'_train' if train_step else ''}.json"
    )
    imagenet = arch in IMAGENET_ARCHS
    cmd = [
        sys.executable,
        "launch/benchmark.py",
        f"--model={arch}",
        f"--num_classes={1000 if imagenet else 10}",
        f"--input_shape={'224,224,3' if imagenet else ('28,28,1' if arch == 'fmnist_cnn' else '32,32,3')}",
        f"--random_prune={random_prune}",
        f"--round_to={round_to}",
        f"--batch_sizes={batch}",
        f"--runs={runs}",
        f"--json={path}",
    ]
    if train_step:
        cmd.append("--train_step")
    run(cmd, log)
    with open(path) as f:
        return json.load(f)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _get(d: dict, *keys, default=None):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def fashion_section(reports: dict[str, dict]) -> list[str]:
    lines = ["## 1. Fashion-MNIST: dense vs SCP vs Network Slimming (4-epoch budget)", ""]
    if not reports:
        return lines + [
            "No finished run: `python scripts/make_results.py` trains them (about 15 minutes each on 2 CPU cores).",
            "",
        ]
    lines += [
        "Same pipeline and config (`configs/fashion_mnist.py:lambda`, `--config.method=` scp / dense / slimming; "
        "Network Slimming pruned to SCP's MACs with `--config.slimming.target_macs_ratio`, on the demo's 3 + 1 "
        "epochs: its 4-epoch budget, not Liu et al.'s full recipe, docs/method.md section 6). Test accuracy on "
        "the 10,000 test images: of the trained network under its hard masks, and of the compact network "
        "after fine-tuning. Latency: the run's own benchmark phase, batch 64, median of 50 runs (dense "
        "architecture vs the final compact model; the runs shared the machine, see the load in the JSON).",
        "",
        "| method | acc. trained (hard masks) | acc. compact, fine-tuned | MACs | params | kept channels "
        "| latency ms dense -> compact | speed-up | wall time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method, rep in reports.items():
        summary = _get(rep, "pruning", "summary", default={})
        rows = _get(rep, "benchmark", "rows", default=[]) or [{}]
        row = rows[0]
        wall = sum((rep.get("timings") or {}).values())
        lines.append(
            "| {} | {} | {} | {} -> {} | {} -> {} | {} / {} | {} -> {} | {} | {:.0f} min |".format(
                method,
                _fmt(_get(rep, "evaluate", "trained_hard_masked_accuracy"), pct=True),
                _fmt(_get(rep, "evaluate", "final_accuracy"), pct=True),
                _fmt_m(summary.get("dense_macs")),
                _fmt_m(summary.get("compact_macs")),
                _fmt_m(summary.get("dense_params")),
                _fmt_m(summary.get("compact_params")),
                summary.get("kept_channels", "-"),
                summary.get("total_channels", "-"),
                _fmt(_get(row, "dense", "median_ms")),
                _fmt(_get(row, "compact", "median_ms")),
                _fmt(row.get("speedup"), suffix="x"),
                wall / 60,
            )
        )
    lines.append("")
    return lines


def _fmt(v, pct=False, suffix=""):
    if v is None:
        return "-"
    return f"{100 * v:.2f}%" if pct else f"{v:.2f}{suffix}"


def _fmt_m(v):
    return "-" if v is None else f"{v / 1e6:.2f}M"


def alignment_section(pairs: list[tuple[int, dict]]) -> list[str]:
    if not pairs:
        return []
    lines = [
        "### Channel alignment (`round_to`), ResNet-56, batch 64",
        "",
        "The same random BN parameters, pruned with and without aligning every kept width to a multiple "
        "of 8 (alignment keeps the next-best channels, so it cuts fewer MACs).",
        "",
        "| round_to | MACs compact | MAC ratio | dense ms | compact ms | speed-up | speed-up / MAC ratio "
        "| %sgemm compact |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for round_to, res in pairs:
        row = res["rows"][0]
        lines.append(
            "| {} | {} | {:.2f}x | {:.2f} | {:.2f} | {:.2f}x | {:.2f} | {:.0f}% |".format(
                round_to,
                _fmt_m(res["compact"]["macs"]),
                res["mac_ratio"],
                row["dense"]["median_ms"],
                row["compact"]["median_ms"],
                row["speedup"],
                row["speedup_over_mac_ratio"],
                100 * row["compact_sgemm_fraction"],
            )
        )
    return lines + [""]


def bench_section(results: list[dict], train_steps: list[tuple[str, dict]]) -> list[str]:
    lines = [
        "## 2. Jitted inference latency, dense vs compact (random masks)",
        "",
        "`python launch/benchmark.py --model=NAME --random_prune=P --round_to=8 --batch_sizes=B --runs=R`, "
        "P = 0.5 of each unit's channels unless the row names another (VGG-16 at 0.3 is ~50% of its "
        "MACs: a chain loses input and output channels). "
        "Median of R timed runs after warm-up, AOT-compiled, inputs on the device. %sgemm: the model's "
        "achieved FLOP rate over a jitted 2048^3 sgemm measured in the same run.",
        "",
        "| model | batch | MACs dense -> compact | MAC ratio | dense ms | compact ms | speed-up | speed-up / MAC ratio "
        "| %sgemm dense / compact |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, res in results:
        for row in res["rows"]:
            lines.append(
                "| {} | {} | {} -> {} | {:.2f}x | {:.2f} | {:.2f} | {:.2f}x | {:.2f} | {:.0f}% / {:.0f}% |".format(
                    name,
                    row["batch_size"],
                    _fmt_m(res["dense"]["macs"]),
                    _fmt_m(res["compact"]["macs"]),
                    res["mac_ratio"],
                    row["dense"]["median_ms"],
                    row["compact"]["median_ms"],
                    row["speedup"],
                    row["speedup_over_mac_ratio"],
                    100 * row["dense_sgemm_fraction"],
                    100 * row["compact_sgemm_fraction"],
                )
            )
    lines.append("")
    if train_steps:
        lines += [
            "Training-step overhead (the SCP train step against the plain step of the same model and batch, same run):",
            "",
            "| model | batch | plain ms | SCP ms | ratio |",
            "|---|---|---|---|---|",
        ]
        for name, res in train_steps:
            ts = res.get("train_step") or {}
            lines.append(
                "| {} | {} | {} | {} | {} |".format(
                    name,
                    ts.get("batch_size", "-"),
                    _fmt(_get(ts, "plain", "median_ms")),
                    _fmt(_get(ts, "scp", "median_ms")),
                    _fmt(ts.get("ratio"), suffix="x"),
                )
            )
        lines.append("")
    return lines


def paper_section() -> list[str]:
    lines = [
        "## 3. The paper's results and the configs that reproduce them",
        "",
        "Published numbers (Kang & Han, ICML 2020; sources: docs/method.md). Not yet reproduced here: "
        "they need the datasets and GPUs (CIFAR: one GPU, 160 epochs, a few hours; ImageNet: 4 GPUs, "
        "100 epochs, total batch 256, days).",
        "",
        "| dataset | net | accuracy (baseline -> pruned) | reductions | config | command |",
        "|---|---|---|---|---|---|",
    ]
    for dataset, net, acc, red, cfg in PAPER:
        lines.append(
            f"| {dataset} | {net} | {acc} | {red} | `{cfg}` | "
            f"`python launch/train.py --config={cfg} --workdir=workdirs/{cfg.split(':')[-1]}` |"
        )
    lines.append("")
    return lines


# The speed goals of issue 14, measured side by side in one run (``--goals``): ~half the channels of
# ResNet-56 and VGG-16 pruned at random, batch 64, per channel alignment; the real train step against
# the jitted forward; the compact ResNet-56 against PyTorch.
GOAL_MODELS = [("resnet56", 0.5), ("vgg16", 0.3)]
GOAL_ROUND_TO = [1, 8, "latency"]
GOAL_TRAIN_STEPS = [("fmnist_cnn", 128), ("resnet56", 64)]
GOALS_BEGIN, GOALS_END = "<!-- goals: begin -->", "<!-- goals: end -->"
MAIN_BEGIN, MAIN_END = (
    "<!-- make_results: begin (sections 1-3, python scripts/make_results.py) -->",
    ("<!-- make_results: end -->"),
)


def replace_block(text: str, begin: str, end: str, section: str) -> str:
    """``text`` with the block from ``begin`` to ``end`` replaced by ``section`` (which carries both
    markers), or with ``section`` appended when the block is absent; nothing else changes."""
    section = section.strip("\n")
    if begin in text and end in text.split(begin, 1)[1]:
        head, rest = text.split(begin, 1)
        return head + section + rest.split(end, 1)[1]
    return text.rstrip("\n") + "\n\n" + section + "\n"


def write_block(out: str, begin: str, end: str, section: str) -> None:
    """Replaces one marked block of the page ``out`` (created as '# Results' when missing), atomically."""
    text = "# Results\n"
    if os.path.exists(out):
        with open(out) as f:
            text = f.read()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = f"{out}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(replace_block(text, begin, end, section))
    os.replace(tmp, out)


def torch_comparison(runs: int, out_dir: str, log: str) -> dict:
    path = os.path.join(out_dir, "torch_vs_jax_resnet56.json")
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    cmd = [sys.executable, "scripts/torch_vs_jax_resnet56.py", f"--runs={runs}", f"--json={path}"]
    print("$", " ".join(cmd), flush=True)
    with open(log, "a") as f:
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=f, stderr=subprocess.STDOUT, env=env)
    with open(path) as f:
        return json.load(f)


def measure_goals(runs: int, out_dir: str, log: str, round_tos=GOAL_ROUND_TO, reuse: bool = False) -> dict:
    """Train steps first, then inference per model and alignment, then PyTorch. ``reuse``: take a
    benchmark's JSON from ``out_dir`` where an earlier run left it (same command, same file name)."""

    def bench(arch, batch, **kwargs):
        round_to, prune = kwargs.get("round_to", 8), kwargs.get("random_prune", 0.5)
        train = "_train" if kwargs.get("train_step") else ""
        path = os.path.join(out_dir, f"bench_{arch}_b{batch}_r{round_to}_p{prune}{train}.json")
        if reuse and os.path.exists(path):
            with open(path) as f:
                return json.load(f)
        return benchmark(arch, batch, runs, out_dir, log, **kwargs)

    goals = {"inference": [], "train_steps": [], "torch": None}
    for arch, batch in GOAL_TRAIN_STEPS:
        res = bench(arch, batch, train_step=True, random_prune=0.0)
        goals["train_steps"].append(
            {
                "arch": arch,
                "batch_size": batch,
                "train_step": res["train_step"],
                "device": res["device"],
                "host_malloc": res.get("host_malloc"),
                "load_average": res["load_average"],
            }
        )
    for arch, prune in GOAL_MODELS:
        for round_to in round_tos:
            res = bench(arch, 64, round_to=round_to, random_prune=prune)
            goals["inference"].append({"arch": arch, "random_prune": prune, "round_to": round_to, "result": res})
    try:
        goals["torch"] = torch_comparison(max(10, runs // 2), out_dir, log)
    except (subprocess.CalledProcessError, OSError) as e:  # torch is optional (not a dependency)
        goals["torch"] = {"error": str(e)}
    return goals


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _goals_device(goals: dict) -> str:
    for item in goals["inference"] + goals["train_steps"]:
        device = item.get("device") or (item.get("result") or {}).get("device")
        if device:
            return device
    return "an unrecorded device"


def goals_section(goals: dict) -> list[str]:
    lines = [
        GOALS_BEGIN,
        "## Speed goals (issue 14), measured side by side in one run",
        "",
        "`python scripts/make_results.py --goals`: random BN parameters pruning ~half the channels "
        "(ResNet-56: 0.5 of every unit; VGG-16: 0.3, ~50% of its MACs), batch 64, medians of "
        f"interleaved runs, sgemm measured in each benchmark, on {_goals_device(goals)} (load average at "
        "the start of each benchmark in the last column: about 1 or less is a quiet 2-core machine; raw "
        "JSON `docs/results/goals.json`). Ratios taken within one process are the fairer numbers.",
        "",
        "| model | round_to | MACs dense -> compact | MAC ratio | dense ms | compact ms | speed-up "
        "| speed-up / MAC ratio (goal >= 0.8) | %sgemm compact (goal >= 60%) | load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for item in goals["inference"]:
        res = item["result"]
        row = res["rows"][0]
        q, frac = row["speedup_over_mac_ratio"], row["compact_sgemm_fraction"]
        lines.append(
            "| {} | {} | {} -> {} | {:.2f}x | {:.1f} | {:.1f} | {:.2f}x | {:.2f} ({}) | {:.0f}% ({}) | {:.1f} |".format(
                item["arch"],
                item["round_to"],
                _fmt_m(res["dense"]["macs"]),
                _fmt_m(res["compact"]["macs"]),
                res["mac_ratio"],
                row["dense"]["median_ms"],
                row["compact"]["median_ms"],
                row["speedup"],
                q,
                _met(q >= 0.8),
                100 * frac,
                _met(frac >= 0.6),
                res["load_average"][0],
            )
        )
    lines += [
        "",
        "Train step (`launch/benchmark.py --train_step`: `training.steps.train_step`, jitted, SGD with "
        "Nesterov momentum and weight decay; the SCP step samples Gumbel masks and adds the penalty) "
        "against the jitted inference forward of the same batch:",
        "",
        "| model | batch | forward ms | plain step ms | SCP step ms (/ forward) | SCP step as training "
        "runs it: CPU split in devices, ms (/ forward; goal <= 3.5) | SCP / plain | host malloc | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for item in goals["train_steps"]:
        ts = item["train_step"]
        split = [name for name in ts["over_forward"] if name.endswith("_devices")]
        trained = split[0] if split else "scp"  # the step the loop runs: split where the CPU is split
        ratio = ts["over_forward"][trained]
        malloc = item.get("host_malloc") or {}
        lines.append(
            "| {} | {} | {:.1f} | {:.1f} | {:.1f} ({:.2f}x) | {} | {:.2f}x | {} | {:.1f} |".format(
                item["arch"],
                item["batch_size"],
                ts["forward"]["median_ms"],
                ts["plain"]["median_ms"],
                ts["scp"]["median_ms"],
                ts["over_forward"]["scp"],
                "{}: {:.1f} ({:.2f}x, {})".format(
                    trained.split("_")[1] + " devices" if split else "1 device",
                    ts[trained]["median_ms"],
                    ratio,
                    _met(ratio <= 3.5),
                ),
                ts["ratio"],
                "retained" if malloc.get("applied") else "system",
                item["load_average"][0],
            )
        )
    torch = goals.get("torch") or {}
    lines.append("")
    if "rows" in torch:
        lines += [
            "ResNet-56 against PyTorch (`OMP_WAIT_POLICY=PASSIVE python scripts/torch_vs_jax_resnet56.py`, "
            f"torch {torch['torch']} channels_last, {torch['torch_threads']} threads, batch "
            f"{torch['batch_size']}, load {torch['load_average_before'][0]:.1f} -> "
            f"{torch['load_average_after'][0]:.1f}); 'halved' = every block's inner width halved:",
            "",
            "| model | MMACs | torch ms | jax (XLA convs) ms | jax (fast_conv auto) ms | jax auto / torch |",
            "|---|---|---|---|---|---|",
        ]
        for row in torch["rows"]:
            t, a = row["torch_channels_last"]["median_ms"], row["jax_fast_conv_auto"]["median_ms"]
            lines.append(
                f"| {row['model']} | {row['macs'] / 1e6:.1f} | {t:.1f} | {row['jax_xla']['median_ms']:.1f} "
                f"| {a:.1f} | {a / t:.2f} ({_met(a <= t)}) |"
            )
    else:
        lines.append(f"PyTorch comparison not run: {torch.get('error', 'torch not installed')}.")
    return lines + ["", GOALS_END, ""]


def write_goals(out: str, goals: dict) -> None:
    """Replaces the goals section of ``out`` (or appends it), leaving the rest of the page as it is."""
    write_block(out, GOALS_BEGIN, GOALS_END, "\n".join(goals_section(goals)))
    raw = os.path.join(os.path.dirname(out), "results")
    os.makedirs(raw, exist_ok=True)
    with open(os.path.join(raw, "goals.json"), "w") as f:
        json.dump(goals, f, indent=1)


def main_sections(reports, results, train_steps, alignment, device: str, now: str) -> str:
    """Sections 1-3 inside their markers, opened by the line that says where they come from."""
    lines = [
        MAIN_BEGIN,
        f"Sections 1-3: written by `python scripts/make_results.py` on {now}. Machine: {device}, "
        f"{os.cpu_count()} CPU cores, Python {platform.python_version()}. Every number in sections 1-3 comes from "
        "that run (raw JSON in `docs/results/`); the other sections name their own runs and machines.",
        "",
    ]
    lines += fashion_section(reports) + bench_section(results, train_steps) + alignment_section(alignment)
    lines += paper_section()
    return "\n".join(lines).rstrip("\n") + "\n" + MAIN_END


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "RESULTS.md"))
    parser.add_argument("--workdir_root", default=os.path.join(ROOT, "workdirs", "results"))
    parser.add_argument("--skip_training", action="store_true")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--archs", default=",".join(CIFAR_ARCHS + IMAGENET_ARCHS))
    parser.add_argument("--goals", action="store_true", help="only (re)measure the speed-goals section")
    parser.add_argument("--goal_round_to", default="1,8,latency", help="with --goals: the alignments to compare")
    parser.add_argument("--reuse", action="store_true", help="with --goals: reuse benchmark JSON already measured")
    parser.add_argument(
        "--render_goals", action="store_true", help="only re-render the goals section from docs/results/goals.json"
    )
    args = parser.parse_args(argv)
    os.makedirs(args.workdir_root, exist_ok=True)
    log = os.path.join(args.workdir_root, "make_results.log")
    if args.render_goals:
        with open(os.path.join(os.path.dirname(args.out), "results", "goals.json")) as f:
            write_goals(args.out, json.load(f))
        print(f"re-rendered the goals section of {args.out}")
        return
    if args.goals:
        round_tos = [v if v == "latency" else int(v) for v in args.goal_round_to.split(",")]
        write_goals(args.out, measure_goals(args.runs, args.workdir_root, log, round_tos, args.reuse))
        print(f"wrote the goals section of {args.out}")
        return
    reports = train_fashion_mnist(args.workdir_root, args.skip_training, log)
    results, train_steps = [], []
    for arch in [a for a in args.archs.split(",") if a]:
        batch = 1 if arch in IMAGENET_ARCHS else 64
        results.append((arch, benchmark(arch, batch, args.runs, args.workdir_root, log)))
        if arch in HALF_MACS_PRUNE:  # chains lose in- and output channels: ~50% of channels is ~75% of MACs
            prune = HALF_MACS_PRUNE[arch]
            results.append(
                (
                    f"{arch} (prune {prune})",
                    benchmark(arch, batch, args.runs, args.workdir_root, log, random_prune=prune),
                )
            )
    for arch in TRAIN_STEP_ARCHS:
        if arch in args.archs.split(","):
            train_steps.append((arch, benchmark(arch, 64, args.runs, args.workdir_root, log, train_step=True)))
    alignment = []
    if "resnet56" in args.archs.split(","):
        alignment = [
            (1, benchmark("resnet56", 64, args.runs, args.workdir_root, log, round_to=1)),
            (8, dict(results)["resnet56"]),
        ]  # the same seed: the same random BN parameters
    device = results[0][1]["device"] if results else platform.processor()
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    write_block(args.out, MAIN_BEGIN, MAIN_END, main_sections(reports, results, train_steps, alignment, device, now))
    # Keep the raw numbers beside the page (the workdirs are not part of the repository).
    raw = os.path.join(os.path.dirname(args.out), "results")
    os.makedirs(raw, exist_ok=True)
    for name in sorted(os.listdir(args.workdir_root)):
        if name.startswith("bench_") and name.endswith(".json"):
            shutil.copy(os.path.join(args.workdir_root, name), raw)
    for method in reports:
        shutil.copy(
            os.path.join(args.workdir_root, f"fashion_mnist_{method}", "report.json"),
            os.path.join(raw, f"fashion_mnist_{method}_report.json"),
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
