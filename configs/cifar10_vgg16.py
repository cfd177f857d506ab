"""CIFAR-10 VGG-16 with SCP (Kang & Han, ICML 2020).

    python launch/train.py --config=configs/cifar10_vgg16.py --workdir=/tmp/scp_cifar10_vgg16

Paper recipe: batch 64, 160 epochs, SGD-Nesterov lr 0.1 / 10 at epochs 80 and 120, tau 0.5,
delta 0.05, lambda 1e-4. Should produce (METHOD.md section 5) about 93.8% test accuracy for the
pruned network with ~75% of the channels, ~93% of the parameters and ~66% of the MACs removed
(paper: 93.85 -> 93.79).
"""

import pathlib
import runpy

from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
    config = runpy.run_path(str(pathlib.Path(__file__).with_name("default.py")))["get_config"]()
    config.model = "vgg16"
    config.dataset = "cifar10"
    config.num_classes = 10
    config.sparsity_lambda = 1e-4  # the paper's CIFAR-10 VGG-16 value (METHOD.md section 2)
    return config
