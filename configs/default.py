"""The shared experiment schema with the paper's defaults (METHOD.md section 4).

Every experiment config in this folder starts from this one and changes only what differs, so all
of them have exactly these fields (the trainer reads them by these names). On its own it is
CIFAR-10 ResNet-56 with SCP, identical to configs/cifar10_resnet56.py:

    python launch/train.py --config=configs/default.py --workdir=/tmp/scp_default

Any field can be overridden on the command line, e.g. ``--config.num_epochs=1``,
``--config.lr_boundaries='(1, 2)'``, ``--config.data_dir=/data/tfds``, ``--config.mask.tau=0.3``.
Fields that may be None are ml_collections placeholders, so they accept a value of their type.
"""

from ml_collections import config_dict
from ml_collections.config_dict import placeholder


def get_config() -> config_dict.ConfigDict:
    config = config_dict.ConfigDict()

    # What to train on.
    config.model = "resnet56"  # a name from soft_prune_jax.models.model_names()
    config.dataset = "cifar10"  # 'cifar10' | 'cifar100' | 'imagenet2012' | 'fashion_mnist'
    config.num_classes = 10
    config.data_dir = placeholder(str)  # tfds data_dir; None = $TFDS_DATA_DIR or ~/tensorflow_datasets
    config.manual_dir = placeholder(str)  # ImageNet only: folder with the ILSVRC2012 train/val tars
    config.augment = True  # CIFAR pad-4 crop + flip, Fashion-MNIST pad-2 crop + flip; ImageNet always crops

    # Optimisation: SGD with Nesterov momentum, step decay (the paper's CIFAR recipe).
    config.batch_size = 64  # global, over all processes and devices
    config.eval_batch_size = 512  # divisible by 1, 2, 4 and 8 devices; the last batch is padded
    config.num_epochs = 160
    config.learning_rate = 0.1
    config.lr_boundaries = (80, 120)  # epochs at which the learning rate is multiplied by lr_decay
    config.lr_decay = 0.1
    config.momentum = 0.9
    config.nesterov = True
    config.weight_decay = 1e-4  # conv/dense kernels and BN scale; not BN bias nor dense bias

    # Pruning method and its knobs.
    config.method = "scp"  # 'scp' | 'dense' (baseline, no masks) | 'slimming' (Network Slimming)
    config.mask = config_dict.ConfigDict(dict(eps=0.05, delta=0.05, k=20.0, tau=0.5))
    config.sparsity_lambda = 5e-5  # the paper's ResNet-56 value; the only knob that sets the FLOPs cut
    config.sparsity_s = 2.0  # penalty per channel: beta + s * |gamma|
    # Network Slimming keeps target_channel_ratio of the masked channels (one global |scale|
    # threshold), or, when target_macs_ratio is set, the most channels whose compact model has at
    # most that fraction of the dense MACs (a comparison with SCP at matched MACs).
    config.slimming = config_dict.ConfigDict(dict(l1=1e-4, target_channel_ratio=0.5))
    config.slimming.target_macs_ratio = config_dict.placeholder(float)

    # After training: physical pruning and optional fine-tuning of the compact network.
    config.finetune_epochs = 0  # 0 = none (the reference CIFAR pipeline does not fine-tune)
    config.finetune_learning_rate = 0.01
    config.round_to = 1  # keep channel counts multiples of this (1 = no alignment)

    # Running.
    config.parallel = "pmap"  # 'pmap' | 'shard_map'
    config.checkpoint_every_epochs = 1
    config.keep_checkpoints = 3
    config.log_every_steps = 100
    config.seed = 0
    config.num_train_examples = placeholder(int)  # None = the whole train split (minus validation)
    config.num_eval_examples = placeholder(int)  # None = the whole evaluation split
    config.validation_examples = 0  # > 0 carves a validation split from the END of train
    config.benchmark_batch_sizes = (64,)
    config.benchmark_runs = 50
    config.distributed = config_dict.ConfigDict(dict(
        coordinator_address=placeholder(str), num_processes=placeholder(int), process_id=placeholder(int)))
    return config
