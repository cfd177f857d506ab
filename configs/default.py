"""The shared experiment schema: every field, its default and what it means, declared once here.

Every experiment config (``configs/cifar.py``, ``configs/imagenet.py``, ``configs/fashion_mnist.py``)
starts from ``get_config()`` and changes only what differs, so all of them have exactly these fields
(the trainer reads them by these names; ``soft_prune_jax.training.config_validation`` checks each
one). On its own it is CIFAR-10 ResNet-56 with SCP, the paper's recipe (docs/method.md):

    python launch/train.py --config=configs/default.py --workdir=/tmp/scp_default

Any field can be overridden on the command line, e.g. ``--config.num_epochs=1``,
``--config.lr_boundaries='(1, 2)'``, ``--config.data_dir=/data/tfds``, ``--config.mask.tau=0.3``.
Fields that may be None are ml_collections placeholders, so they accept a value of their type.
"""

from ml_collections import config_dict
from ml_collections.config_dict import placeholder

# Weight decay convention. optax.add_decayed_weights adds wd * w to the gradient (PyTorch's SGD
# weight_decay does the same); a loss term c * sum(w^2) has the gradient 2c * w. The SCP reference
# adds l2_reg * sum(w^2) with l2_reg = 1e-4, so its CIFAR configs need wd = 2e-4 here. The decay
# competes with lambda * s on the BN scales, so halving it would move the FLOPs cut at the paper's
# lambda.
CIFAR_PAPER_WEIGHT_DECAY = 2e-4

# Network Slimming as Liu et al. ran it (ICCV 2017; their code's commands): L1 on the BN scales of
# 1e-4 for VGG and 1e-5 for ResNet and DenseNet, and the fraction of prunable channels cut by one
# global |scale| percentile (--percent: 0.7 for VGG, 0.4 for ResNet and DenseNet), which is
# target_channel_ratio = 1 - percent here. Keys: the model-name prefix; values: (l1, target_channel_ratio).
SLIMMING_BY_FAMILY = {
    "vgg": (1e-4, 0.3),
    "resnet": (1e-5, 0.6),
    "densenet": (1e-5, 0.6),
    "fmnist_cnn": (1e-4, 0.3),  # not in their paper: a plain chain like VGG, so VGG's values (our choice)
}


