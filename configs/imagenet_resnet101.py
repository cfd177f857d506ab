"""ILSVRC-12 (ImageNet) ResNet-101 (v1.5, post-activation) with SCP.

    python launch/train.py --config=configs/imagenet_resnet101.py --workdir=/tmp/scp_imagenet_resnet101 \
        --config.manual_dir=/path/to/folder/with/ILSVRC2012_img_train.tar+ILSVRC2012_img_val.tar

The paper's ImageNet recipe: 4 GPUs, total batch 256 (64 per GPU under pmap on 4 devices; the
global batch is split over however many local devices there are), 100 epochs, SGD-Nesterov
lr 0.1 / 10 at epochs 30, 60, 90, weight decay 1e-4, random-resized-crop 224 + flip for training,
resize 256 + centre crop 224 for evaluation (on tfds's labelled 'validation' split, 50,000 images).
tfds prepares ImageNet once from manual_dir into data_dir (~150 GB; it cannot be downloaded).
The paper reports no ResNet-101 result: this run produces dense-vs-pruned top-1 and the MACs cut
for comparison with ResNet-50; lambda 2e-5 is our untuned choice.
"""

import pathlib
import runpy

from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
    config = runpy.run_path(str(pathlib.Path(__file__).with_name("default.py")))["get_config"]()
    config.model = "resnet101"
    config.dataset = "imagenet2012"
    config.num_classes = 1000
    config.batch_size = 256  # the paper: 4 GPUs, total batch 256
    config.eval_batch_size = 256
    config.num_epochs = 100
    config.lr_boundaries = (30, 60, 90)
    config.sparsity_lambda = 2e-5  # OUR CHOICE (the paper gives no ImageNet lambda); untuned
    config.log_every_steps = 500
    return config
