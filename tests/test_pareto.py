"""scripts/pareto.py: the plans, the commands, the widths of the from-scratch arms, the stated test
(against hand-computed cases), the records' provenance, the runner end to end with a fake trainer,
and the page rendered from records alone (no training here)."""

import importlib.util
import json
import math
import os
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("pareto", os.path.join(ROOT, "scripts", "pareto.py"))
pareto = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pareto)

MAIN, LONG = pareto.PLANS["main"], pareto.PLANS["long"]


# ----------------------------------------------------------------------------- plans and commands


def test_main_plan_has_every_arm_at_both_budgets_with_three_seeds_and_scp_first():
    runs = pareto.plan_runs(MAIN)
    assert len(set(runs)) == len(runs) == 33
    for arm in ("scp", "scp_widths_scratch", "uniform", "random", "slimming"):
        assert sorted((r.budget, r.seed) for r in runs if r.arm == arm) == [
            (b, s) for b in (0.3, 0.5) for s in range(3)
        ]
    assert sorted((r.budget, r.seed) for r in runs if r.arm == "dense") == [(1.0, 0), (1.0, 1), (1.0, 2)]
    assert "scp_cost" not in {r.arm for r in runs}  # available (plan cost), not in the default
    for r in runs:  # SCP's widths from scratch need the SCP record of the same budget and seed
        if r.arm == "scp_widths_scratch":
            assert runs.index(pareto.Run("main", "scp", r.budget, r.seed)) < runs.index(r)
    # Seed by seed: after the first 11 runs, seed 0 is complete.
    assert {r.seed for r in runs[:11]} == {0} and len({(r.arm, r.budget) for r in runs[:11]}) == 11


def test_long_plan_is_three_arms_at_0_3_with_three_seeds_over_15_epochs():
    runs = pareto.plan_runs(LONG)
    assert sorted((r.arm, r.seed) for r in runs) == sorted(
        (a, s) for a in ("scp", "scp_widths_scratch", "uniform") for s in range(3)
    )
    assert {r.budget for r in runs} == {0.3} and LONG.total_epochs == 15 and LONG.table != MAIN.table


def _flag(cmd, name):
    found = [c.split("=", 1)[1] for c in cmd if c.startswith(f"--config.{name}=")]
    return found[0] if found else None


@pytest.mark.parametrize("plan", [MAIN, LONG], ids=["main", "long"])
def test_every_arm_gets_the_same_total_epochs_and_its_seed(plan):
    widths = (8, 8, "M", 16, 16, "M", 32)
    for arm in pareto.ARMS:
        budget = 1.0 if arm == "dense" else 0.3
        cmd = pareto.command(pareto.Run(plan.name, arm, budget, 2), plan, "/tmp/w", widths, target_macs=0.3)
        assert int(_flag(cmd, "num_epochs")) + int(_flag(cmd, "finetune_epochs")) == plan.total_epochs, arm
        assert _flag(cmd, "seed") == "2" and "--workdir=/tmp/w" in cmd
        if arm in pareto.FROM_SCRATCH:
            assert _flag(cmd, "method") == "dense" and _flag(cmd, "finetune_epochs") == "0"
            assert _flag(cmd, "lr_boundaries") == f"({plan.train_epochs},)"
            assert (_flag(cmd, "model_kwargs") is None) == (arm == "dense")
        else:
            assert _flag(cmd, "lr_boundaries") == repr(tuple(plan.train_boundaries))
    scp = pareto.command(pareto.Run("main", "scp", 0.5, 0), MAIN, "/tmp/w")
    assert _flag(scp, "target_macs_ratio") == "0.5" and _flag(scp, "method") is None
    slim = pareto.command(pareto.Run("main", "slimming", 0.3, 0), MAIN, "/tmp/w")
    assert _flag(slim, "slimming.target_macs_ratio") == "0.3" and _flag(slim, "nesterov") == "False"
    assert "--config.cost_aware_penalty=True" in pareto.command(pareto.Run("cost", "scp_cost", 0.3, 0), MAIN, "/w")
    assert _flag(pareto.command(pareto.Run("main", "random", 0.3, 0), MAIN, "/w", widths), "model_kwargs") == (
        "{'widths': (8, 8, 'M', 16, 16, 'M', 32)}"
    )
    with pytest.raises(ValueError, match="needs its widths"):
        pareto.command(pareto.Run("main", "uniform", 0.3, 0), MAIN, "/tmp/w")


def test_labels_name_slimming_by_its_schedule():
    assert pareto.label("slimming", 4) == "Network Slimming, 4-epoch budget"
    assert pareto.label("scp_widths_scratch", 4) == "SCP's widths, from scratch"


# ----------------------------------------------------------------------------- widths


@pytest.mark.parametrize("budget", [0.3, 0.5])
def test_uniform_and_random_widths_match_the_budget(budget):
    full = pareto.macs_of(pareto.DEMO_WIDTHS)
    uniform = pareto.uniform_widths(budget)
    assert uniform.count("M") == 2 and pareto.macs_of(uniform) / full == pytest.approx(budget, abs=0.01)
    drawn = {pareto.random_widths(budget, seed) for seed in range(3)}
    assert len(drawn) == 3  # each seed its own widths
    for widths in drawn:
        assert widths.count("M") == 2 and pareto.macs_of(widths) / full == pytest.approx(budget, abs=0.01)
        assert all(1 <= w <= d for w, d in zip(widths, pareto.DEMO_WIDTHS) if w != "M")
    assert pareto.random_widths(budget, 1) == pareto.random_widths(budget, 1)  # seeded
    assert pareto.random_factors(0.3, 0) != pareto.random_factors(0.5, 0)