def get_config() -> config_dict.ConfigDict:
    config = config_dict.ConfigDict()

    # What to train on.
    # A name from soft_prune_jax.models.model_names(), or a user's own linen/NNX model as "package.module:attribute"
    # (a class or factory called with num_classes and **model_kwargs, imported from the working directory or
    # PYTHONPATH; its masks are inserted from outside, soft_prune_jax/traced/masked.py).
    config.model = "resnet56"
    # Constructor overrides of the registry model, e.g. {'widths': (4, 'M', 8)} for a tiny VGG; empty = the
    # architecture as published. A dict literal on the command line: --config.model_kwargs="{'widths': (8, 'M')}".
    config.model_kwargs = config_dict.ConfigDict()
    # How a user's linen model is told train vs eval: "train" calls apply(v, x, train=...); "not NAME" passes
    # NAME=not training (e.g. "not deterministic"). Built-in and NNX models ignore it (NNX: .train()/.eval()).
    config.model_call = "train"
    # 'cifar10' | 'cifar100' | 'imagenet2012' | 'fashion_mnist' (published constants and recipes), or any tfds
    # image-classification name ('oxford_flowers102'), a folder of images 'folder:PATH' (one sub-folder per class),
    # or a user's pipeline 'package.module:attribute' returning (train, eval, num_classes)
    # (soft_prune_jax/training/data/: tfds_by_name.py, folder_source.py, factory_source.py document the three).
    config.dataset = "cifar10"
    # Only for tfds datasets by name and folders (the known four keep theirs; a user pipeline preprocesses its own):
    config.train_split = placeholder(str)  # tfds slicing syntax, e.g. 'train[:90%]'; None = 'train'
    config.test_split = placeholder(str)  # e.g. 'train[90%:]'; None = 'test', else the dataset's 'validation'
    config.image_size = placeholder(int)  # square input side; None = the images' own size (224 where sizes vary)
    # 'pad_crop_flip' (pad an eighth of the side, crop back, flip) | 'random_resized_crop' (area 8-100%, flip;
    # evaluation resizes and centre-crops 87.5%); None = pad_crop_flip up to 64 pixels a side, else random_resized_crop.
    config.augmentation = placeholder(str)
    config.folder_test_fraction = placeholder(float)  # folder without train/ and test/: share of each class; None = 0.2
    # None = the dataset's class count (derived, never typed per config); an int only for a custom dataset
    # module passed to the pipeline (tests' synthetic data); with a known dataset it must agree.
    config.num_classes = placeholder(int)
    config.data_dir = placeholder(str)  # tfds data_dir; None = $TFDS_DATA_DIR or ~/tensorflow_datasets
    config.manual_dir = placeholder(str)  # ImageNet only: folder with the ILSVRC2012 train/val tars
    config.augment = True  # CIFAR pad-4 crop + flip, Fashion-MNIST pad-2 crop + flip; ImageNet always crops

    # Optimisation: SGD with Nesterov momentum, step decay (the paper's CIFAR recipe).
    config.batch_size = 64  # global, over all processes and devices
    config.eval_batch_size = 512  # divisible by 1, 2, 4 and 8 devices; the last batch is padded
    config.num_epochs = 160  # of joint training (weights and masks together, from scratch)
    config.learning_rate = 0.1  # initial; piecewise constant over the epochs
    config.lr_boundaries = (80, 120)  # epochs at which the learning rate is multiplied by lr_decay
    config.lr_decay = 0.1  # factor applied at each of lr_boundaries
    config.momentum = 0.9  # SGD momentum
    config.nesterov = True  # Nesterov momentum (the reference); False = plain heavy-ball
    # Added to the gradient as weight_decay * w (optax.add_decayed_weights; see the convention above) on
    # conv/dense kernels and BN scales, not on BN or dense biases. 2e-4 = the reference's l2_reg 1e-4.
    config.weight_decay = CIFAR_PAPER_WEIGHT_DECAY

    # Pruning method and its knobs.
    config.method = "scp"  # a name from soft_prune_jax.pruners.method_names(): 'scp' | 'dense' | 'slimming'
    config.mask = config_dict.ConfigDict(dict(eps=0.05, delta=0.05, k=20.0, tau=0.5))  # SCP's mask
    config.sparsity_lambda = 5e-5  # SCP: the paper's ResNet-56 value; the only knob that sets the FLOPs cut
    config.sparsity_s = 2.0  # SCP: penalty per channel is beta + s * |gamma|
    # SCP at a MAC budget: None = the paper's fixed sparsity_lambda; a number in (0, 1) = keep that fraction
    # of the dense MACs (--config.target_macs_ratio=0.35). lambda starts at sparsity_lambda and a controller
    # on the hard-masked MACs steers it while training; if the trained network still overshoots, the cut
    # removes the least alive channels (highest z = (eps - beta) / |gamma|) until it fits.
    config.target_macs_ratio = placeholder(float)
    # SCP at a latency budget instead (docs/method.md, "Latency budget"): a fraction in (0, 1] of the dense
    # model's latency measured on this device at benchmark_batch_sizes[0], or an absolute target in ms;
    # the controller drives the latency the per-device tables estimate (soft_prune_jax/scp/latency_model.py).
    # At most one of target_macs_ratio, target_latency_ratio and target_latency_ms.
    config.target_latency_ratio = placeholder(float)
    config.target_latency_ms = placeholder(float)
    # SCP's penalty with each channel weighted by the MACs removing it would save (normalised to a mean of
    # 1), so early high-resolution channels are dearer to keep; False = the paper's penalty.
    config.cost_aware_penalty = False
    # The controller of target_macs_ratio (soft_prune_jax/scp/controller.py), on e = hard-masked MACs /
    # dense - target_t: log lambda = I + kp * e, I += ki * e every step; target_t falls linearly from 1 to
    # the budget over the first ramp_fraction of training; lambda stays in [lambda_min, lambda_max]; both
    # gains are multiplied by undershoot_boost while the MACs are below the target (dead channels rarely revive).
    # The MACs it steers count a channel as gone once its deactivation probability q reaches early_q (< the
    # hard mask's 1 - delta): channels die in bursts a while after lambda rises, so it must see them coming;
    # those still kept at the end are the first that landing removes. It aims at target + aim_above * (1 -
    # target), a little above the budget, because channels on their way out keep dying after lambda falls;
    # landing removes what is left above the budget.
    config.budget_controller = config_dict.ConfigDict(
        dict(
            kp=2.0,
            ki=0.05,
            undershoot_boost=4.0,
            ramp_fraction=0.5,
            lambda_min=1e-6,
            lambda_max=1.0,
            early_q=0.9,
            aim_above=0.1,
        )
    )
    # Network Slimming (method='slimming'; per-architecture values: slimming_recipe below).
    config.slimming = config_dict.ConfigDict()
    config.slimming.l1 = 1e-4  # L1 weight on the BN scales (Liu et al.: 1e-4 VGG, 1e-5 ResNet/DenseNet)
    config.slimming.scale_init = 0.5  # every BN scale starts here (Liu et al.'s init), not at 1
    # Liu et al.'s rule: keep this fraction of the masked channels, those above one global |scale|
    # percentile (1 - their --percent).
    config.slimming.target_channel_ratio = 0.5
    # When set, overrides target_channel_ratio: the most channels whose compact model has at most this
    # fraction of the dense MACs. A comparison with SCP at matched MACs, labelled so in the report; not
    # Liu et al.'s rule.
    config.slimming.target_macs_ratio = placeholder(float)

    # After training: physical pruning and optional fine-tuning of the compact network. Fine-tuning
    # keeps the schedule's shape: lr_boundaries scaled by finetune_epochs / num_epochs.
    config.finetune_epochs = 0  # 0 = none (the reference CIFAR pipeline does not fine-tune)
    config.finetune_learning_rate = 0.01  # the paper's optional fine-tuning LR
    # 'latency' (the default): per channel group the width >= the kept count whose layers run fastest on
    # this device at benchmark_batch_sizes[0], timed once and cached (soft_prune_jax/traced/latency_landing.py);
    # or an int: keep channel counts multiples of it (1 = no alignment). Padding keeps the most alive channels.
    # Typed `object` so that --config.round_to takes an int or the string 'latency' alike.
    config.round_to = config_dict.FieldReference("latency", field_type=object)

    # Running.
    config.parallel = "pmap"  # data parallelism over the local devices: 'pmap' | 'shard_map' (jit + shard_map)
    # On a CPU-only host: split it into this many XLA devices for the data parallelism above, an int or
    # 'auto' (2 on >= 2 cores when the batches split evenly; soft_prune_jax/training/cpu_devices.py).
    config.cpu_devices = config_dict.FieldReference("auto", field_type=object)
    config.checkpoint_every_epochs = 1  # a killed run resumes from the last one
    config.keep_checkpoints = 3  # newest checkpoints kept per phase
    config.log_every_steps = 100  # progress line and TensorBoard scalars
    config.seed = 0  # initialisation, Gumbel noise and data order (a run is a function of it)
    config.num_train_examples = placeholder(int)  # None = the whole train split (minus validation)
    config.num_eval_examples = placeholder(int)  # None = the whole evaluation split
    config.validation_examples = 0  # > 0 carves a validation split from the END of train
    config.benchmark_batch_sizes = (64,)  # batch sizes the benchmark phase times
    config.benchmark_runs = 50  # timed runs per batch size (the median is reported)
    # Multi-host: None = from the cluster environment (e.g. SLURM) or a single process.
    config.distributed = config_dict.ConfigDict()
    config.distributed.coordinator_address = placeholder(str)  # 'host:port' of process 0
    config.distributed.num_processes = placeholder(int)  # hosts (one process each)
    config.distributed.process_id = placeholder(int)  # this host's index in [0, num_processes)
    return config


