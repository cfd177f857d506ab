"""Input pipelines: a dataset's facts, then tensorflow-datasets / a folder / a user's pipeline -> tf.data ->
numpy batches laid out for pmap / shard_map.

Datasets (``config.dataset``): the four known ones, cifar10, cifar100, imagenet2012, fashion_mnist, with
their published constants (docs/method.md, "Training recipe", for augmentation); any other tfds
image-classification name, a folder of images (``folder:PATH``) or a user's own pipeline
(``package.module:attribute``), each resolved into the same ``DatasetSpec``:

    --config.dataset=oxford_flowers102              any tfds image-classification dataset by name
    --config.dataset=folder:/data/my_images         one sub-folder of images per class
    --config.dataset=my_package.my_data:pipeline    a factory: (train, eval, num_classes)

Every batch is a dict ``{'image': float32 (local_devices, per_device_batch, H, W, C),
'label': int32 (local_devices, per_device_batch)}``; evaluation batches add ``'mask'`` (float32,
0 for the padding examples that fill up the last batch). The split sizes are facts of the spec, so
``get_dataset_info`` needs no TensorFlow for the known datasets, and every process reads only its
own contiguous range of a split.

One module per idea, each importing only those listed after it:

- ``iterators``: ``train_iterator`` / ``eval_iterator``, the entry points (batching, padding, device layout)
- ``reading``: this process's raw examples of a split (tfds slices or folder files; small ones in memory)
- ``preprocessing``: augmentations, evaluation crops, resize and normalisation inside tf.data
- ``resolve``: ``dataset_spec`` (config.dataset -> spec, by kind), ``num_classes``, ``get_dataset_info``
- ``tfds_by_name``, ``folder_source``, ``factory_source``: the three kinds beyond the known table
- ``image_defaults``: input size, augmentation and in-memory choice where no recipe is published
- ``channel_stats``: the per-channel mean / std, computed once and cached
- ``tfds_builders``: the data_dir, preparing a tfds dataset once (Fashion-MNIST offline), its examples
- ``splits``: train / validation / test as example ranges and absolute tfds slices
- ``sharding``: process shares, per-device batch size, ``prefetch_to_device``
- ``spec``: ``DatasetSpec``, the known datasets' table ``DATASETS``, ``DatasetInfo``, ``kind_of``
- ``tf_runtime``, ``errors``, ``file_lock``: lazy TensorFlow (GPUs hidden), one-line errors, a lock file

TensorFlow is imported lazily, inside the functions that read data, and is kept off the GPUs
(``tf_runtime``), so importing this package (and the GPU image, which has no TensorFlow) never needs it.
"""

from soft_prune_jax.training.data.image_defaults import AUGMENTATIONS
from soft_prune_jax.training.data.iterators import eval_iterator, train_iterator
from soft_prune_jax.training.data.resolve import dataset_spec, get_dataset_info, num_classes
from soft_prune_jax.training.data.sharding import per_device_batch_size, prefetch_to_device, process_slice
from soft_prune_jax.training.data.spec import DATASETS, SOURCE_FIELDS, DatasetInfo, DatasetSpec, kind_of, known_datasets
from soft_prune_jax.training.data.splits import slice_string
from soft_prune_jax.training.data.tfds_builders import (
    IMAGENET_MANUAL_FILES,
    is_prepared_on_disk,
    prepare_dataset,
    tfds_data_dir,
)

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "IMAGENET_MANUAL_FILES",
    "SOURCE_FIELDS",
    "DatasetInfo",
    "DatasetSpec",
    "dataset_spec",
    "eval_iterator",
    "get_dataset_info",
    "is_prepared_on_disk",
    "kind_of",
    "known_datasets",
    "num_classes",
    "per_device_batch_size",
    "prefetch_to_device",
    "prepare_dataset",
    "process_slice",
    "slice_string",
    "tfds_data_dir",
    "train_iterator",
]
