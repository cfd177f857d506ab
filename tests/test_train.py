"""Tests of soft_prune_jax.train: schedule, optimiser, loss terms, steps and the loop.

Also home of the synthetic in-memory dataset (the layout of soft_prune_jax.data) and the tiny
config that test_resume.py, test_parallel.py and test_pipeline.py reuse.
"""

from __future__ import annotations

import collections
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from soft_prune_jax.method import masks as M
from soft_prune_jax.training import train

TINY_WIDTHS = (4, "M", 8)
DatasetInfo = collections.namedtuple("DatasetInfo", "num_classes input_shape num_train num_test")


class SyntheticData:
    """Learnable class prototypes plus noise, served with the layout of soft_prune_jax.data.

    The order of training examples is a function of the iterator's seed only. ``kill_at`` raises
    KeyboardInterrupt when that many training batches have been served (a killed run), ``nan_at``
    serves NaN images from that batch on (a diverging run).
    """

    def __init__(self, num_train=256, num_test=36, shape=(8, 8, 1), num_classes=10, kill_at=None, nan_at=None):
        rng = np.random.default_rng(1234)
        prototypes = rng.normal(size=(num_classes,) + shape).astype(np.float32)

        def make(n):
            labels = rng.integers(0, num_classes, n).astype(np.int32)
            images = prototypes[labels] + 0.3 * rng.normal(size=(n,) + shape).astype(np.float32)
            return images.astype(np.float32), labels

        self.train, self.test = make(num_train), make(num_test)
        self.shape, self.num_classes = shape, num_classes
        self.kill_at, self.nan_at = kill_at, nan_at
        self.served = 0

    def get_dataset_info(self, config):
        return DatasetInfo(self.num_classes, self.shape, config.num_train_examples or len(self.train[1]),
                           len(self.test[1]))

    def train_iterator(self, config, *, local_devices, seed):
        images, labels = self.train
        n = config.num_train_examples or len(labels)
        bs = config.batch_size
        rng = np.random.default_rng(seed)
        while True:
            order = rng.permutation(n)
            for i in range(n // bs):
                if self.kill_at is not None and self.served == self.kill_at:
                    raise KeyboardInterrupt(f"killed after {self.served} batches")
                idx = order[i * bs:(i + 1) * bs]
                x = images[idx].copy()
                if self.nan_at is not None and self.served >= self.nan_at:
                    x[:] = np.nan
                self.served += 1
                yield {"image": x.reshape((local_devices, -1) + x.shape[1:]),
                       "label": labels[idx].reshape(local_devices, -1)}

    def eval_iterator(self, config, *, local_devices, split="test"):
        images, labels = self.test
        bs = config.eval_batch_size
        for start in range(0, len(labels), bs):
            x, y = images[start:start + bs], labels[start:start + bs]
            mask = np.ones(bs, np.float32)
            mask[len(y):] = 0
            pad = bs - len(y)
            x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
            y = np.concatenate([y, np.zeros(pad, y.dtype)])
            yield {"image": x.reshape((local_devices, -1) + x.shape[1:]), "label": y.reshape(local_devices, -1),
                   "mask": mask.reshape(local_devices, -1)}


def tiny_config(**overrides) -> ml_collections.ConfigDict:
    """Every field of the shared schema, with a tiny fmnist_cnn and the synthetic data's sizes."""
    c = ml_collections.ConfigDict()
    c.model = "fmnist_cnn"
    c.model_kwargs = ml_collections.ConfigDict({"widths": TINY_WIDTHS})
    c.dataset = "fashion_mnist"
    c.num_classes = 10
    c.data_dir = None
    c.manual_dir = None
    c.batch_size = 16
    c.eval_batch_size = 16
    c.num_epochs = 2
    c.learning_rate = 0.1
    c.lr_boundaries = (1,)
    c.lr_decay = 0.1
    c.momentum = 0.9
    c.nesterov = True
    c.weight_decay = 1e-4
    c.method = "scp"
    c.mask = ml_collections.ConfigDict(dict(eps=0.05, delta=0.05, k=20.0, tau=0.5))
    c.sparsity_lambda = 1e-3
    c.sparsity_s = 2.0
    c.slimming = ml_collections.ConfigDict(dict(l1=1e-4, target_channel_ratio=0.5))
    c.finetune_epochs = 1
    c.finetune_learning_rate = 0.01
    c.round_to = 1
    c.parallel = "pmap"
    c.checkpoint_every_epochs = 1
    c.keep_checkpoints = 3
    c.log_every_steps = 2
    c.seed = 0
    c.num_train_examples = 256
    c.num_eval_examples = None
    c.validation_examples = 0
    c.benchmark_batch_sizes = (8,)
    c.benchmark_runs = 3
    c.distributed = ml_collections.ConfigDict(dict(coordinator_address=None, num_processes=None, process_id=None))
    c.update(overrides)
    return c


def tiny_phase(config, name="train") -> train.Phase:
    return train.Phase(name=name, model=train.create_model(config), learning_rate=config.learning_rate,
                       num_epochs=config.num_epochs, regulariser=train.create_regulariser(config),
                       mask=train.mask_config(config))


def tree_max_abs_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


# ---------------------------------------------------------------------------------------------


def test_schedule_drops_at_epoch_boundaries_in_steps():
    lr = train.create_learning_rate_fn(0.1, (2, 3), 0.1, steps_per_epoch=5)
    values = [float(lr(s)) for s in range(20)]
    np.testing.assert_allclose(values[:10], 0.1, rtol=1e-6)
    np.testing.assert_allclose(values[10:15], 0.01, rtol=1e-6)
    np.testing.assert_allclose(values[15:], 0.001, rtol=1e-5)


def test_steps_per_epoch_and_batch_checks():
    assert train.steps_per_epoch(50_000, 64) == 781
    with pytest.raises(ValueError, match="batch_size=128"):
        train.steps_per_epoch(100, 128)
    assert train.check_global_batch(64, 8) == 8
    with pytest.raises(ValueError, match="batch_size=60 is not divisible by the 8 devices"):
        train.check_global_batch(60, 8)


@pytest.fixture(scope="module")
def tiny_model_and_variables():
    # The very model of tiny_phase: its jitted init is compiled once per process (train.init_variables).
    model = train.create_model(tiny_config())
    return model, train.init_variables(model, jax.random.PRNGKey(0), (8, 8, 1))


def test_weight_decay_on_kernels_and_bn_scales_only(tiny_model_and_variables):
    _, variables = tiny_model_and_variables
    params = variables["params"]
    flags = {jax.tree_util.keystr(p): v for p, v in
             jax.tree_util.tree_leaves_with_path(train.weight_decay_mask(params))}
    assert flags["['conv0']['kernel']"] and flags["['head']['kernel']"] and flags["['masked_bn0']['scale']"]
    assert not flags["['masked_bn0']['bias']"] and not flags["['head']['bias']"]
    # With a zero gradient, the first Nesterov step is -lr (1 + momentum) wd w on decayed leaves only.
    config = tiny_config()
    tx = train.create_optimizer(config, optax.constant_schedule(0.1), params)
    params = jax.tree_util.tree_map(lambda x: x + 0.5, params)  # biases start at 0: make them non-zero
    updates, _ = tx.update(jax.tree_util.tree_map(jnp.zeros_like, params), tx.init(params), params)
    np.testing.assert_allclose(updates["conv0"]["kernel"], -0.1 * 1.9 * 1e-4 * params["conv0"]["kernel"], rtol=1e-5)
    np.testing.assert_allclose(updates["masked_bn0"]["scale"], -0.1 * 1.9 * 1e-4 * params["masked_bn0"]["scale"],
                               rtol=1e-5)
    np.testing.assert_array_equal(updates["masked_bn0"]["bias"], 0.0)
    np.testing.assert_array_equal(updates["head"]["bias"], 0.0)


def test_regularisers_per_method(tiny_model_and_variables):
    _, variables = tiny_model_and_variables
    params = jax.tree_util.tree_map(lambda x: x, variables["params"])
    params["masked_bn0"] = {"scale": jnp.array([1.0, -2.0, 0.5, 0.0]), "bias": jnp.array([0.1, -0.3, 0.0, 1.0])}
    scp = train.create_regulariser(tiny_config(method="scp", sparsity_lambda=0.5, sparsity_s=2.0))(params)
    expected_scp = 0.5 * (0.8 + 2.0 * 3.5 + float(M.layer_penalty(params["masked_bn1"]["scale"],
                                                                   params["masked_bn1"]["bias"], 2.0)))
    np.testing.assert_allclose(scp, expected_scp, rtol=1e-6)
    slim = train.create_regulariser(tiny_config(method="slimming"))(params)
    np.testing.assert_allclose(slim, 1e-4 * (3.5 + 8.0), rtol=1e-6)  # masked_bn1 has 8 unit scales
    assert float(train.create_regulariser(tiny_config(method="dense"))(params)) == 0.0
    assert train.mask_config(tiny_config(method="dense")) is None
    with pytest.raises(ValueError, match="method='l1'"):
        train.create_regulariser(tiny_config(method="l1"))


def test_eval_step_ignores_padding(tiny_model_and_variables):
    model, variables = tiny_model_and_variables
    x = jnp.asarray(np.random.default_rng(1).normal(size=(6, 8, 8, 1)), jnp.float32)
    eval_step = jax.jit(lambda v, b: train.eval_step(v, b, model=model, axis_name=None))
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    labels = jnp.argmax(logits, -1)
    labels = labels.at[4:].set((labels[4:] + 1) % 10)  # the last two would be wrong, but are padding
    mask = jnp.array([1, 1, 1, 1, 0, 0], jnp.float32)
    sums = eval_step(variables, {"image": x, "label": labels, "mask": mask})
    assert float(sums["correct"]) == 4.0 and float(sums["count"]) == 4.0
    sums = eval_step(variables, {"image": x, "label": labels})
    assert float(sums["correct"]) == 4.0 and float(sums["count"]) == 6.0


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    config = tiny_config(num_epochs=3)
    data = SyntheticData(nan_at=20)  # the 21st batch (step 21, in epoch 2) is NaN
    with pytest.raises(FloatingPointError, match=r"non-finite loss nan at step 21 .*step 16\)"):
        train.fit(config, str(tmp_path), tiny_phase(config), dataset=data)
    steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints" / "train") if d.isdigit())
    assert steps == [16]