def with_method(config: config_dict.ConfigDict, method: str) -> config_dict.ConfigDict:
    """``config`` trained with ``method``: 'slimming' as Liu et al. ran it (slimming_recipe); any other
    name (e.g. 'scp', 'dense') only sets config.method, and validation refuses an unknown one."""
    if method == "slimming":
        return slimming_recipe(config)
    config.method = method
    return config


def slimming_recipe(config: config_dict.ConfigDict) -> config_dict.ConfigDict:
    """``config`` as Network Slimming as Liu et al. ran it, on this config's model and schedule.

    Their per-architecture L1 and prune percentile (SLIMMING_BY_FAMILY), BN scales from 0.5, and a
    fine-tune of the pruned network on the full schedule from the full learning rate (CIFAR: 160
    epochs from 0.1, / 10 at 80 and 120). Their PyTorch SGD has plain momentum and adds 1e-4 * w
    (the same convention as optax), so weight_decay = 1e-4 and nesterov = False.
    """
    family = next((f for f in SLIMMING_BY_FAMILY if config.model.startswith(f)), None)
    if family is None:
        raise ValueError(
            f"model={config.model!r} has no Network Slimming recipe: expected a name starting "
            f"with one of {', '.join(SLIMMING_BY_FAMILY)}"
        )
    config.method = "slimming"
    config.slimming.l1, config.slimming.target_channel_ratio = SLIMMING_BY_FAMILY[family]
    config.slimming.scale_init = 0.5
    config.weight_decay = 1e-4
    config.nesterov = False
    config.finetune_epochs = config.num_epochs
    config.finetune_learning_rate = config.learning_rate
    return config
