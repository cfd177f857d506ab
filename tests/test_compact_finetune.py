"""Fine-tuning a user model's compact model (compact/trainable.py, pipeline/model_path.py's finetune).

The claim: one SGD step of the compact model (the sliced replay of the model's training computation)
equals, on every kept parameter and running statistic, one step of the dense network under the same
fixed cut (0/1 masks at the units: ``traced.masked.MaskedModel`` in 'fixed' mode), on linen and NNX
models with a residual, a concatenation, read groups and dropout -- and the pipeline fine-tunes the
compact variables, resumes a killed fine-tune exactly and refuses a dense-layout checkpoint.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import zoo_linen
import zoo_nnx
import zoo_user
import zoo_user_more
from flax import nnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from soft_prune_jax import pipeline
from soft_prune_jax.compact import artifact
from soft_prune_jax.compact.interpret import CompactError
from soft_prune_jax.compact.prune_model import prune_traced
from soft_prune_jax.compact.trainable import TrainableCompact, variable_kept
from soft_prune_jax.graph import ir
from soft_prune_jax.models.user import UserModel
from soft_prune_jax.pipeline import model_path
from soft_prune_jax.traced import masked
from soft_prune_jax.training import checkpoint as ckpt_lib
from soft_prune_jax.training.state import create_train_state
from soft_prune_jax.training.steps import train_step

from conftest import SyntheticData, normal, run_child, tiny_config

BATCH = 4


def _user(name: str) -> tuple[UserModel, tuple]:
    if name in zoo_linen.ZOO:
        ctor, shape = zoo_linen.ZOO[name]
        module = ctor()
        return UserModel(name, "linen", lambda _: module, module, "train", False), shape[1:]
    ctor, shape = zoo_nnx.ZOO[name]
    return UserModel(name, "nnx", lambda k: ctor(nnx.Rngs(k)), ctor(nnx.Rngs(0)), None, False), shape[1:]


def _perturbed(variables, seed: int, spread: float):
    """Drawn BN parameters and statistics (variances kept positive), so channels differ."""
    leaves, tree = jax.tree_util.tree_flatten(variables)
    out = [a + spread * normal(seed * 1000 + i, a.shape) for i, a in enumerate(leaves)]
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(variables)[0]]
    out = [jnp.abs(a) + 0.5 if "var" in p else a for a, p in zip(out, paths)]
    return jax.tree_util.tree_unflatten(tree, out)


def _one_step(model, variables, batch):
    """One SGD step with momentum through the trainer's own ``train_step`` (under vmap: the zoo's
    BatchNorms synchronise over the 'batch' axis, as under pmap)."""
    tx = optax.chain(optax.add_decayed_weights(1e-3), optax.sgd(0.1, momentum=0.9))
    state = create_train_state(jax.random.PRNGKey(3), variables, tx)

    def step(s, b):
        return train_step(s, b, model=model, tx=tx, learning_rate_fn=lambda _: 0.1, regulariser=lambda _: 0.0)

    lift = lambda t: jax.tree_util.tree_map(lambda a: a[None], t)  # noqa: E731
    new, metrics = jax.jit(jax.vmap(step, axis_name="batch"))(lift(state), lift(batch))
    return jax.tree_util.tree_map(lambda a: a[0], new), jax.tree_util.tree_map(lambda a: a[0], metrics)


def _compare(name: str, seed: int, fraction: float, spread: float):
    user, shape = _user(name)
    x = normal(seed + 1, (BATCH,) + tuple(shape))
    init = user.init(jax.random.PRNGKey(0), x)
    variables = _perturbed({k: init[k] for k in ("params", "batch_stats")}, seed, spread)
    units = masked.UnitSet.analyze(user, variables, x)
    rng = np.random.default_rng(seed)
    keep = {g.name: rng.random(g.size) < fraction for g in units.analysis.groups if g.prunable}
    assert keep, f"{name}: no prunable group"

    def trace_eval(v, inputs, _):
        return ir.trace(lambda w, *xs: user.apply(w, *xs, train=False), v, *inputs)

    def trace_train(v, x, k):
        return ir.trace(lambda w, x, k: user.apply(w, x, train=True, rngs={"dropout": k}), v, x, k)

    compact, compact_vars = prune_traced(trace_eval, variables, [x], keep=keep, call_kwargs={"train": False})
    kept = {n: p.kept for n, p in compact.program.plans.items() if p.prunable}
    assert sum(len(k) for k in kept.values()) < sum(p.total for p in compact.program.plans.values() if p.prunable)
    dense_model = masked.MaskedModel(user, units, "fixed", fixed=units.unit_masks_of(kept))
    trainable = TrainableCompact(compact, trace_train)
    batch = {"image": x, "label": jnp.arange(BATCH) % 5}
    dense, dense_metrics = _one_step(dense_model, variables, batch)
    small, small_metrics = _one_step(trainable, compact_vars, batch)
    np.testing.assert_allclose(small_metrics["loss"], dense_metrics["loss"], rtol=1e-5)
    slices = variable_kept(compact.program)
    moved = 0.0
    for i, (d, c, before) in enumerate(
        zip(*(jax.tree_util.tree_leaves(t) for t in (dense.variables, small.variables, variables)))
    ):
        d, before = np.asarray(d), np.asarray(before)
        for ax in range(d.ndim):
            if (i, ax) in slices:
                d, before = np.take(d, slices[(i, ax)], axis=ax), np.take(before, slices[(i, ax)], axis=ax)
        assert d.shape == np.shape(c), (name, i)
        np.testing.assert_allclose(np.asarray(c), d, rtol=1e-4, atol=1e-5, err_msg=f"{name} leaf {i}")
        moved = max(moved, float(np.max(np.abs(d - before))) if d.size else 0.0)
    assert moved > 1e-3  # the step changed the kept parameters: the comparison is not of two no-ops
    # evaluation of the trained compact variables equals the dense network's under the cut
    np.testing.assert_allclose(
        trainable.apply(small.variables, x),
        dense_model.apply(dense.variables, x, train=False),
        rtol=1e-4,
        atol=1e-5,
    )


@pytest.mark.parametrize(
    "name",
    ["resnet_post", "inception", "dropout", "resnet", "cnn"],
)
def test_one_compact_step_equals_the_dense_step_under_the_cut(name):
    """linen: a post-activation ResNet (residual, projection), an inception block (concatenation), dropout;
    NNX: a ResNet, a CNN with dropout."""
    _compare(name, seed=0, fraction=0.5, spread=0.3)


@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    fraction=st.sampled_from([0.3, 0.6]),
    spread=st.floats(0.05, 1.0),
)
def test_pre_activation_read_groups_step_exactly_under_drawn_bn_parameters(seed, fraction, spread):
    """A pre-activation ResNet: BN-ReLU units read the residual stream through gathers of their own."""
    _compare("resnet_pre", seed, fraction, spread)


# ---- the pipeline ---------------------------------------------------------------------------------


def _config(**overrides):
    fields = dict(
        model="user_zoo:resnet_tiny",
        num_classes=10,
        num_epochs=1,
        lr_boundaries=(),
        num_train_examples=64,
        sparsity_lambda=1.0,
        finetune_epochs=2,
    )
    config = tiny_config(**{**fields, **overrides})
    config.model_kwargs = {}
    return config


def _finetune_params(workdir: str) -> list:
    checkpointer = ckpt_lib.TrainCheckpointer(ckpt_lib.checkpoint_dir(workdir, "finetune"))
    try:
        return jax.tree_util.tree_leaves(checkpointer.restore_raw()["params"])
    finally:
        checkpointer.close()


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("pruned"))
    pipeline.run(_config(), workdir, "train,prune", dataset=SyntheticData())
    return workdir


def _copy(src: str, dst) -> str:
    import shutil

    shutil.copytree(src, str(dst))
    return str(dst)


def test_finetune_trains_the_compact_variables_and_saves_them(pruned, tmp_path):
    workdir = _copy(pruned, tmp_path / "w")
    config = _config()
    pipeline.run(config, workdir, "finetune", dataset=SyntheticData())
    dense = jax.tree_util.tree_leaves(pipeline.trained_variables(config, workdir)["params"])
    tuned = _finetune_params(workdir)
    assert sum(np.size(a) for a in tuned) < sum(np.size(a) for a in dense)  # the compact layout was trained
    model, compact_vars = model_path.compact_for_finetune(config, workdir, (8, 8, 1))
    assert [np.shape(a) for a in tuned] == [np.shape(a) for a in jax.tree_util.tree_leaves(compact_vars["params"])]
    assert any(not np.allclose(a, b) for a, b in zip(tuned, jax.tree_util.tree_leaves(compact_vars["params"])))
    # the artifact holds the fine-tuned variables and computes what the trainable model evaluates
    exported, arrays = artifact.load(os.path.join(workdir, "finetuned"))
    checkpointer = ckpt_lib.TrainCheckpointer(ckpt_lib.checkpoint_dir(workdir, "finetune"))
    state = checkpointer.restore_raw()
    checkpointer.close()
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    x = np.asarray(SyntheticData().test[0][:5])
    np.testing.assert_allclose(exported.apply(arrays, x), model.apply(variables, x), rtol=1e-4, atol=1e-5)


def test_killed_finetune_resumes_to_the_uninterrupted_result(pruned, tmp_path):
    config = _config()
    reference = _copy(pruned, tmp_path / "a")
    pipeline.run(config, reference, "finetune", dataset=SyntheticData())
    workdir = _copy(pruned, tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(config, workdir, "finetune", dataset=SyntheticData(kill_at=6))  # 4 steps per epoch
    pipeline.run(config, workdir, "finetune", dataset=SyntheticData())
    for a, b in zip(_finetune_params(reference), _finetune_params(workdir)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_dense_layout_finetune_checkpoint_is_one_line_naming_it(pruned, tmp_path):
    config = _config()
    workdir = _copy(pruned, tmp_path / "w")
    dense = pipeline.trained_variables(config, workdir)
    state = create_train_state(jax.random.PRNGKey(0), dense, optax.sgd(0.1, momentum=0.9))
    checkpointer = ckpt_lib.TrainCheckpointer(ckpt_lib.checkpoint_dir(workdir, "finetune"))
    checkpointer.save(4, state)
    checkpointer.close()
    with pytest.raises(ValueError, match="fine-tune of the dense network under the cut") as info:
        pipeline.run(config, workdir, "finetune", dataset=SyntheticData())
    assert "\n" not in str(info.value) and ckpt_lib.checkpoint_dir(workdir, "finetune") in str(info.value)


def test_variable_only_reduction_over_cut_channels_is_refused_in_one_line():
    """Weight standardisation normalises a kernel over the input channels the previous layer loses:
    the compact model cannot recompute it from the kept ones, so fine-tuning it compact is refused."""
    module = zoo_user.Body(zoo_user_more._weight_standardized)
    user = UserModel("ws", "linen", lambda _: module, module, None, False)
    x = normal(0, zoo_user_more.SHAPE)
    variables = user.init(jax.random.PRNGKey(1), x)

    def trace_eval(v, inputs, _):
        return ir.trace(lambda w, *xs: user.apply(w, *xs), v, *inputs)

    groups = masked.UnitSet.analyze(user, variables, x).analysis.groups
    keep = {g.name: np.arange(g.size) < g.size // 2 for g in groups if g.prunable}
    compact, _ = prune_traced(trace_eval, variables, [x], keep=keep)
    assert any(len(p.kept) < p.total for p in compact.program.plans.values())
    with pytest.raises(CompactError, match="variable-only computation over channels the cut drops") as info:
        TrainableCompact(compact, lambda v, x, k: ir.trace(lambda w, x: user.apply(w, x, train=True), v, x))
    assert "\n" not in str(info.value)


DEVICES_CHILD = r"""
import json, sys, tempfile
import jax, numpy as np
sys.path[:0] = [TESTS_DIR, REPO]
from conftest import SyntheticData, run_child, tiny_config
from soft_prune_jax import pipeline
from soft_prune_jax.pipeline import model_path
from soft_prune_jax.training.loop import fit

