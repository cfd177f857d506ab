"""CIFAR-10 DenseNet-40 with SCP.

    python launch/train.py --config=configs/cifar10_densenet40.py --workdir=/tmp/scp_cifar10_densenet40

DenseNet-40 (k=12), paper recipe (batch 64, 160 epochs, lr 0.1 / 10 at 80 and 120).
Should produce (METHOD.md section 5) about 93.8% test accuracy with ~81% of the channels, ~75% of
the parameters and ~71% of the MACs removed (paper: 94.39 -> 93.77).
"""

import pathlib
import runpy

from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
    config = runpy.run_path(str(pathlib.Path(__file__).with_name("default.py")))["get_config"]()
    config.model = "densenet40"
    config.dataset = "cifar10"
    config.num_classes = 10
    config.sparsity_lambda = 3e-5  # the paper's CIFAR-10 DenseNet-40 value (METHOD.md section 2)
    return config