def test_scp_widths_come_from_the_report_in_layer_order():
    kept = {"masked_bn2": 51, "masked_bn0": 19, "masked_bn4": 78, "masked_bn1": 30, "masked_bn3": 49}
    report = {"prune": {"kept_channels": kept}}
    kept = pareto.kept_widths(report)
    assert kept == [19, 30, 51, 49, 78]
    assert pareto.widths_from_record({"widths": kept}) == (19, 30, "M", 51, 49, "M", 78)
    with pytest.raises(ValueError):
        pareto.full_widths([1, 2, 3])


# ----------------------------------------------------------------------------- the test


def test_pooled_sd_by_hand():
    # Deviations of +-0.01 in each three-value group: 2 x 1e-4 per group over 2 df each.
    sd, df = pareto.pooled_sd([[0.91, 0.92, 0.93], [0.90, 0.91, 0.92], [0.86, 0.87, 0.88], [0.5]])
    assert df == 6 and sd == pytest.approx(0.01)
    sd, df = pareto.pooled_sd([[1.0, 3.0], [2.0, 2.0, 5.0]])  # SS 2 + 6 over 1 + 2 df
    assert df == 3 and sd == pytest.approx(math.sqrt(8 / 3))
    assert math.isnan(pareto.pooled_sd([[1.0], [2.0]])[0])


def test_holm_steps_and_interval_levels_by_hand():
    # m = 3: 0.01 <= 0.05/3 rejects; 0.03 > 0.05/2 stops; 0.04 keeps the failing step's level.
    rejected, levels = pareto.holm_levels([0.01, 0.04, 0.03], 0.05)
    assert rejected == [True, False, False]
    assert levels == pytest.approx([0.05 / 3, 0.05 / 2, 0.05 / 2])
    rejected, levels = pareto.holm_levels([0.02, 0.001], 0.05)  # 0.001 <= 0.025, then 0.02 <= 0.05
    assert rejected == [True, True] and levels == pytest.approx([0.05, 0.025])
    rejected, levels = pareto.holm_levels([0.5, 0.03], 0.05)  # the first step fails: nothing rejected
    assert rejected == [False, False] and levels == pytest.approx([0.025, 0.025])


def test_compare_by_hand():
    groups = {
        ("scp", 0.3): [0.91, 0.92, 0.93],
        ("uniform", 0.3): [0.90, 0.91, 0.92],
        ("slimming", 0.3): [0.86, 0.87, 0.88],
    }
    pairs = [(("scp", 0.3), ("uniform", 0.3)), (("scp", 0.3), ("slimming", 0.3))]
    uniform, slimming = pareto.compare(groups, pairs)
    se = 0.01 * math.sqrt(2 / 3)  # s_p = 0.01 over 6 df, n = 3 and 3
    for row in (uniform, slimming):
        assert row["df"] == 6 and row["pooled_sd"] == pytest.approx(0.01) and row["se"] == pytest.approx(se)
    assert uniform["diff"] == pytest.approx(0.01) and uniform["t"] == pytest.approx(1.2247449, rel=1e-6)
    assert slimming["diff"] == pytest.approx(0.05) and slimming["t"] == pytest.approx(6.1237244, rel=1e-6)
    # Two-sided p of t with 6 df (tables: t_0.975,6 = 2.447, so p(1.22) is well above 0.05).
    assert uniform["p"] == pytest.approx(0.26657, abs=2e-5) and slimming["p"] == pytest.approx(0.000866, abs=2e-6)
    # Holm over 2: Slimming first at 0.025 (rejected, 97.5% interval), uniform then at 0.05 (not).
    assert slimming["rejected"] and slimming["level"] == pytest.approx(0.025)
    assert not uniform["rejected"] and uniform["level"] == pytest.approx(0.05)
    assert slimming["low"] == pytest.approx(0.05 - 2.968687 * se, abs=1e-6)
    assert uniform["low"] == pytest.approx(0.01 - 2.446912 * se, abs=1e-6)
    assert uniform["high"] == pytest.approx(0.01 + 2.446912 * se, abs=1e-6) and uniform["low"] < 0
    # Smallest difference detectable with 80% power at 5%: (t_0.975,6 + t_0.8,6) se.
    assert uniform["mde"] == pytest.approx((2.446912 + 0.905703) * se, abs=1e-6)


def test_a_missing_comparison_still_counts_in_the_family():
    groups = {("scp", 0.3): [0.91, 0.92, 0.93], ("uniform", 0.3): [0.86, 0.87, 0.88]}
    pairs = [(("scp", 0.3), ("uniform", 0.3)), (("scp", 0.3), ("random", 0.3))]
    present, missing = pareto.compare(groups, pairs)
    assert present["level"] == pytest.approx(0.025) and present["rejected"]
    assert missing["diff"] is None and not missing["rejected"] and missing["p"] == 1.0


# ----------------------------------------------------------------------------- records and the runner

