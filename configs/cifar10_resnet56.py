"""CIFAR-10 ResNet-56 (pre-activation) with SCP.

    python launch/train.py --config=configs/cifar10_resnet56.py --workdir=/tmp/scp_cifar10_resnet56

Pre-activation ResNet-56, paper recipe (batch 64, 160 epochs, lr 0.1 / 10 at 80 and 120).
Should produce (METHOD.md section 5) about 93.2% test accuracy with ~45% of the channels, ~46% of
the parameters and ~51% of the MACs removed (paper: 93.69 -> 93.23).
"""

import pathlib
import runpy

from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
    config = runpy.run_path(str(pathlib.Path(__file__).with_name("default.py")))["get_config"]()
    config.model = "resnet56"
    config.dataset = "cifar10"
    config.num_classes = 10
    config.sparsity_lambda = 5e-5  # the paper's CIFAR-10 ResNet-56 value (METHOD.md section 2)
    return config
