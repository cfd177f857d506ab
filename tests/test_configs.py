"""Every experiment config and variant loads as the launcher loads it, keeps the shared schema,
passes validation, builds its model and follows the recipe it documents."""

from __future__ import annotations

import importlib
import pathlib

import jax
import jax.numpy as jnp
import pytest
from absl import flags
from ml_collections import config_dict, config_flags

from configs import cifar, default, imagenet
from soft_prune_jax.models import user
from soft_prune_jax.training import config_validation, data

REPO = pathlib.Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / "configs"
METHODS = ("", ",dense", ",slimming")
# Every config a command line can name: FILE.py[:VARIANT].
EXPERIMENTS = (
    ["default.py", "fashion_mnist.py"]
    + [f"cifar.py:{v}{m}" for v in cifar.SPARSITY_LAMBDA for m in METHODS]
    + [f"imagenet.py:{v}{m}" for v in imagenet.DEPTHS for m in METHODS]
)


def parse(spec: str, *overrides: str) -> config_dict.ConfigDict:
    """The config as launch/train.py gets it: through config_flags, with command-line overrides."""
    argv = ["train", f"--config={CONFIG_DIR / spec}", *overrides]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=flag_values, lock_config=True, sys_argv=argv)
    flag_values(argv)
    return flag_values.config


def schema(config, prefix=""):
    """{dotted field name: type} over the nested ConfigDict; a placeholder reports its declared type."""
    fields = {}
    for key in config:
        if isinstance(config[key], config_dict.ConfigDict) and key != "model_kwargs":
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


def test_every_config_file_is_covered():
    files = {path.name for path in CONFIG_DIR.glob("*.py")} - {"__init__.py"}
    assert files == {spec.split(":")[0] for spec in EXPERIMENTS}