FAKE_TRAINER = textwrap.dedent(
    """
    import json, os, sys
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--"))
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert os.getcwd() == here and os.environ["PYTHONPATH"].split(os.pathsep)[0] == here
    with open(os.path.join(here, "calls.txt"), "a") as f:
        f.write(args["workdir"] + "\\n")
    if os.environ.get("FAKE_FAIL") == os.path.basename(args["workdir"]):
        sys.exit(3)
    config = {
        "seed": int(args["config.seed"]), "method": args.get("config.method", "scp"),
        "num_epochs": int(args["config.num_epochs"]), "finetune_epochs": int(args["config.finetune_epochs"]),
        "lr_boundaries": list(eval(args["config.lr_boundaries"])), "learning_rate": 0.1, "lr_decay": 0.1,
        "finetune_learning_rate": float(args.get("config.finetune_learning_rate", 0.01)), "momentum": 0.9,
        "nesterov": args.get("config.nesterov", "True") == "True", "weight_decay": 1e-4, "batch_size": 128,
        "augment": False, "num_train_examples": None,
        "model_kwargs": eval(args.get("config.model_kwargs", "{}")),
    }
    widths = config["model_kwargs"].get("widths") or (
        (32, 32, "M", 64, 64, "M", 128) if config["method"] == "dense" else (19, 30, "M", 51, 49, "M", 78))
    widths = [w for w in widths if w != "M"]
    report = {
        "prune": {"kept_channels": {f"masked_bn{i}": w for i, w in enumerate(widths)}},
        "pruning": {"summary": {"compact_macs": 1000 * sum(widths), "dense_macs": 320000, "compact_params": 7}},
        "evaluate": {"final_accuracy": 0.9 + config["seed"] / 1000, "test_examples": 10000},
        "timings": {"train": 1.5},
    }
    for name, data in (("config.json", config), ("report.json", report)):
        with open(os.path.join(args["workdir"], name), "w") as f:
            json.dump(data, f)
    """
)


def test_runner_end_to_end_with_a_fake_trainer(tmp_path, monkeypatch):
    code, raw, work = tmp_path / "code", tmp_path / "raw", tmp_path / "work"
    (code / "launch").mkdir(parents=True)
    (code / "launch" / "train.py").write_text(FAKE_TRAINER)
    version = "a" * 40

    def run(only, **kwargs):
        return pareto.run_plan(
            MAIN,
            code=str(code),
            code_version=version,
            device="cpu: fake (2 cores)",
            workroot=str(work),
            raw_dir=str(raw),
            log=str(tmp_path / "log"),
            only=set(only),
            **kwargs,
        )

    # SCP's widths from scratch waits for the SCP record; a failed run is counted and the rest go on.
    monkeypatch.setenv("FAKE_FAIL", "dense_1_s0")
    assert run({"scp_widths_scratch_0.3_s0", "dense_1_s0"}) == 1
    assert not (raw / "main").exists()
    monkeypatch.delenv("FAKE_FAIL")
    assert run({"scp_0.3_s0", "scp_widths_scratch_0.3_s0", "dense_1_s0"}) == 0
    calls = (code / "calls.txt").read_text().split()
    assert [os.path.basename(c) for c in calls] == [
        "dense_1_s0",
        "scp_0.3_s0",
        "scp_widths_scratch_0.3_s0",
        "dense_1_s0",
    ]
    assert all(c.startswith(str(work / version[:12] / "main")) for c in calls)

    scp = json.loads((raw / "main" / "scp_0.3_s0.json").read_text())
    scratch = json.loads((raw / "main" / "scp_widths_scratch_0.3_s0.json").read_text())
    dense = json.loads((raw / "main" / "dense_1_s0.json").read_text())
    assert not list((raw / "main").glob("*.tmp*"))
    # Provenance.
    for record in (scp, scratch, dense):
        assert record["code_version"] == version and record["code_dirty"] is False
        assert set(record["runner"]) >= {"commit", "dirty"}
        assert record["config"]["seed"] == 0 and record["seed"] == 0 and record["data_order"]["seed"] == 0
        assert record["machine"]["device"] == "cpu: fake (2 cores)" and record["machine"]["cpu_count"]
        assert set(record["libraries"]) >= {
            "jax",
            "jaxlib",
            "flax",
            "optax",
            "numpy",
            "tensorflow",
            "tensorflow-datasets",
        }
        assert record["libraries"]["jax"] and record["libraries"]["tensorflow-datasets"]
        assert record["started_at"].endswith("+00:00") and record["ended_at"] >= record["started_at"]
        assert record["wall_seconds"] >= 0 and record["schedule"]["total_epochs"] == 4
        assert record["command"][1] == "launch/train.py" and record["overrides"] == []
    assert scp["schedule"]["train"] == {
        "epochs": 3, "method": "scp", "learning_rate": 0.1, "lr_boundaries": [2], "momentum": 0.9,
        "nesterov": True, "weight_decay": 1e-4, "batch_size": 128, "lr_decay": 0.1,
    }  # fmt: skip
    assert scp["schedule"]["finetune"]["epochs"] == 1 and scp["schedule"]["finetune"]["lr_boundaries"] == [2 / 3]
    assert dense["schedule"]["finetune"] == {"epochs": 0} and dense["schedule"]["train"]["lr_boundaries"] == [3]
    # SCP's widths, read from its record, trained from scratch.
    assert scp["widths"] == scratch["widths"] == [19, 30, 51, 49, 78]
    assert scratch["config"]["model_kwargs"] == {"widths": [19, 30, "M", 51, 49, "M", 78]}
    assert "main/scp_0.3_s0.json" in scratch["widths_source"]
    assert [a["returncode"] for a in dense["attempts"]] == [3, 0]  # the failed attempt is kept
    # MACs over the demo network's at full widths, also for a network trained at its own widths.
    full = pareto.macs_of(pareto.DEMO_WIDTHS)
    assert scp["test_accuracy"] == 0.9 and scp["macs_ratio"] == pytest.approx(227000 / full)
    assert scratch["dense_macs"] == dense["dense_macs"] == full and dense["macs_ratio"] == pytest.approx(320000 / full)

    # Records that exist are skipped; a record of another code version is left alone, not rerun.
    scp["code_version"] = "b" * 40
    (raw / "main" / "scp_0.3_s0.json").write_text(json.dumps(scp))
    assert run({"scp_0.3_s0", "scp_widths_scratch_0.3_s0", "dense_1_s0"}) == 0
    assert len((code / "calls.txt").read_text().split()) == 4

    # The page counts the planned runs of this version only.
    (raw / pareto.PIN_FILE).write_text(json.dumps({"commit": version}))
    page = tmp_path / "RESULTS.md"
    section = pareto.render(str(raw), str(page), None)
    assert "**Status:** 2 of 42 planned runs exist under code version `aaaaaaaaaaaa`" in section
    assert "plan main: 2 of 33 planned runs" in section
    assert "Not in any verdict: 1 records of another code version" in section and "main/scp_0.3_s0.json" in section


