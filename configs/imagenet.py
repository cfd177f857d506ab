"""ILSVRC-12 (ImageNet) ResNets (v1.5, post-activation) with the paper's recipe; the depth after the colon.

    python launch/train.py --config=configs/imagenet.py:resnet50 --workdir=/tmp/imagenet_resnet50 \\
        --config.manual_dir=/path/to/folder/with/ILSVRC2012_img_train.tar+ILSVRC2012_img_val.tar

Variants: resnet18, resnet34, resnet50, resnet101; a method after a comma as in configs/cifar.py
(``:resnet50,dense`` the unpruned baseline, ``:resnet50,slimming`` Network Slimming with Liu et al.'s
ResNet settings). The paper reports ResNet-50 only (docs/method.md); the other depths give
dense-vs-pruned top-1/top-5 and the MACs cut for comparison with it.

The paper's recipe: 4 GPUs, total batch 256 (the global batch is split over however many devices
there are), 100 epochs, SGD-Nesterov LR 0.1 / 10 at epochs 30, 60, 90, random-resized-crop 224 +
flip for training, resize 256 + centre crop 224 for evaluation (tfds's labelled 'validation'
split, 50,000 images). tfds prepares ImageNet once from manual_dir into data_dir (it cannot be
downloaded).
"""

from ml_collections import config_dict

from configs import default

DEPTHS = ("resnet18", "resnet34", "resnet50", "resnet101")

# Weight decay: no reference code exists for ImageNet. 1e-4 in optax's convention (gradient 1e-4 * w)
# is the decay of the standard ResNet-50 recipes (PyTorch's weight_decay=1e-4, Flax's ImageNet example's
# 1e-4/2 * |w|^2 loss term) under which dense ResNet-50 reaches the paper's ~76% baseline; doubling it
# as on CIFAR would change the dense baseline as well as the cut, with nothing to check it against.
IMAGENET_WEIGHT_DECAY = 1e-4


def get_config(arg: str = "") -> config_dict.ConfigDict:
    model, _, method = arg.partition(",")
    if model not in DEPTHS:
        raise ValueError(
            f"configs/imagenet.py:{arg} names an unknown variant {model!r}: expected one of "
            f"{', '.join(DEPTHS)}, optionally followed by ',slimming' or ',dense'"
        )
    config = default.get_config()
    config.model = model
    config.dataset = "imagenet2012"
    config.batch_size = 256  # the paper: 4 GPUs, total batch 256
    config.eval_batch_size = 256
    config.num_epochs = 100
    config.lr_boundaries = (30, 60, 90)
    config.weight_decay = IMAGENET_WEIGHT_DECAY
    config.sparsity_lambda = 2e-5  # OUR CHOICE (the paper gives no ImageNet lambda); untuned
    config.log_every_steps = 500
    return default.with_method(config, method or "scp")
