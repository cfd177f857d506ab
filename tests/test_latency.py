"""Latency as a cost (scp/latency_model.py, compact/layer_timings.py, traced/graph_ops.py,
pipeline/latency_setup.py): the interpolated tables, the differentiable estimate, the graph's ops,
widths chosen by latency, the
per-device cache and its refusal of damaged or foreign files. Timings are injected: these tests are
about the logic."""

import json
import logging
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from soft_prune_jax.compact import layer_timings as CL
from soft_prune_jax.models.user import UserModel
from soft_prune_jax.pipeline import latency_setup as PL
from soft_prune_jax.scp import cost as B
from soft_prune_jax.scp import latency_model as L
from soft_prune_jax.traced import graph_cost as UC
from soft_prune_jax.traced import masked
from soft_prune_jax.traced.graph_ops import graph_ops

from conftest import tiny_model

VGG_WIDTHS = (24, "M", 40, 20)
INPUT = (8, 8, 3)


def aligned(n: int) -> int:
    """A fake device on which a width that is not a multiple of 8 costs double."""
    return n if n % 8 == 0 else 2 * n


def blocky(op, n_in, n_out, batch, dtype) -> float:
    return float(aligned(n_in) * aligned(n_out)) * 1e-3


def chain_cost(a: str = "a", b: str = "b") -> B.CostModel:
    """Two groups a (24) and b (40): conv0 3 -> a, conv1 a -> b, head b -> 10."""
    return B.CostModel(
        (
            B.CostLayer("conv0", 1.0, 3, 24, (), ((a, 1),)),
            B.CostLayer("conv1", 1.0, 24, 40, ((a, 1),), ((b, 1),)),
            B.CostLayer("head", 1.0, 40, 10, ((b, 1),), ()),
        ),
        ((a, 24), (b, 40)),
    )


def fake_model(cost: B.CostModel, ms=lambda a, b: a * b * 1e-3, rest=2.0) -> L.LatencyModel:
    tables = []
    for layer in cost.layers:
        gi = L.grid(layer.in_channels) if layer.in_terms else (layer.in_channels,)
        go = L.grid(layer.out_channels) if layer.out_terms else (layer.out_channels,)
        tables.append(L.LayerTable(layer.path, gi, go, tuple(tuple(ms(a, b) for b in go) for a in gi)))
    dense = rest + sum(t.ms[-1][-1] for t in tables)
    return L.LatencyModel(tuple(tables), rest, dense, 64, "float32", "fake")


def test_grid_holds_multiples_of_the_step_and_the_full_width():
    assert L.grid(32) == (4, 8, 16, 24, 32)
    assert L.grid(30) == (4, 8, 16, 24, 30)
    assert L.grid(3) == (3,)
    assert L.grid(128) == (4, 32, 64, 96, 128)  # about GRID_POINTS per axis


def test_estimate_is_exact_on_the_grid_bilinear_between_and_differentiable():
    cost = chain_cost()
    model = fake_model(cost)
    full = float(L.latency_of_widths(cost, model, {}))
    assert full == pytest.approx(model.dense_ms, rel=1e-6)
    at_grid = float(L.latency_of_widths(cost, model, {"a": 16, "b": 24}))
    assert at_grid == pytest.approx(2.0 + (3 * 16 + 16 * 24 + 24 * 10) * 1e-3, rel=1e-5)
    # a*b is bilinear, so interpolation between grid points reproduces it
    between = float(L.latency_of_widths(cost, model, {"a": 20.0, "b": 28.0}))
    assert between == pytest.approx(2.0 + (3 * 20 + 20 * 28 + 28 * 10) * 1e-3, rel=1e-5)
    grad = jax.grad(lambda w: L.latency_of_widths(cost, model, w))({"a": jnp.float32(20.0), "b": jnp.float32(28.0)})
    assert float(grad["a"]) == pytest.approx((3 + 28) * 1e-3, rel=1e-4)
    assert float(grad["b"]) == pytest.approx((20 + 10) * 1e-3, rel=1e-4)


def test_ratios_follow_keep_probabilities():
    cost = chain_cost()
    model = fake_model(cost)
    keep = {"a": jnp.full(24, 0.5), "b": jnp.ones(40)}
    assert float(L.latency(cost, model, keep)) == pytest.approx(
        float(L.latency_of_widths(cost, model, {"a": 12.0, "b": 40.0})), rel=1e-6
    )


