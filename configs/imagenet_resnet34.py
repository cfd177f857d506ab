"""ILSVRC-12 (ImageNet) ResNet-34 (v1.5, post-activation) with SCP.

    python launch/train.py --config=configs/imagenet_resnet34.py --workdir=/tmp/scp_imagenet_resnet34 \
        --config.manual_dir=/path/to/folder/with/ILSVRC2012_img_train.tar+ILSVRC2012_img_val.tar

Recipe: configs/imagenet_base.py (the paper's: 4 GPUs, total batch 256, 100 epochs).
The paper reports no ResNet-34 result: this run produces dense-vs-pruned top-1 and the MACs cut
for comparison with the other depths; lambda 2e-5 is our untuned choice.
"""

import pathlib
import runpy

from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
    return runpy.run_path(str(pathlib.Path(__file__).with_name("imagenet_base.py")))["imagenet_config"]("resnet34")
