"""ILSVRC-12 (ImageNet) ResNet-50 (v1.5, post-activation) with SCP.

    python launch/train.py --config=configs/imagenet_resnet50.py --workdir=/tmp/scp_imagenet_resnet50 \
        --config.manual_dir=/path/to/folder/with/ILSVRC2012_img_train.tar+ILSVRC2012_img_val.tar

Recipe: configs/imagenet_base.py (the paper's: 4 GPUs, total batch 256, 100 epochs).
Should produce (METHOD.md section 5) about 74.2% top-1 / 92.0% top-5 with ~54% fewer MACs
(paper: 75.89 -> 74.20 top-1); the paper gives no ImageNet lambda, so 2e-5 is our untuned choice
and may need tuning to reach that cut.
"""

import pathlib
import runpy

from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
    return runpy.run_path(str(pathlib.Path(__file__).with_name("imagenet_base.py")))["imagenet_config"]("resnet50")