def test_choose_widths_picks_the_fastest_never_below_the_count_ties_to_smaller():
    cost = chain_cost()

    def ms(path, n_in, n_out):
        return aligned(n_in) * aligned(n_out) * 1e-3

    chosen = L.choose_widths(cost, {"a": 13, "b": 40}, ms)
    assert chosen == {"a": 16, "b": 40}  # 13 -> 16: aligned is cheaper than the doubled odd width
    flat = L.choose_widths(cost, {"a": 13, "b": 33}, lambda p, i, o: 1.0)
    assert flat == {"a": 13, "b": 33}  # every candidate ties: the counts themselves
    assert all(chosen[g] >= c for g, c in {"a": 13, "b": 40}.items())


def test_timings_are_cached_per_device_and_damaged_or_foreign_files_are_rebuilt(tmp_path):
    calls = []

    def measure(op, n_in, n_out, batch, dtype):
        calls.append((n_in, n_out))
        return 1.5

    path = str(tmp_path / "t.json")
    op = CL.LayerOp(CL.CONV, (8, 8), (3, 3), (1, 1), ((1, 1), (1, 1)))
    t = CL.Timings(path, measure, device="dev A")
    assert t.ms(op, 4, 8, 64, "float32") == t.ms(op, 4, 8, 64, "float32") == 1.5 and len(calls) == 1
    assert CL.Timings(path, measure, device="dev A").ms(op, 4, 8, 64, "float32") == 1.5 and len(calls) == 1
    with pytest.warns(UserWarning, match="measured on 'dev A', not on this device"):
        CL.Timings(path, measure, device="dev B").ms(op, 4, 8, 64, "float32")
    assert len(calls) == 2
    with open(path) as f:
        assert json.load(f)["device"] == "dev B"
    for damage in ("{not json", json.dumps({"format": CL.FORMAT, "device": "dev B", "entries": {"k": "x"}}), "[]"):
        with open(path, "w") as f:
            f.write(damage)
        with pytest.warns(UserWarning, match="is damaged"):
            CL.Timings(path, measure, device="dev B")
    with open(path, "w") as f:  # timings of an older rule are measured again, never mixed in
        json.dump({"format": CL.FORMAT - 1, "device": "dev B", "entries": {"k": 1.0}}, f)
    with pytest.warns(UserWarning, match=f"older rule \\(format {CL.FORMAT - 1}, now {CL.FORMAT}\\)"):
        assert CL.Timings(path, measure, device="dev B").entries == {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CL.Timings(str(tmp_path / "absent.json"), measure, device="dev B")  # no file: no warning
    model = L.LatencyModel((), 1.0, 1.0, 64, "float32", "dev A")
    with pytest.raises(ValueError, match="measured on 'dev A' cannot price this device"):
        CL.check_device(model, "dev B")


def test_a_layer_is_timed_with_its_bn_relu_and_its_output_consumed():
    x, w, scale = jnp.arange(6.0).reshape(2, 3) - 2.0, jnp.ones((3, 2)), jnp.asarray([1.0, -1.0])
    y = x @ w
    expected = jnp.sum(jnp.maximum(y * scale + scale, 0.0))
    assert float(CL.in_context(jnp.dot)(x, w, scale)) == pytest.approx(float(expected))
    op = CL.LayerOp(CL.CONV, (6, 6), (3, 3), (1, 1), ((1, 1), (1, 1)))
    assert CL.time_op(op, 2, 3, 2, "float32") > 0 and CL.time_op(op, 0, 3, 2, "float32") == 0.0


def _vgg_units():
    """The UnitSet of a tiny VGG-16 (widths 24, 40, 20: odd counts a latency chooser can pad)."""
    model = tiny_model("vgg16", widths=VGG_WIDTHS)
    x = jnp.zeros((2,) + INPUT)
    variables = model.init(jax.random.PRNGKey(0), x)
    return masked.UnitSet.analyze(UserModel("vgg16", "linen", lambda _: model, model), variables, x)


def test_graph_ops_and_latency_model_cover_every_layer(tmp_path):
    units = _vgg_units()
    cost = UC.cost_model(units)
    ops = graph_ops(units.analysis)
    assert {layer.path for layer in cost.layers} == set(ops)
    geometry = {path: (op.kind, op.spatial) for path, op in ops.items()}
    assert geometry == {
        "conv0": ("conv", (8, 8)),
        "conv1": ("conv", (4, 4)),
        "conv2": ("conv", (4, 4)),
        "head": ("dense", (1, 1)),
    }
    lm = CL.latency_model(cost, ops, 10.0, CL.Timings(str(tmp_path / "t.json"), blocky, "fake"), batch=4)
    assert float(L.latency_of_widths(cost, lm, {})) == pytest.approx(10.0, rel=1e-5)
    assert lm.rest_ms == pytest.approx(
        10.0 - sum(blocky(None, t.in_grid[-1], t.out_grid[-1], 4, "") for t in lm.tables)
    )


def test_layers_timed_slower_than_the_whole_network_are_brought_down_to_it(tmp_path):
    # a machine slowed down between timing the dense model (0.05 ms) and its layers: no negative rest
    units = _vgg_units()
    cost = UC.cost_model(units)
    ops = graph_ops(units.analysis)
    timings = CL.Timings(str(tmp_path / "t.json"), blocky, "fake")
    layers = sum(
        blocky(None, t.in_grid[-1], t.out_grid[-1], 4, "")
        for t in CL.latency_model(cost, ops, 10.0, timings, batch=4).tables
    )
    assert layers > 0.05
    lm = CL.latency_model(cost, ops, 0.05, timings, batch=4)
    assert lm.rest_ms == 0.0 and lm.scale == pytest.approx(0.05 / layers)
    full = {g: n for g, n in cost.group_sizes}
    assert float(L.latency_of_widths(cost, lm, full)) == pytest.approx(0.05, rel=1e-5)
    assert L.latency_at(cost, lm, full, CL.layer_ms(cost, ops, timings, 4, "float32")) == pytest.approx(0.05, rel=1e-5)
    half = {g: n // 2 for g, n in cost.group_sizes}  # estimates keep the tables' proportions
    assert 0.0 < float(L.latency_of_widths(cost, lm, half)) < 0.05


def test_tables_cached_at_another_speed_are_scaled_to_the_machine_now(tmp_path):
    units = _vgg_units()
    cost = UC.cost_model(units)
    ops = graph_ops(units.analysis)
    path = str(tmp_path / "t.json")
    CL.latency_model(cost, ops, 10.0, CL.Timings(path, lambda *a: 2.0 * blocky(*a), "fake"), batch=4)
    lm = CL.latency_model(cost, ops, 10.0, CL.Timings(path, blocky, "fake"), batch=4)  # cache from a 2x slower day
    assert lm.scale == pytest.approx(0.5)
    now = sum(blocky(None, t.in_grid[-1], t.out_grid[-1], 4, "") for t in lm.tables)
    assert lm.rest_ms == pytest.approx(10.0 - now)
    assert float(L.latency_of_widths(cost, lm, {})) == pytest.approx(10.0, rel=1e-5)
    layer_ms = CL.layer_ms(cost, ops, CL.Timings(path, blocky, "fake"), 4, "float32")  # the cache, unscaled
    full = {g: n for g, n in cost.group_sizes}
    assert L.latency_at(cost, lm, full, layer_ms) == pytest.approx(10.0, rel=1e-5)


def test_graph_chooser_pads_odd_counts_to_the_fastest_width(tmp_path):
    units = _vgg_units()
    cost = UC.cost_model(units)
    timings = CL.Timings(str(tmp_path / "t.json"), blocky, "fake")
    counts = {g: n - 3 for g, n in cost.group_sizes}  # 21, 37, 17: odd widths cost double on the blocky device
    chosen = PL.graph_chooser(cost, graph_ops(units.analysis), 4, timings)(counts)
    # conv0 3->a, conv1 a->b, conv2 b->c, head c->10, by hand: 21 -> 24 and 37 -> 40 (aligned, cheaper);
    # 17 stays (its only candidate, the full 20, is odd too and wider)
    assert chosen == dict(zip(cost.groups, (24, 40, 17)))


def test_pad_keep_adds_the_most_alive_dropped_channels():
    keep = {"a": np.array([1, 0, 0, 1, 0], bool)}
    z = {"a": np.array([0.0, 3.0, -1.0, 0.5, 2.0])}
    assert PL.pad_keep(keep, {"a": 4}, z)["a"].tolist() == [True, False, True, True, True]
    assert PL.pad_keep(keep, {"a": 2}, z)["a"].tolist() == keep["a"].tolist()


def test_config_latency_targets_are_checked_before_training():
    from soft_prune_jax.training import config_validation

    from conftest import tiny_config

    for field, value in (("target_latency_ratio", 0.5), ("target_latency_ratio", 1.0), ("target_latency_ms", 3.0)):
        config = tiny_config(**{field: value})
        config_validation._validate_budget(config)
    for field, bad in (("target_latency_ratio", 0.0), ("target_latency_ratio", 1.5), ("target_latency_ms", -1.0)):
        with pytest.raises(ValueError, match=rf"config.{field}={bad!r} is invalid"):
            config_validation._validate_budget(tiny_config(**{field: bad}))
    with pytest.raises(
        ValueError, match="config.target_macs_ratio=0.5 and config.target_latency_ratio=0.5 are both set"
    ):
        config_validation._validate_budget(tiny_config(target_macs_ratio=0.5, target_latency_ratio=0.5))
    with pytest.raises(ValueError, match="config.target_latency_ms=3.0 needs config.method='scp'"):
        config_validation._validate_budget(tiny_config(method="dense", target_latency_ms=3.0))


def test_unreachable_latency_target_names_the_nearest_reachable():
    from soft_prune_jax.pipeline import budget_setup as budget

    from conftest import tiny_config

    cost = chain_cost()
    model = fake_model(cost, rest=2.0)  # dense ~ 2 + 0.072 + 0.96 + 0.4 ms; one channel each ~ 2.01 ms
    floor = float(L.latency_of_widths(cost, model, {"a": 1, "b": 1})) / model.dense_ms
    with pytest.raises(
        ValueError, match=rf"target_latency_ratio=0.5 cannot be reached .* expected at least {floor:.3g}"
    ):
        budget.check_reachable(tiny_config(target_latency_ratio=0.5), cost, model)
    budget.check_reachable(tiny_config(target_latency_ratio=0.9), cost, model)
    ms_config = tiny_config(target_latency_ms=1.0)
    with pytest.raises(ValueError, match=rf"target_latency_ms=1.0 cannot be reached .* {floor * model.dense_ms:.3g}"):
        budget.check_reachable(ms_config, cost, model)
    assert budget.latency_ratio(tiny_config(target_latency_ms=100.0), model) == 1.0


def test_the_controller_steers_the_latency_estimate_under_a_latency_budget():
    from soft_prune_jax.scp import controller as C
    from soft_prune_jax.scp import masks as M
    from soft_prune_jax.training.budget_control import Budget

    cost = chain_cost(f"{M.MASKED_PREFIX}a", f"{M.MASKED_PREFIX}b")
    model = fake_model(cost, rest=0.0)
    params = {
        name: {"scale": jnp.ones(n), "bias": jnp.where(jnp.arange(n) < n // 2, 1.0, -3.0)}
        for name, n in cost.group_sizes
    }  # the second half of each group is dead: z = eps + 3, q ~ 1
    mask = M.MaskConfig()
    b = Budget(cost, mask, 2.0, 1e-4, controller=C.ControllerConfig(target=0.5), latency=model, early_q=0.9)
    state, metrics = b.update(b.init_state(), params, 0)
    hard = float(L.latency_of_widths(cost, model, dict(zip(cost.groups, (12, 20))))) / model.dense_ms
    assert float(metrics["latency_hard_ratio"]) == pytest.approx(hard, rel=1e-4)
    assert float(metrics["latency_signal_ratio"]) == pytest.approx(hard, rel=1e-4)
    assert "macs_signal_ratio" not in metrics and float(metrics["latency_target_ratio"]) == 0.5
    # the estimate is below the target: lambda falls
    assert float(state.log_lambda) < float(b.init_state().log_lambda)


def test_landing_tightens_the_aim_until_the_measured_latency_meets_the_target():
    from soft_prune_jax.scp import cost as Bm

    from conftest import tiny_config

    cost = chain_cost()
    model = fake_model(cost, rest=0.0)
    z = {"a": np.linspace(-1, 1, 24), "b": np.linspace(-1, 1, 40)}
    full = {"a": np.ones(24, np.float32), "b": np.ones(40, np.float32)}

    def masks_for(cost_fn):
        return Bm.land_on_budget(full, z, cost_fn, 1.0)[0]

    def widths_of(masks):
        return {n: int(np.sum(m)) for n, m in masks.items()}

    measured = []

    def measure(masks):  # the device runs compact models 20% slower than the tables say
        estimate = float(L.latency_of_widths(cost, model, widths_of(masks)))
        measured.append(estimate)
        return model.dense_ms, 1.2 * estimate

    masks, record = PL.land(tiny_config(target_latency_ratio=0.5), cost, model, masks_for, widths_of, measure)
    assert len(record["landing_tries"]) >= 2  # the first landing measured above the target
    assert record["measured_latency_ratio"] <= 0.5 + 1e-6
    assert record["target_latency_ratio"] == 0.5 and record["estimated_latency_ratio"] <= 0.5 / 1.2 + 1e-6
    assert record["landing_tries"][1]["aim"] < record["landing_tries"][0]["aim"]


def _landing_on(measure_share, rest: float = 0.0):
    """PL.land at target 0.5 on a fake device whose compact models measure ``measure_share(estimate)``
    of the dense model, ``rest`` ms of it outside the groups' layers: the record."""
    from soft_prune_jax.scp import cost as Bm

    from conftest import tiny_config

    cost = chain_cost()
    model = fake_model(cost, rest=rest)
    z = {"a": np.linspace(-1, 1, 24), "b": np.linspace(-1, 1, 40)}
    full = {"a": np.ones(24, np.float32), "b": np.ones(40, np.float32)}

    def widths_of(masks):
        return {n: int(np.sum(m)) for n, m in masks.items()}

    def measure(masks):
        estimate = float(L.latency_of_widths(cost, model, widths_of(masks))) / model.dense_ms
        return model.dense_ms, measure_share(estimate) * model.dense_ms

    def masks_for(cost_fn):
        return Bm.land_on_budget(full, z, cost_fn, 1.0)[0]

    return PL.land(tiny_config(target_latency_ratio=0.5), cost, model, masks_for, widths_of, measure)[1]


def test_landing_raises_the_aim_where_the_measurement_lands_far_below_the_target():
    record = _landing_on(lambda estimate: 0.6 * estimate)  # compact models run faster than the tables say
    tries = record["landing_tries"]
    assert len(tries) >= 2 and tries[1]["aim"] > tries[0]["aim"]  # the first landed at ~0.3: too many channels gone
    assert (1 - PL.landing.LANDING_SLACK) * 0.5 <= record["measured_latency_ratio"] <= 0.5 + 1e-9
    assert record["kept_try"] == len(tries) - 1
    assert record["met"] and not record["at_floor"]


def test_landing_says_so_where_it_cuts_to_the_bone_and_still_misses(caplog):
    # the layers outside the groups take ~46% of the dense model and every compact model measures 0.12
    # above its estimate: the landing runs down to one channel per group and still misses 0.5
    with caplog.at_level(logging.WARNING):
        record = _landing_on(lambda estimate: estimate + 0.12, rest=1.2)
    assert record["at_floor"] and not record["met"] and record["measured_latency_ratio"] > 0.5
    assert "latency budget 0.500 not met" in caplog.text and "one channel in every prunable group" in caplog.text


def test_landing_keeps_the_slowest_cut_within_the_target_when_a_raised_aim_overshoots():
    # fast below an estimate of 0.45, then much slower: the raised aim lands above the target
    record = _landing_on(lambda estimate: 0.5 * estimate if estimate < 0.45 else 1.3 * estimate)
    tries = record["landing_tries"]
    ratios = [t["compact_ms"] / t["dense_ms"] for t in tries]
    within = [r for r in ratios if r <= 0.5]
    assert any(r > 0.5 for r in ratios) and within  # some try overshot, some met it
    assert record["measured_latency_ratio"] == max(within)
    assert ratios[record["kept_try"]] == max(within)
    # a try measured above the target bounds the next aims: never past it, halfway where asked to jump
    first, second, third = tries[:3]
    assert ratios[0] > 0.5 and ratios[1] < 0.45 * 0.9 and len(tries) >= 3
    assert third["aim"] == pytest.approx((first["estimated_ratio"] + second["estimated_ratio"]) / 2)


def _fake_device(monkeypatch, tmp_path, dense_ms: float, compact_share: float):
    """Timings from a closed form, a dense model of ``dense_ms`` and compact models measured at
    ``compact_share`` of it, so that a pipeline run exercises the latency budget without timing."""
    from soft_prune_jax.compact import layer_timings as CLm

    monkeypatch.setattr(CLm, "CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(CLm, "time_op", lambda op, a, b, batch, dtype: 1e-4 * op.spatial[0] * op.spatial[1] * a * b)
    monkeypatch.setattr(PL, "dense_ms", lambda *args, **kwargs: dense_ms)
    monkeypatch.setattr(PL, "measure_pair", lambda *args, **kwargs: (dense_ms, compact_share * dense_ms))


@pytest.mark.slow
def test_latency_budget_trains_lands_and_reports(monkeypatch, tmp_path):
    from soft_prune_jax.pipeline import run

    from conftest import SyntheticData, tiny_config

    _fake_device(monkeypatch, tmp_path, dense_ms=1.0, compact_share=0.55)
    config = tiny_config(
        model_kwargs={"widths": (16, "M", 32)},
        num_train_examples=512,
        num_epochs=4,
        lr_boundaries=(4,),
        checkpoint_every_epochs=4,
        sparsity_lambda=0.005,
        target_latency_ratio=0.6,
        finetune_epochs=0,
        log_every_steps=16,
        round_to="latency",
    )
    config.budget_controller.ki = 0.1
    out = run(config, str(tmp_path / "w"), phases="train,prune", dataset=SyntheticData(num_train=512))
    metrics = out["train"]["train_metrics"]
    assert "latency_signal_ratio" in metrics and "macs_signal_ratio" not in metrics
    landing = out["prune"]["budget"]
    assert landing["target_latency_ratio"] == 0.6 and landing["measured_latency_ratio"] == pytest.approx(0.55)
    assert landing["estimated_latency_ratio"] <= 0.6 + 1e-6
    assert set(out["prune"]["kept_indices"]) == set(out["prune"]["kept_channels"])


def test_report_shows_target_estimate_and_measurement_side_by_side():
    from soft_prune_jax.measure import markdown

    budget = {
        "target_latency_ratio": 0.5,
        "target_latency_ratio_of_dense": 0.5,
        "estimated_latency_ratio": 0.46,
        "measured_latency_ratio": 0.49,
        "dense_ms": 20.0,
        "compact_ms": 9.8,
        "batch_size": 64,
        "device": "cpu: X (2 cores), jax 0",
        "landing_tries": [{}, {}],
    }
    counts = ("dense_macs", "compact_macs", "dense_params", "compact_params", "total_channels", "kept_channels")
    summary = {**{k: 1 for k in counts}, "macs_reduction_pct": 0.0, "params_reduction_pct": 0.0}
    summary["channel_reduction_pct"] = 0.0
    out = {"model": "m", "dataset": "d", "method": "scp", "pruning": {"summary": summary}, "macs_convention": "MACs"}
    page = markdown.render({**out, "prune": {"budget": budget}}, "table", None)
    assert (
        "| latency budget (of dense, batch 64, cpu: X (2 cores), jax 0) | target 50.0%, estimated 46.0%, "
        "measured 49.0% (dense 20.00 ms, compact 9.80 ms; 2 landing tries) |"
    ) in page


def test_progress_line_shows_the_latency_estimate_under_a_latency_budget():
    from soft_prune_jax.training.progress import format_progress

    metrics = {"loss": 1.0, "cross_entropy": 1.0, "accuracy": 0.5, "learning_rate": 0.1, "lambda": 0.01}
    metrics.update(macs_expected_ratio=0.8, macs_hard_ratio=0.7)
    metrics.update(latency_expected_ratio=0.9, latency_hard_ratio=0.75, latency_signal_ratio=0.7)
    line = format_progress("train", 10, 100, 1.0, {**metrics, "latency_target_ratio": 0.6}, None, None)
    assert line.endswith("| latency est. expected 90.0% hard-masked 75.0% early 70.0% (target now 60.0%)")
    assert "latency est." not in format_progress("train", 10, 100, 1.0, metrics, None, None)


@pytest.mark.slow
def test_a_mac_budget_counts_the_widths_latency_pads(monkeypatch, tmp_path):
    from soft_prune_jax.compact import layer_timings as CLm
    from soft_prune_jax.pipeline import run

    from conftest import SyntheticData, tiny_config

    _fake_device(monkeypatch, tmp_path, dense_ms=1.0, compact_share=0.5)
    monkeypatch.setattr(CLm, "time_op", lambda op, a, b, batch, dtype: 1e-4 * aligned(a) * aligned(b))
    config = tiny_config(
        model_kwargs={"widths": (16, "M", 32)},
        num_train_examples=256,
        num_epochs=2,
        lr_boundaries=(2,),
        sparsity_lambda=1e-4,  # the trained masks drop little: landing must remove channels
        target_macs_ratio=0.4,
        finetune_epochs=0,
        round_to="latency",
    )
    out = run(config, str(tmp_path / "w"), phases="train,prune", dataset=SyntheticData(num_train=256))
    landing = out["prune"]["budget"]
    assert landing["target_macs_ratio"] == 0.4 and landing["reached_macs_ratio"] <= 0.4 + 1e-9
    assert landing["hard_masked_macs_ratio"] > 0.4  # so landing, with the padding counted, did the cutting
