"""The built-in architectures and their registry: ``get_model(name, num_classes, **kwargs)``.

Owns VGG and the Fashion-MNIST CNN (``vgg``), pre-activation CIFAR ResNets (``resnet_cifar``),
DenseNet (``densenet``), ImageNet ResNets (``resnet_imagenet``), what they share (``common``) and a
user's own model named by a config (``traced``). May import ``ops`` only.

The architectures are plain Flax modules, written the way Flax's examples/imagenet writes a ResNet
(``nn.Conv``, ``nn.BatchNorm``, ``nn.relu``, with ``conv`` / ``norm`` module attributes as swap
points) and without masks: they train, cut, export and fine-tune through exactly the path a user's
model takes (``traced.masked``, ``compact.prune_model``). ``model.apply(v, x, train=False)`` evaluates;
``train=True`` with ``mutable=['batch_stats']`` trains.

``get_model`` builds them with the registry's defaults for the backend in use: BN synchronised
over the trainer's axis ``'batch'`` (pass ``norm=nn.BatchNorm`` to train outside a mapped step),
and on a CPU the convolution formulations measured faster there (``ops.fast_conv.Conv``, VGG's
``ops.pooling.max_pool_2x2``); on a GPU or TPU XLA's own convs, unless ``conv=`` says otherwise.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax

from soft_prune_jax.models.densenet import DenseNet
from soft_prune_jax.models.resnet_cifar import PreActBlock, PreActResNet
from soft_prune_jax.models.resnet_imagenet import ResNet, ResNetBlock
from soft_prune_jax.models.vgg import FMNIST_CNN_WIDTHS, VGG, VGG16_WIDTHS, VGG19_WIDTHS
from soft_prune_jax.ops import fast_conv, pooling

AXIS_NAME = "batch"  # the trainer's data-parallel axis (training.steps.AXIS)

# name -> (class, default constructor arguments)
_REGISTRY: dict[str, tuple[type, dict[str, Any]]] = {
    "fmnist_cnn": (VGG, dict(widths=FMNIST_CNN_WIDTHS)),
    "vgg16": (VGG, dict(widths=VGG16_WIDTHS)),
    "vgg19": (VGG, dict(widths=VGG19_WIDTHS)),
    "resnet56": (PreActResNet, dict(stage_sizes=(9, 9, 9))),
    "resnet110": (PreActResNet, dict(stage_sizes=(18, 18, 18))),
    "resnet164": (PreActResNet, dict(stage_sizes=(18, 18, 18), bottleneck=True)),
    "densenet40": (DenseNet, dict(layers_per_block=12, growth_rate=12)),
    "resnet18": (ResNet, dict(stage_sizes=(2, 2, 2, 2), bottleneck=False)),
    "resnet34": (ResNet, dict(stage_sizes=(3, 4, 6, 3), bottleneck=False)),
    "resnet50": (ResNet, dict(stage_sizes=(3, 4, 6, 3), bottleneck=True)),
    "resnet101": (ResNet, dict(stage_sizes=(3, 4, 23, 3), bottleneck=True)),
}


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def is_builtin(name) -> bool:
    return isinstance(name, str) and name in _REGISTRY


def backend_defaults(cls: type) -> dict:
    """The swap points the registry fills for the backend in use (module docstring)."""
    out: dict[str, Any] = {"norm": functools.partial(nn.BatchNorm, axis_name=AXIS_NAME)}
    if jax.default_backend() == "cpu":
        out["conv"] = fast_conv.Conv
        if cls is VGG:
            out["pool"] = pooling.max_pool_2x2
    return out


def get_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Builds a registered model; ``kwargs`` override the defaults (widths, ``conv``, ``norm``, ...)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(model_names())}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r} is invalid: expected an int >= 1")
    cls, defaults = _REGISTRY[name]
    return cls(num_classes=num_classes, **{**defaults, **backend_defaults(cls), **kwargs})


__all__ = [
    "AXIS_NAME",
    "DenseNet",
    "PreActBlock",
    "PreActResNet",
    "ResNet",
    "ResNetBlock",
    "VGG",
    "get_model",
    "is_builtin",
    "model_names",
]