config = tiny_config(model="user_zoo:resnet_tiny", num_classes=10, num_epochs=1, lr_boundaries=(),
                     num_train_examples=32, sparsity_lambda=1.0, finetune_epochs=1)
config.model_kwargs = {}
workdir = tempfile.mkdtemp()
pipeline.run(config, workdir, "train,prune", dataset=SyntheticData())
dense = pipeline.trained_variables(config, workdir)
out = {}
for name, parallel, devices in (("single", "pmap", 1), ("pmap", "pmap", 2), ("shard_map", "shard_map", 2)):
    config.parallel = parallel
    phase = model_path.finetune_phase(config, workdir, (8, 8, 1), dense, 1)
    result = fit(config, tempfile.mkdtemp(), phase, dataset=SyntheticData(), devices=jax.devices()[:devices])
    out[name] = jax.tree_util.tree_leaves(result.state.variables)
errors = {k: max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(out["single"], out[k]))
          for k in ("pmap", "shard_map")}
size = lambda leaves: int(sum(np.size(a) for a in leaves))
print("RESULT " + json.dumps({"devices": len(jax.devices()), "errors": errors, "compact": size(out["single"]),
                              "dense": size(jax.tree_util.tree_leaves(dense))}))
"""


def test_compact_finetune_on_two_devices_equals_one():
    """The user's BN synchronises its batch statistics over the trainer's axis in the compact replay too:
    pmap and shard_map over two devices end where one device with the same global batch ends."""
    tests = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(tests)
    child = DEVICES_CHILD.replace("TESTS_DIR", repr(tests)).replace("REPO", repr(repo))
    result = run_child(child, cwd=tests, devices=2)
    assert result["devices"] == 2 and result["compact"] < result["dense"]
    for name, error in result["errors"].items():
        assert error < 1e-4, (name, error)