def test_plan_lock_refuses_a_second_runner(tmp_path):
    with pareto.plan_lock(str(tmp_path), "main"):
        with pytest.raises(pareto.Locked), pareto.plan_lock(str(tmp_path), "main"):
            pass
        with pareto.plan_lock(str(tmp_path), "long"):
            pass


# ----------------------------------------------------------------------------- rendering

VERSION = "c" * 40


def _record(arm, budget, seed, acc, macs, plan="main", version=VERSION, **extra):
    p = pareto.PLANS[plan]
    record = {
        "plan": plan,
        "table": p.table,
        "arm": arm,
        "budget": budget,
        "seed": seed,
        "test_accuracy": acc,
        "macs_ratio": macs,
        "code_version": version,
        "overrides": [],
        "runner": {"commit": "d" * 40, "dirty": False},
        "machine": {"device": "cpu: fake CPU (2 cores)"},
        "started_at": f"2027-01-0{seed + 1}T00:00:00+00:00",
        "wall_seconds": 300.0,
        "schedule": {
            "total_epochs": p.total_epochs,
            "train": {
                "epochs": 4,
                "method": "dense",
                "learning_rate": 0.1,
                "lr_boundaries": [3],
                "lr_decay": 0.1,
                "momentum": 0.9,
                "nesterov": True,
                "weight_decay": 1e-4,
                "batch_size": 128,
            },  # fmt: skip
            "finetune": {"epochs": 0},
        },
    }
    record.update(extra)
    return record


def _write(raw, folder, records):
    (raw / folder).mkdir(parents=True, exist_ok=True)
    for r in records:
        (raw / folder / f"{pareto.run_name(r.get('arm', r.get('method')), r['budget'], r['seed'])}.json").write_text(
            json.dumps(r)
        )


ARCHIVED = [
    {"method": "scp", "budget": 0.3, "seed": 0, "test_accuracy": 0.9134, "macs_ratio": 0.2958},
    {"method": "uniform", "budget": 0.3, "seed": 0, "test_accuracy": 0.9202, "macs_ratio": 0.2945,
     "data_order": "numpy permutation", "wall_seconds": 257.0},
]  # fmt: skip


def test_render_without_new_records_shows_the_archive_and_no_verdict(tmp_path):
    raw = tmp_path / "raw"
    _write(raw, "archive", ARCHIVED)
    page = tmp_path / "RESULTS.md"
    page.write_text("# Results\n\nearlier\n\n" + pareto.BEGIN + "\nold\n" + pareto.END + "\n\nlater\n")
    section = pareto.render(str(raw), str(page), str(tmp_path / "p.png"))
    text = page.read_text()
    assert text.startswith("# Results\n\nearlier\n\n") and text.rstrip().endswith("later") and "\nold\n" not in text
    assert "0 of 42 planned runs exist under code version (not pinned yet)" in section
    assert "The evidence is being re-run under one code version" in section
    assert "Archived records: old code, mixed versions, no verdicts" in section
    assert "| 0.3 | uniform widths, from scratch | 1 | 92.02% | 29.45% | numpy permutation |" in section
    assert "| 0.3 | SCP (targeted) | 1 | 91.34% | 29.58% | tf.data shuffle buffer |" in section
    for word in ("SCP better", "SCP worse", "no difference shown", "beats", "loses to"):
        assert word not in section
    assert not (tmp_path / "p.png").exists()


