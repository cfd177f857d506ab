"""The architectures and their registry: ``get_model(name, num_classes, **kwargs)``.

Owns VGG/Fashion-MNIST CNN (``vgg``), pre-activation CIFAR ResNets (``resnet_cifar``), DenseNet
(``densenet``), ImageNet ResNets (``resnet_imagenet``) and their conv/classifier helpers
(``layers``). May import ``ops`` and ``method`` only.

Every model takes ``mask`` (a ``MaskConfig``; None builds the dense baseline with no masks) and
``axis_name`` (synchronised BN under pmap/shard_map). Evaluation: ``model.apply(v, x, train=False)``
(hard masks, running statistics). Training: ``train=True`` with a ``gumbel`` rng and mutable
``batch_stats``.
"""

from __future__ import annotations

from typing import Any

from soft_prune_jax.models.densenet import DenseNet
from soft_prune_jax.models.resnet_cifar import PreActBlock, PreActResNet
from soft_prune_jax.models.resnet_imagenet import ResNet, ResNetBlock
from soft_prune_jax.models.vgg import FMNIST_CNN_WIDTHS, VGG, VGG16_WIDTHS, VGG19_WIDTHS

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

MODEL_CLASSES: dict[str, type] = {cls.__name__: cls for cls in (VGG, PreActResNet, DenseNet, ResNet)}


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def get_model(name: str, num_classes: int, **kwargs):
    """Builds a registered model; ``kwargs`` override the defaults (e.g. ``mask=None``, widths)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(model_names())}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r} is invalid: expected an int >= 1")
    cls, defaults = _REGISTRY[name]
    return cls(num_classes=num_classes, **{**defaults, **kwargs})


__all__ = [
    "get_model",
    "model_names",
    "MODEL_CLASSES",
    "VGG",
    "PreActResNet",
    "PreActBlock",
    "DenseNet",
    "ResNet",
    "ResNetBlock",
]
