"""The paper's ImageNet recipe shared by configs/imagenet_resnet*.py (not an experiment by itself).

4 GPUs, total batch 256 (64 per GPU under pmap on 4 devices; the global batch is split over however
many local devices there are), 100 epochs, SGD-Nesterov lr 0.1 / 10 at epochs 30, 60, 90, weight
decay 1e-4, random-resized-crop 224 + flip for training, resize 256 + centre crop 224 for evaluation
(on tfds's labelled 'validation' split, 50,000 images). tfds prepares ImageNet once from manual_dir
into data_dir (~150 GB; it cannot be downloaded). The paper gives no ImageNet lambda: 2e-5 is our
untuned choice.
"""

import pathlib
import runpy

from ml_collections import config_dict


def imagenet_config(model: str) -> config_dict.ConfigDict:
    config = runpy.run_path(str(pathlib.Path(__file__).with_name("default.py")))["get_config"]()
    config.model = model
    config.dataset = "imagenet2012"
    config.num_classes = 1000
    config.batch_size = 256  # the paper: 4 GPUs, total batch 256
    config.eval_batch_size = 256
    config.num_epochs = 100
    config.lr_boundaries = (30, 60, 90)
    config.sparsity_lambda = 2e-5  # OUR CHOICE (the paper gives no ImageNet lambda); untuned
    config.log_every_steps = 500
    return config


def get_config() -> config_dict.ConfigDict:
    return imagenet_config("resnet50")