def test_render_draws_verdicts_from_one_version_only(tmp_path):
    raw = tmp_path / "raw"
    records = []
    for seed in range(3):
        d = 0.001 * (seed - 1)  # +-0.1 points around each mean: pooled SD 0.1 points
        for budget in (0.3, 0.5):
            records += [
                _record("scp", budget, seed, 0.915 + d, budget),
                _record("scp_widths_scratch", budget, seed, 0.915 + d, budget),
                _record("uniform", budget, seed, 0.920 + d, budget),  # 0.5 points over SCP: resolved
                _record("random", budget, seed, 0.913 + d, budget),  # 0.2 points under: within the noise
                _record("slimming", budget, seed, 0.905 + d, budget),  # 1 point under: resolved
            ]
        records.append(_record("dense", 1.0, seed, 0.922 + d, 1.0))
    other = _record("uniform", 0.3, 5, 0.777, 0.3, version="e" * 40)  # another version: never tested
    _write(raw, "main", records + [other])
    _write(raw, "archive", ARCHIVED)
    (raw / pareto.PIN_FILE).write_text(json.dumps({"commit": VERSION}))
    page = tmp_path / "RESULTS.md"
    section = pareto.render(str(raw), str(page), str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 1000
    assert "**Status:** 33 of 42 planned runs exist under code version `cccccccccccc`" in section
    assert "plan main: 33 of 33 planned runs" in section and "plan long: 0 of 9 planned runs" in section
    assert "| 0.3 | uniform widths, from scratch | 3 (0, 1, 2) | 92.00% | 0.10 | 30.00% | 300 s |" in section
    assert "pooled within-group SD 0.100 points over the 11 groups above (df = 22)" in section
    assert "95% family-wise over the 8 planned comparisons (Holm-Bonferroni)" in section
    rows = {line.split(" | ")[1]: line for line in section.splitlines() if line.startswith("| 0.3 | SCP vs ")}
    assert "| SCP worse |" in rows["SCP vs uniform widths, from scratch"]
    assert "| SCP better |" in rows["SCP vs Network Slimming, 4-epoch budget"]
    assert "| no difference shown |" in rows["SCP vs random widths, from scratch"]
    assert "| +0.00 (n = 3, 3) |" in rows["SCP vs SCP's widths, from scratch"]
    assert "77.70%" not in section and "Not in any verdict: 1 records" in section
    assert "Archived records: old code" in section
    assert "| uniform widths, from scratch | 4 epochs, dense, LR 0.1 x0.1 after epochs [3]" in section


def test_list_counts_the_plans(tmp_path):
    raw = tmp_path / "raw"
    _write(raw, "archive", ARCHIVED)
    _write(raw, "long", [_record("uniform", 0.3, 0, 0.9, 0.3, plan="long")])
    (raw / pareto.PIN_FILE).write_text(json.dumps({"commit": VERSION}))
    text = pareto.list_plans(str(raw), ["main", "long"])
    assert "plan main (4-epoch): 0 of 33 planned runs done" in text
    assert "plan long (15-epoch): 1 of 9 planned runs done" in text and "missing (8): scp_0.3_s0," in text


def test_script_help_runs():
    import subprocess

    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "pareto.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--render_only" in out and "--plan" in out and "--list" in out


# ----------------------------------------------------------------------------- plan latency (issue 23 item 4)

LATENCY = pareto.PLANS["latency"]
LATENCY_TABLE = LATENCY.table


def test_latency_plan_runs_scp_latency_before_its_mac_twin_at_each_budget_and_seed():
    runs = pareto.plan_runs(LATENCY)
    assert len(set(runs)) == len(runs) == 18
    for arm in ("scp_latency", "scp_macs_latency", "uniform_latency"):
        assert sorted((r.budget, r.seed) for r in runs if r.arm == arm) == [
            (b, s) for b in (0.5, 0.7) for s in range(3)
        ]
    for r in runs:
        if r.arm == "scp_macs_latency":
            assert runs.index(pareto.Run("latency", "scp_latency", r.budget, r.seed)) < runs.index(r)
    assert {r.seed for r in runs[:6]} == {0}  # seed by seed
    assert "latency" not in pareto.DEFAULT_PLANS and LATENCY.table not in (MAIN.table, LONG.table)
    assert LATENCY.reference == "scp_latency" and MAIN.reference == LONG.reference == "scp"
    assert LATENCY.measures_latency and not MAIN.measures_latency
    assert LATENCY.total_epochs == 4 and LATENCY.train_boundaries == (2,)


def test_latency_arms_command_lines():
    scp = pareto.command(pareto.Run("latency", "scp_latency", 0.5, 1), LATENCY, "/w")
    assert "--config=configs/fashion_mnist.py:lambda" in scp and _flag(scp, "seed") == "1"
    assert _flag(scp, "target_latency_ratio") == "0.5" and _flag(scp, "target_macs_ratio") is None
    assert (_flag(scp, "num_epochs"), _flag(scp, "finetune_epochs"), _flag(scp, "lr_boundaries")) == ("3", "1", "(2,)")
    assert _flag(scp, "method") is None and not any("benchmark" in c for c in scp)
    twin = pareto.command(pareto.Run("latency", "scp_macs_latency", 0.5, 1), LATENCY, "/w", target_macs=0.412345678)
    assert _flag(twin, "target_macs_ratio") == "0.412346" and _flag(twin, "target_latency_ratio") is None
    assert (_flag(twin, "num_epochs"), _flag(twin, "finetune_epochs")) == ("3", "1")
    with pytest.raises(ValueError, match="scp_latency record"):
        pareto.command(pareto.Run("latency", "scp_macs_latency", 0.5, 1), LATENCY, "/w")
    widths = (24, 24, "M", 48, 48, "M", 96)
    uniform = pareto.command(pareto.Run("latency", "uniform_latency", 0.7, 2), LATENCY, "/w", widths)
    assert _flag(uniform, "method") == "dense" and _flag(uniform, "num_epochs") == "4"
    assert _flag(uniform, "finetune_epochs") == "0" and _flag(uniform, "lr_boundaries") == "(3,)"
    assert (
        _flag(uniform, "model_kwargs") == f"{{'widths': {widths!r}}}" and _flag(uniform, "target_latency_ratio") is None
    )
    assert pareto.label("scp_macs_latency", 4) == "SCP, MAC budget at the latency arm's MACs"


def test_scp_macs_latency_waits_for_the_scp_latency_record_and_takes_its_macs(tmp_path):
    raw = tmp_path / "raw"

    def no_timing(spec):
        raise AssertionError(f"no timing expected: {spec}")

    run = pareto.Run("latency", "scp_macs_latency", 0.5, 1)
    waits = pareto.inputs_for(run, str(raw), str(tmp_path / "search"), no_timing)
    assert waits.waits and waits.source == "waits for latency/scp_latency_0.5_s1.json"
    _write(raw, "latency", [{"arm": "scp_latency", "budget": 0.5, "seed": 1, "macs_ratio": 0.4213}])
    _write(raw, "latency", [{"arm": "scp_latency", "budget": 0.7, "seed": 1, "macs_ratio": 0.61}])  # not its own
    ready = pareto.inputs_for(run, str(raw), str(tmp_path / "search"), no_timing)
    assert not ready.waits and ready.target_macs == 0.4213 and ready.widths is None
    assert ready.extra == {"macs_target": {"ratio": 0.4213, "from": "latency/scp_latency_0.5_s1.json"}}
    assert "0.4213" in ready.source


def _fake_ratio(widths):
    """A latency ratio without timing: conv-to-conv products over the full network's (roughly MACs)."""
    convs = [w for w in widths if w != "M"]
    full = [w for w in pareto.DEMO_WIDTHS if w != "M"]

    def cost(ws):
        return ws[0] + sum(a * b for a, b in zip(ws, ws[1:]))

    return cost(convs) / cost(full)


@pytest.mark.parametrize("budget", [0.5, 0.7])
def test_uniform_factor_search_lands_on_the_measured_widths_nearest_the_budget(budget):
    calls = []

    def timer(widths):
        calls.append(widths)
        return {"ratio": _fake_ratio(widths), "dense_ms": 10.0, "model_ms": 10.0 * _fake_ratio(widths)}

    search = pareto.uniform_latency_search(budget, timer)
    assert len(calls) == len(set(calls)) == len(search["trials"]) <= pareto.SEARCH_STEPS
    assert search["ratio"] == pytest.approx(budget, abs=0.03)
    assert abs(search["ratio"] - budget) == min(abs(t["ratio"] - budget) for t in search["trials"])
    assert tuple(search["widths"]) == pareto.scaled_widths(search["factor"])
    # Over every factor at the search's resolution, nothing is much nearer than the widths chosen.
    grid = min(abs(_fake_ratio(pareto.scaled_widths(k / 64)) - budget) for k in range(1, 65))
    assert abs(search["ratio"] - budget) <= grid + 0.02
    assert "factor" in pareto.search_source(search) and f"budget {budget:g}" in pareto.search_source(search)


def test_uniform_factor_search_keeps_the_nearest_trial_under_noise():
    # A slow odd width: the bisection goes past it, yet the widths kept are the trial nearest the budget.
    def timer(widths):
        return {"ratio": _fake_ratio(widths) + (0.3 if widths[0] % 2 else 0.0)}

    search = pareto.uniform_latency_search(0.5, timer)
    nearest = min(search["trials"], key=lambda t: abs(t["ratio"] - 0.5))
    assert search["widths"] == nearest["widths"] and search["ratio"] == nearest["ratio"]


def test_uniform_search_is_made_once_per_budget_and_reused(tmp_path):
    specs = []

    def latency(spec):
        specs.append(spec)
        return pareto.uniform_latency_search(spec["search_uniform"], lambda w: {"ratio": _fake_ratio(w)})

    seeds = [
        pareto.inputs_for(pareto.Run("latency", "uniform_latency", 0.5, s), str(tmp_path), str(tmp_path / "s"), latency)
        for s in range(3)
    ]
    assert specs == [{"search_uniform": 0.5}] and (tmp_path / "s" / "uniform_latency_0.5_search.json").exists()
    assert len({i.widths for i in seeds}) == 1 and seeds[0].widths.count("M") == 2
    assert seeds[0].extra["widths_search"]["widths"] == list(seeds[0].widths)


def test_uniform_search_of_another_device_is_set_aside_and_redone(tmp_path):
    specs = []

    def latency(spec, device="cpu: B (2 cores)"):
        specs.append(spec)
        timer = lambda w: {"ratio": _fake_ratio(w), "device": device}  # noqa: E731
        return pareto.uniform_latency_search(spec["search_uniform"], timer)

    run = pareto.Run("latency", "uniform_latency", 0.5, 0)
    search_dir = tmp_path / "s"
    pareto.inputs_for(run, str(tmp_path), str(search_dir), lambda s: latency(s, "cpu: A (2 cores)"), "cpu: A (2 cores)")
    pareto.inputs_for(run, str(tmp_path), str(search_dir), latency, "cpu: A (2 cores)")  # same device: reused
    assert len(specs) == 1
    again = pareto.inputs_for(run, str(tmp_path), str(search_dir), latency, "cpu: B (2 cores)")
    assert len(specs) == 2 and again.extra["widths_search"]["device"] == "cpu: B (2 cores)"
    assert (search_dir / "uniform_latency_0.5_search.cpu-a-2-cores.json").exists()
    assert (
        pareto.search_device(pareto.load_json(str(search_dir / "uniform_latency_0.5_search.json")))
        == "cpu: B (2 cores)"
    )


def test_comparisons_use_each_tables_reference():
    records = [_record(a, b, s, 0.9, 0.5, plan="latency") for a in LATENCY.arms for b in (0.5, 0.7) for s in range(2)]
    pairs, groups = pareto.table_comparisons(LATENCY_TABLE, records)
    assert pairs == [
        (("scp_latency", 0.5), ("scp_macs_latency", 0.5)),
        (("scp_latency", 0.5), ("uniform_latency", 0.5)),
        (("scp_latency", 0.7), ("scp_macs_latency", 0.7)),
        (("scp_latency", 0.7), ("uniform_latency", 0.7)),
    ]
    assert groups[("uniform_latency", 0.7)] == [0.9, 0.9]
    main_pairs, _ = pareto.table_comparisons("4-epoch", [_record("scp", 0.3, 0, 0.9, 0.3)])
    assert {a for a, _ in main_pairs} == {("scp", 0.3), ("scp", 0.5)} and len(main_pairs) == 8
    mixed = [MAIN, LATENCY._replace(table=MAIN.table)]
    with pytest.raises(ValueError, match="not a reference"):
        pareto.planned_comparisons(mixed)


def _fake_latency(ratios, calls):
    """The runner's measuring function without timing: the final model's ratio by the run's folder."""

    def latency(spec):
        calls.append(spec)
        if "search_uniform" in spec:
            return pareto.uniform_latency_search(spec["search_uniform"], lambda w: {"ratio": _fake_ratio(w)})
        name = os.path.basename(spec["artifact"])
        if name not in ratios:
            raise RuntimeError("timing failed")
        ratio = ratios[name]
        load = {"before": [0.1, 0.1, 0.1], "after": [0.2, 0.1, 0.1]}
        return {
            "batch": 64,
            "dense_ms": 20.0,
            "model_ms": 20.0 * ratio,
            "ratio": ratio,
            "runs": 50,
            "load_average": load,
        }

    return latency


def test_runner_records_the_measured_latency_of_every_latency_run(tmp_path):
    code, raw, work = tmp_path / "code", tmp_path / "raw", tmp_path / "work"
    (code / "launch").mkdir(parents=True)
    (code / "launch" / "train.py").write_text(FAKE_TRAINER)
    version = "f" * 40
    calls = []
    latency = _fake_latency({"scp_latency_0.5_s0": 0.52, "scp_macs_latency_0.5_s0": 0.61}, calls)

    def run(only):
        paths = {"workroot": str(work), "raw_dir": str(raw), "log": str(tmp_path / "log")}
        return pareto.run_plan(
            LATENCY, code=str(code), code_version=version, device="cpu: fake", only=set(only), latency=latency, **paths
        )

    # The MAC twin waits for scp_latency; a run whose final model cannot be timed has no record.
    assert run({"scp_macs_latency_0.5_s0", "uniform_latency_0.5_s0"}) == 1
    assert not (raw / "latency").exists()
    assert run({"scp_latency_0.5_s0", "scp_macs_latency_0.5_s0"}) == 0
    scp = json.loads((raw / "latency" / "scp_latency_0.5_s0.json").read_text())
    twin = json.loads((raw / "latency" / "scp_macs_latency_0.5_s0.json").read_text())
    assert scp["latency"]["ratio"] == 0.52 and twin["latency"]["ratio"] == 0.61
    assert set(scp["latency"]) >= {"batch", "dense_ms", "model_ms", "ratio", "runs", "load_average"}
    assert scp["latency"]["batch"] == 64 and scp["table"] == LATENCY_TABLE
    assert _flag(scp["command"], "target_latency_ratio") == "0.5"
    assert _flag(twin["command"], "target_macs_ratio") == f"{scp['macs_ratio']:.6g}"
    assert twin["macs_target"]["from"] == "latency/scp_latency_0.5_s0.json"
    timed = [os.path.basename(c["artifact"]) for c in calls if "artifact" in c]
    assert timed == ["uniform_latency_0.5_s0", "scp_latency_0.5_s0", "scp_macs_latency_0.5_s0"]
    assert [c for c in calls if "search_uniform" in c] == [{"search_uniform": 0.5}]
    # The uniform arm trains the searched widths (searched once, before its first run).
    config = json.loads((work / version[:12] / "latency" / "uniform_latency_0.5_s0" / "config.json").read_text())
    search = json.loads((work / version[:12] / "latency" / "uniform_latency_0.5_search.json").read_text())
    assert config["model_kwargs"]["widths"] == search["widths"] and config["method"] == "dense"
    # A MAC-budget plan is not timed.
    report = json.loads((work / version[:12] / "latency" / "scp_latency_0.5_s0" / "report.json").read_text())
    provenance = {"code_version": version, "runner": {}, "cmd": [], "overrides": [], "device": "cpu"}
    plain = pareto.make_record(
        pareto.Run("main", "scp", 0.3, 0),
        MAIN,
        report=report,
        config=scp["config"],
        widths_source="",
        attempts=scp["attempts"],
        full_macs=1,
        **provenance,
    )
    assert "latency" not in plain and plain["test_accuracy"] == scp["test_accuracy"]


def test_render_latency_table_from_fake_records(tmp_path):
    raw = tmp_path / "raw"
    records = []
    for seed in range(3):
        d = 0.001 * (seed - 1)
        for budget in (0.5, 0.7):
            lat = {"batch": 64, "runs": 50}
            records += [
                _record("scp_latency", budget, seed, 0.915 + d, 0.4, plan="latency", latency={**lat, "ratio": budget}),
                _record("scp_macs_latency", budget, seed, 0.914 + d, 0.4, plan="latency",
                        latency={**lat, "ratio": budget + 0.1 + d}),
                _record("uniform_latency", budget, seed, 0.905 + d, 0.3, plan="latency",
                        latency={**lat, "ratio": budget - 0.01}),
            ]  # fmt: skip
    _write(raw, "latency", records)
    (raw / pareto.PIN_FILE).write_text(json.dumps({"commit": VERSION}))
    section = pareto.render(str(raw), str(tmp_path / "RESULTS.md"), str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 1000
    assert "### 4-epoch, latency budget schedule" in section and "plan latency: 18 of 18 planned runs" in section
    assert "**Status:** 0 of 42 planned runs" in section  # the default plans' status, as before
    assert "| latency / dense (measured) | mean wall |" in section
    assert "| 0.5 | SCP, MAC budget at the latency arm's MACs | 3 (0, 1, 2) | 91.40% | 0.10 | 40.00% | 60.00% |" in (
        section
    )
    assert (
        "| 0.7 | uniform widths at the measured latency, from scratch | 3 (0, 1, 2) | 90.50% | 0.10 | 30.00% | 69.00% |"
        in (section)
    )
    assert "95% family-wise over the 4 planned comparisons" in section
    assert "two-sided pooled t test of SCP (latency budget) against each other arm" in section
    rows = {
        line.split(" | ")[1]: line
        for line in section.splitlines()
        if line.startswith("| 0.5 | SCP (latency budget) vs ")
    }
    assert (
        "| SCP (latency budget) better |"
        in rows["SCP (latency budget) vs uniform widths at the measured latency, from scratch"]
    )
    assert "| no difference shown |" in rows["SCP (latency budget) vs SCP, MAC budget at the latency arm's MACs"]
    assert "| 4-epoch schedule" not in section and "### 4-epoch schedule" in section  # main's table: no records
    assert "fractions of the full network's measured latency" in section


def test_a_latency_block_runs_on_one_device_and_mixed_blocks_are_flagged(tmp_path, capsys):
    raw = tmp_path / "raw"
    lat = {"batch": 64, "runs": 50, "ratio": 0.49}
    other = _record("scp_latency", 0.5, 0, 0.9137, 0.28, plan="latency", latency=lat)
    other["machine"] = {"device": "cpu: other CPU (2 cores)"}
    _write(raw, "latency", [other, _record("uniform_latency", 0.5, 1, 0.9167, 0.25, plan="latency", latency=lat)])
    (raw / pareto.PIN_FILE).write_text(json.dumps({"commit": VERSION}))
    section = pareto.render(str(raw), str(tmp_path / "RESULTS.md"), None)
    assert "cpu: fake CPU (2 cores): 0.5/s1; cpu: other CPU (2 cores): 0.5/s0." in section and "Warning" not in section
    # the runner leaves the rest of a block timed on another device alone
    started = []
    capsys.readouterr()
    pareto.run_plan(
        pareto.PLANS["latency"], code=str(tmp_path), code_version=VERSION, device="cpu: fake CPU (2 cores)",
        workroot=str(tmp_path / "work"), raw_dir=str(raw), log=str(tmp_path / "log"),
        only={"uniform_latency_0.5_s0"}, latency=lambda spec: started.append(spec),
    )  # fmt: skip
    assert "its block (budget 0.5, seed 0) was timed on 'cpu: other CPU (2 cores)'" in capsys.readouterr().out
    assert not started and not (tmp_path / "work" / VERSION[:12] / "latency" / "uniform_latency_0.5_s0").exists()
    # a block that mixes devices is flagged
    _write(raw, "latency", [_record("uniform_latency", 0.5, 0, 0.9167, 0.25, plan="latency", latency=lat)])
    assert "**Warning: blocks 0.5/s0 mix devices" in pareto.render(str(raw), str(tmp_path / "RESULTS.md"), None)
    # archived, a record is listed apart and enters no table
    (raw / "archive").mkdir()
    (raw / "latency" / "scp_latency_0.5_s0.json").rename(raw / "archive" / "other-cpu_scp_latency_0.5_s0.json")
    section = pareto.render(str(raw), str(tmp_path / "RESULTS.md"), None)
    assert "Warning" not in section and "### Archived records: set aside, no verdicts" in section
    row = f"| `archive/other-cpu_scp_latency_0.5_s0.json` | `{VERSION[:12]}` | cpu: other CPU (2 cores) |"
    assert row in section
