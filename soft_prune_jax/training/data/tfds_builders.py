"""tfds builders: the data_dir, preparing a dataset there once (Fashion-MNIST offline from the Debian
files, ImageNet from config.manual_dir, the rest downloaded by tfds), and a split slice's examples."""

from __future__ import annotations

import glob
import logging
import os

from soft_prune_jax.training.data.errors import unusable_data
from soft_prune_jax.training.data.file_lock import file_lock
from soft_prune_jax.training.data.spec import DATASETS, DatasetSpec
from soft_prune_jax.training.data.tf_runtime import import_tensorflow

# The Debian package dataset-fashion-mnist puts the four original idx .gz files here.
FASHION_MNIST_OFFLINE_DIR = "/usr/share/datasets/fashion-mnist/"
IMAGENET_MANUAL_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


def default_data_dir() -> str:
    """tfds's own default: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def tfds_data_dir(config) -> str:
    return config.get("data_dir") or default_data_dir()


def is_prepared_on_disk(name: str, data_dir: str) -> bool:
    """Whether tfds has prepared ``name`` in ``data_dir`` (data_dir/name/version/dataset_info.json; no TF)."""
    return bool(glob.glob(os.path.join(data_dir, name, "*", "dataset_info.json")))


_PREPARED: set[tuple[str, str]] = set()


def prepare_dataset(config):
    """Returns the tfds builder of the configured tfds dataset, prepared once per data_dir.

    Fashion-MNIST is built from the Debian files when they exist (no internet needed); CIFAR and
    other tfds datasets download as usual; ImageNet is built from config.manual_dir.
    """
    if config.get("dataset") not in DATASETS:
        return prepare_builder(config, config.dataset)
    spec = DATASETS[config.dataset]
    builder = prepare_builder(config, spec.tfds_name)
    _check_split_sizes(builder, spec)
    return builder


def prepare_builder(config, name: str):
    """The tfds builder of ``name`` in config's data_dir, prepared there first unless it already is."""
    tf, tfds = import_tensorflow()
    data_dir = tfds_data_dir(config)
    key = (name, data_dir)
    if key not in _PREPARED:
        try:
            with file_lock(os.path.join(data_dir, f".soft_prune_jax.{name.replace('/', '_')}.lock")):
                builder = tfds.builder(name, data_dir=data_dir)
                if not builder.is_prepared():
                    download_config = None
                    if name == "fashion_mnist" and os.path.isdir(FASHION_MNIST_OFFLINE_DIR):
                        # tfds's MNIST-family builders join their class attribute URL with the file names.
                        builder.URL = "file://" + FASHION_MNIST_OFFLINE_DIR
                    if name == "imagenet2012":
                        download_config = tfds.download.DownloadConfig(manual_dir=config.manual_dir)
                    logging.info("preparing %s in %s", name, data_dir)
                    builder.download_and_prepare(download_config=download_config)
        except Exception as e:  # data_dir a file or read-only, damaged metadata, a failed download, ...
            raise unusable_data(name, data_dir, e) from e
    # A fresh builder reads the metadata as it is on disk now (another process may have prepared it).
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:
        raise unusable_data(name, data_dir, e) from e
    _PREPARED.add(key)
    return builder


def _check_split_sizes(builder, spec: DatasetSpec) -> None:
    # The slices are computed from DATASETS; a prepared dataset of another size would be misread.
    for split, expected in (("train", spec.train_size), (spec.tfds_test_split, spec.test_size)):
        if split not in builder.info.splits:  # code-only metadata (mocked tests) knows no sizes
            continue
        actual = builder.info.splits[split].num_examples
        if actual != expected:
            raise ValueError(f"{spec.tfds_name} split {split!r} has {actual} examples on disk: expected {expected}")


def tfds_examples(builder, spec: DatasetSpec, split_slice: str, count: int, **as_dataset_kwargs):
    """{'image', 'label' (int32)} of a tfds split slice, whatever the dataset calls its two features."""
    import tensorflow as tf

    ds = builder.as_dataset(split=split_slice, **as_dataset_kwargs)
    # The slice already has this length; take() also bounds mocked datasets that ignore slices.
    return ds.take(count).map(lambda ex: {"image": ex[spec.image_key], "label": tf.cast(ex[spec.label_key], tf.int32)})
