"""Every experiment config loads, keeps the shared schema, builds its model and follows the paper."""

from __future__ import annotations

import pathlib
import runpy

import jax
import jax.numpy as jnp
import pytest
from absl import flags
from ml_collections import config_dict, config_flags

from soft_prune_jax.training import config_validation, data
from soft_prune_jax.method.masks import MaskConfig
from soft_prune_jax.models import get_model, model_names

CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"
EXPERIMENTS = [
    "cifar10_vgg16", "cifar10_resnet56", "cifar10_densenet40",
    "cifar100_resnet164", "cifar100_densenet40", "cifar100_vgg16",
    "imagenet_resnet18", "imagenet_resnet34", "imagenet_resnet50", "imagenet_resnet101",
    "fashion_mnist",
]
# CIFAR-10 lambdas the paper gives (METHOD.md section 2); the others are our choice.
PAPER_LAMBDAS = {"cifar10_vgg16": 1e-4, "cifar10_resnet56": 5e-5, "cifar10_densenet40": 3e-5}


def load(name: str) -> config_dict.ConfigDict:
    module = runpy.run_path(str(CONFIG_DIR / f"{name}.py"))
    return module["get_config"]()


def schema(config, prefix=""):
    """{dotted field name: type} over the nested ConfigDict; a placeholder reports its declared type."""
    fields = {}
    for key in config.keys():
        if isinstance(config[key], config_dict.ConfigDict):
            fields.update(schema(config[key], prefix + key + "."))
        else:
            fields[prefix + key] = config.get_type(key)
    return fields


def with_manual_dir(config, tmp_path):
    """ImageNet configs need the ILSVRC2012 tars in manual_dir before anything runs."""
    if config.dataset == "imagenet2012":
        for file_name in data.IMAGENET_MANUAL_FILES:
            (tmp_path / file_name).touch()
        config.manual_dir = str(tmp_path)
    return config


def test_every_experiment_has_a_config_file():
    found = {path.stem for path in CONFIG_DIR.glob("*.py")} - {"default", "imagenet_base", "__init__"}
    assert found == set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_config_keeps_the_shared_schema_and_passes_validation(name, tmp_path):
    config = load(name)
    assert schema(config) == schema(load("default"))  # same fields, same types: overrides stay typed
    assert config.model in model_names()
    assert config.num_classes == data.DATASETS[config.dataset].num_classes
    config_validation.validate(with_manual_dir(config, tmp_path), num_devices=1)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_docstring_gives_the_exact_command(name):
    doc = runpy.run_path(str(CONFIG_DIR / f"{name}.py"))["__doc__"]
    assert f"python launch/train.py --config=configs/{name}.py --workdir=" in doc


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_model_builds_at_full_size_on_the_dataset_input(name, tmp_path):
    config = load(name)
    info = data.get_dataset_info(with_manual_dir(config, tmp_path))
    model = get_model(config.model, config.num_classes, mask=MaskConfig(**config.mask))
    x = jnp.zeros((1, *info.input_shape), jnp.float32)
    rngs = {"params": jax.random.key(0), "gumbel": jax.random.key(1)}
    logits, variables = jax.eval_shape(lambda: model.init_with_output(rngs, x, train=False))
    assert logits.shape == (1, config.num_classes)
    assert "batch_stats" in variables and "params" in variables


@pytest.mark.parametrize("name", sorted(PAPER_LAMBDAS))
def test_cifar10_lambdas_are_the_papers(name):
    assert load(name).sparsity_lambda == PAPER_LAMBDAS[name]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_paper_recipe(name):
    config = load(name)
    assert (config.learning_rate, config.momentum, config.nesterov, config.weight_decay) == (0.1, 0.9, True, 1e-4)
    assert dict(config.mask) == dict(eps=0.05, delta=0.05, k=20.0, tau=0.5) and config.sparsity_s == 2.0
    assert config.finetune_learning_rate == 0.01 and config.method == "scp"
    if config.dataset.startswith("cifar"):
        assert (config.batch_size, config.num_epochs, tuple(config.lr_boundaries)) == (64, 160, (80, 120))
    if config.dataset == "imagenet2012":
        assert (config.batch_size, config.num_epochs, tuple(config.lr_boundaries)) == (256, 100, (30, 60, 90))


def test_fields_are_overridable_from_the_command_line(tmp_path):
    def parse(*overrides):
        # As launch/train.py does; config_flags finds the override flags in the argv it is given.
        argv = ["train", f"--config={CONFIG_DIR / 'fashion_mnist.py'}", *overrides]
        flag_values = flags.FlagValues()
        config_flags.DEFINE_config_file("config", flag_values=flag_values, lock_config=True, sys_argv=argv)
        flag_values(argv)
        return flag_values.config

    config = parse(f"--config.data_dir={tmp_path}", "--config.num_train_examples=512", "--config.lr_boundaries=(1, 2)",
                   "--config.mask.tau=0.3", "--config.distributed.num_processes=2",
                   "--config.benchmark_batch_sizes=(1, 64)")
    assert config.data_dir == str(tmp_path) and config.num_train_examples == 512
    assert tuple(config.lr_boundaries) == (1, 2) and config.mask.tau == 0.3
    assert config.distributed.num_processes == 2 and tuple(config.benchmark_batch_sizes) == (1, 64)
    with pytest.raises(flags.IllegalFlagValueError):  # types stay stable: a str is refused for an int field
        parse("--config.num_train_examples=many")
