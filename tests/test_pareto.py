"""scripts/pareto.py: the run plan, the commands, the uniform baseline's widths, and the page and plot
rendered from raw records alone (fake records here: no training)."""

import importlib.util
import json
import os

import pytest

from soft_prune_jax.measure import flops
from soft_prune_jax.models import get_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("pareto", os.path.join(ROOT, "scripts", "pareto.py"))
pareto = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pareto)


def test_plan_has_every_method_at_every_budget_and_two_seeds_at_half():
    runs = pareto.plan_runs(pareto.METHODS, pareto.BUDGETS, seeds=1, seeds_at_half=2)
    for method in ("scp", "scp_cost", "slimming", "uniform"):
        assert sorted((b, s) for m, b, s in runs if m == method) == [(0.3, 0), (0.5, 0), (0.5, 1), (0.7, 0)]
    assert [(b, s) for m, b, s in runs if m == "dense"] == [(1.0, 0), (1.0, 1)]
    assert len(set(runs)) == len(runs) == 18


def test_commands_give_every_method_the_same_total_epochs():
    def value(cmd, flag):
        found = [c.split("=", 1)[1] for c in cmd if c.startswith(f"--config.{flag}=")]
        return int(found[0]) if found else None

    for method in ("scp", "scp_cost", "slimming", "dense"):
        cmd = pareto.command(method, 0.5, 1, "/tmp/w")
        assert value(cmd, "num_epochs") + value(cmd, "finetune_epochs") == 4, method
        assert "--config.seed=1" in cmd
    assert "--config.target_macs_ratio=0.5" in pareto.command("scp", 0.5, 0, "/tmp/w")
    assert "--config.cost_aware_penalty=True" in pareto.command("scp_cost", 0.5, 0, "/tmp/w")
    assert "--config.slimming.target_macs_ratio=0.3" in pareto.command("slimming", 0.3, 0, "/tmp/w")


@pytest.mark.parametrize("budget", [0.3, 0.7])
def test_uniform_widths_match_the_budget(budget):
    widths = pareto.uniform_widths(budget)
    assert widths.count("M") == 2 and len(widths) == len(pareto.DEMO_WIDTHS)

    def macs(w):
        return flops.count(get_model("fmnist_cnn", 10, widths=w, mask=None), None, pareto.DEMO_INPUT).macs

    assert macs(widths) / macs(pareto.DEMO_WIDTHS) == pytest.approx(budget, abs=0.03)


def _fake(method, budget, seed, acc, macs):
    return {
        "method": method,
        "budget": budget,
        "seed": seed,
        "test_accuracy": acc,
        "macs_ratio": macs,
        "macs": int(macs * 1e6),
        "machine": "fake CPU, 2 CPU cores, Linux",
    }


FAKE = [
    _fake("dense", 1.0, 0, 0.920, 1.0),
    _fake("scp", 0.3, 0, 0.905, 0.30),
    _fake("uniform", 0.3, 0, 0.890, 0.31),
    _fake("scp", 0.5, 0, 0.910, 0.50),
    _fake("scp", 0.5, 1, 0.914, 0.49),
    _fake("slimming", 0.5, 0, 0.911, 0.50),
    _fake("slimming", 0.5, 1, 0.913, 0.50),
    _fake("scp", 0.7, 0, 0.900, 0.70),
    _fake("scp_cost", 0.7, 0, 0.915, 0.69),
    _fake("uniform", 0.7, 0, 0.905, 0.71),
]


def test_render_writes_the_section_and_plot_from_raw_records(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for r in FAKE:
        (raw / f"{pareto.run_name(r['method'], r['budget'], r['seed'])}.json").write_text(json.dumps(r))
    page, plot = tmp_path / "RESULTS.md", tmp_path / "pareto.png"
    page.write_text("# Results\n\nearlier sections\n")
    section = pareto.render(str(raw), str(page), str(plot))
    assert plot.stat().st_size > 1000
    text = page.read_text()
    assert text.startswith("# Results\n\nearlier sections\n") and text.count(pareto.BEGIN) == 1
    assert "fake CPU, 2 CPU cores" in section
    assert "| 0.5 | SCP (targeted) | 2 | 91.20% (91.00% to 91.40%) | 49.50% (49.00% to 50.00%) |" in section
    assert "| 0.3 | uniform, from scratch | 1 | 89.00% | 31.00% |" in section
    verdicts = [line for line in section.splitlines() if line.startswith("- At ")]
    assert len(verdicts) == 4
    # Each variant against each baseline present at that budget; ties within the larger seed spread.
    assert "SCP (targeted) (90.50%, MACs 30.00%) beats uniform, from scratch (89.00%, MACs 31.00%; +1.50" in verdicts[0]
    assert "Network Slimming" not in verdicts[0]  # no Slimming run at 0.3
    assert "SCP (targeted) (91.20%, MACs 49.50%) ties with Network Slimming (91.20%" in verdicts[1]
    assert "SCP (targeted) (90.00%, MACs 70.00%) loses to uniform, from scratch (90.50%" in verdicts[2]
    assert "SCP, cost-aware penalty (91.50%, MACs 69.00%) beats uniform, from scratch (90.50%" in verdicts[3]

    # Rendering again replaces the block instead of adding a second one, and keeps what follows it.
    page.write_text(page.read_text() + "\nlater section\n")
    pareto.render(str(raw), str(page), str(plot))
    text = page.read_text()
    assert text.count(pareto.BEGIN) == text.count(pareto.END) == 1 and text.rstrip().endswith("later section")


def test_render_without_records_says_so(tmp_path):
    page = tmp_path / "RESULTS.md"
    section = pareto.render(str(tmp_path / "none"), str(page), str(tmp_path / "p.png"))
    assert "No finished run yet." in section and not (tmp_path / "p.png").exists()


def test_verdict_names_each_baseline_with_its_own_judgement():
    records = [
        _fake("scp", 0.5, 0, 0.915, 0.50),
        _fake("slimming", 0.5, 0, 0.905, 0.50),  # 1.0 point under SCP: beyond the 0.3-point noise
        _fake("uniform", 0.5, 0, 0.917, 0.50),  # 0.2 point over SCP: within it
    ]
    (line,) = pareto.verdicts(pareto.aggregate(records))
    assert "beats Network Slimming (90.50%, MACs 50.00%; +1.00 points, noise 0.30)" in line
    assert " and ties with uniform, from scratch (91.70%, MACs 50.00%; -0.20 points, noise 0.30)." in line