@pytest.mark.parametrize("spec", EXPERIMENTS)
def test_config_keeps_the_schema_validates_and_builds_its_model(spec, tmp_path):
    config = with_manual_dir(parse(spec), tmp_path)
    assert schema(config) == schema(default.get_config())  # same fields, same types: overrides stay typed
    assert config.num_classes is None  # derived from the dataset, never typed per config
    config_validation.validate(config, num_devices=1)
    info = data.get_dataset_info(config)
    # the traced path's model: the built-in name resolved as a user's spec is (shapes only, no compute)
    model = user.build(config.model, data.num_classes(config), dict(config.model_kwargs), seed=config.seed)
    x = jnp.zeros((1, *info.input_shape), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    logits = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
    assert logits.shape == (1, data.DATASETS[config.dataset].num_classes)
    assert "batch_stats" in variables and "params" in variables


@pytest.mark.parametrize("module", ["cifar", "imagenet", "fashion_mnist", "default"])
def test_docstring_gives_an_exact_command_for_every_variant(module):
    doc = importlib.import_module(f"configs.{module}").__doc__
    variants = {"cifar": list(cifar.SPARSITY_LAMBDA), "imagenet": ["resnet50"]}.get(module, [None])
    for variant in variants:
        spec = f"configs/{module}.py" + (f":{variant}" if variant else "")
        assert f"python launch/train.py --config={spec} --workdir=" in doc, spec


@pytest.mark.parametrize("bad", ["", "cifar10_vgg19", "cifar10_vgg16,l0"])
def test_unknown_variant_is_one_line_naming_the_known_ones(bad):
    if bad.endswith(",l0"):  # an unknown method: the name is set, validation refuses it
        with pytest.raises(ValueError, match="config.method='l0' is invalid: expected one of dense, scp, slimming"):
            config_validation.validate(cifar.get_config(bad), num_devices=1)
        return
    with pytest.raises(ValueError, match=f"unknown variant '{bad}': expected one of cifar10_vgg16, ") as info:
        cifar.get_config(bad)
    assert "\n" not in str(info.value)


def test_cifar_lambdas_the_paper_gives():
    for variant, value in {"cifar10_vgg16": 1e-4, "cifar10_resnet56": 5e-5, "cifar10_densenet40": 3e-5}.items():
        assert cifar.get_config(variant).sparsity_lambda == value


@pytest.mark.parametrize("spec", [s for s in EXPERIMENTS if "slimming" not in s and s != "fashion_mnist.py"])
def test_scp_and_dense_follow_the_paper_recipe(spec):
    config = parse(spec)
    assert (config.learning_rate, config.momentum, config.nesterov) == (0.1, 0.9, True)
    assert dict(config.mask) == dict(eps=0.05, delta=0.05, k=20.0, tau=0.5) and config.sparsity_s == 2.0
    assert config.finetune_epochs == 0 and config.finetune_learning_rate == 0.01
    assert config.method == ("dense" if spec.endswith(",dense") else "scp")
    if config.dataset.startswith("cifar"):
        # The reference's l2_reg 1e-4 * sum(w^2) is a gradient of 2e-4 * w: optax's weight_decay 2e-4.
        assert config.weight_decay == 2e-4
        assert (config.batch_size, config.num_epochs, tuple(config.lr_boundaries)) == (64, 160, (80, 120))
    if config.dataset == "imagenet2012":
        assert config.weight_decay == 1e-4
        assert (config.batch_size, config.num_epochs, tuple(config.lr_boundaries)) == (256, 100, (30, 60, 90))


@pytest.mark.parametrize(
    "variant, l1, keep",
    [
        ("cifar10_vgg16", 1e-4, 0.3),
        ("cifar100_vgg16", 1e-4, 0.3),  # Liu et al.: VGG 1e-4, 70% pruned
        ("cifar10_resnet56", 1e-5, 0.6),
        ("cifar100_resnet164", 1e-5, 0.6),  # ResNet 1e-5, 40% pruned
        ("cifar10_densenet40", 1e-5, 0.6),
        ("cifar100_densenet40", 1e-5, 0.6),  # DenseNet 1e-5, 40% pruned
    ],
)
def test_slimming_variants_run_network_slimming_as_liu_et_al(variant, l1, keep):
    config = parse(f"cifar.py:{variant},slimming")
    assert config.method == "slimming" and config.slimming.scale_init == 0.5
    assert (config.slimming.l1, config.slimming.target_channel_ratio) == (l1, keep)
    assert config.slimming.target_macs_ratio is None  # Liu et al.'s percentile rule, not matched MACs
    # Fine-tuned on the full schedule from the full LR: 160 epochs from 0.1, / 10 at 80 and 120 (the
    # finetune phase keeps lr_boundaries' fraction of the run).
    assert (config.finetune_epochs, config.finetune_learning_rate) == (160, 0.1)
    assert (config.num_epochs, tuple(config.lr_boundaries)) == (160, (80, 120))
    # Their PyTorch SGD: plain momentum 0.9, decay 1e-4 added to the gradient (optax's convention).
    assert (config.nesterov, config.momentum, config.weight_decay) == (False, 0.9, 1e-4)
    assert config.sparsity_lambda == cifar.SPARSITY_LAMBDA[variant]  # unused by slimming, kept for the record


def test_matched_macs_slimming_is_an_override():
    config = parse("cifar.py:cifar10_vgg16,slimming", "--config.slimming.target_macs_ratio=0.34")
    assert config.slimming.target_macs_ratio == 0.34
    config_validation.validate(config, num_devices=1)


def test_fields_are_overridable_from_the_command_line(tmp_path):
    config = parse(
        "fashion_mnist.py",
        f"--config.data_dir={tmp_path}",
        "--config.num_train_examples=512",
        "--config.lr_boundaries=(1, 2)",
        "--config.mask.tau=0.3",
        "--config.distributed.num_processes=2",
        "--config.benchmark_batch_sizes=(1, 64)",
        "--config.model_kwargs={'widths': (8, 'M')}",
        "--config.num_classes=10",
    )
    assert config.data_dir == str(tmp_path) and config.num_train_examples == 512
    assert tuple(config.lr_boundaries) == (1, 2) and config.mask.tau == 0.3
    assert config.distributed.num_processes == 2 and tuple(config.benchmark_batch_sizes) == (1, 64)
    assert dict(config.model_kwargs) == {"widths": (8, "M")} and config.num_classes == 10
    with pytest.raises(flags.IllegalFlagValueError):  # types stay stable: a str is refused for an int field
        parse("fashion_mnist.py", "--config.num_train_examples=many")


def test_default_is_cifar10_resnet56_as_its_docstring_says():
    assert default.get_config().to_dict() == cifar.get_config("cifar10_resnet56").to_dict()
