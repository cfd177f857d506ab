"""Input pipelines: tensorflow-datasets -> tf.data -> numpy batches laid out for pmap / shard_map.

Datasets (``config.dataset``): the four known ones, cifar10, cifar100, imagenet2012, fashion_mnist, with
their published constants (docs/method.md, "Training recipe", for augmentation); any other tfds
image-classification name, a folder of images (``folder:PATH``) or a user's own pipeline
(``package.module:attribute``), whose facts ``sources.py`` resolves into the same ``DatasetSpec``.
Every batch is a dict ``{'image': float32 (local_devices, per_device_batch, H, W, C),
'label': int32 (local_devices, per_device_batch)}``; evaluation batches add ``'mask'`` (float32,
0 for the padding examples that fill up the last batch).

Splits. ``'train'`` is the tfds train split minus the last ``validation_examples`` examples,
``'validation'`` is those last examples (model selection never looks at the test set) and
``'test'`` is the tfds test split (ImageNet: its labelled ``validation`` split). The split sizes
are fixed facts of the datasets (``DATASETS``), so ``get_dataset_info`` needs no TensorFlow and
the example ranges can be computed before reading: every process reads only its own contiguous
range (``process_slice``), given to tfds as an absolute slice such as ``train[0:25000]``.

TensorFlow is imported lazily, inside the functions that read data, and is kept off the GPUs,
so the rest of the package (and the GPU image, which has no TensorFlow) never needs it. The public
entry points call ``_tf()`` (import + hide GPUs); the helpers they trace into tf.data import
``tensorflow`` directly, so AutoGraph never sees ``_tf``'s side effects.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import glob
import logging
import math
import os
import re
from typing import Any, Iterable, Iterator, NamedTuple, Optional, Sequence, Union

import numpy as np

# The Debian package dataset-fashion-mnist puts the four original idx .gz files here.
FASHION_MNIST_OFFLINE_DIR = "/usr/share/datasets/fashion-mnist/"
IMAGENET_MANUAL_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Static facts of one dataset: what the pipeline needs to know before reading anything."""

    tfds_name: str
    num_classes: int
    input_shape: tuple[int, int, int]  # (H, W, C) of the model input after preprocessing
    train_size: int  # examples in the tfds train split
    test_size: int  # examples in the tfds split used as our test split
    tfds_test_split: str  # ImageNet's labelled evaluation split is tfds 'validation'
    mean: tuple[float, ...]  # per-channel mean / std of the train images scaled to [0, 1]
    std: tuple[float, ...]
    shuffle_buffer: int  # small datasets shuffle their whole range
    in_memory: bool  # small enough to keep decoded in memory (see _read_in_memory)
    # Augmentation of the train images: 'imagenet' (random-resized-crop of the JPEG), 'pad_crop_flip'
    # (pad by ``pad``, crop back, flip), 'random_resized_crop' (area 8-100%, then flip) or 'none'
    # (a user pipeline augments its own images).
    augmentation: str = "pad_crop_flip"
    pad: int = 4
    kind: str = "tfds"  # 'tfds' | 'folder' | 'factory' (sources.py resolves the last two and unknown tfds names)
    source: str = ""  # the folder path or the factory's 'package.module:attribute'
    test_fraction: float = 0.0  # a folder without train/ and test/: the share of each class held out as test
    # The tfds splits as absolute (split, start, end) pieces (empty: the whole tfds train / test split).
    train_pieces: tuple[tuple[str, int, int], ...] = ()
    test_pieces: tuple[tuple[str, int, int], ...] = ()
    image_key: str = "image"
    label_key: str = "label"
    raw_shape: tuple = ()  # (H, W, C) of the stored images, None where they vary; () = input_shape

    def pieces(self, which: str) -> tuple[tuple[str, int, int], ...]:
        """The absolute pieces of our 'train' or 'test' range, in reading order."""
        if which == "train":
            return self.train_pieces or (("train", 0, self.train_size),)
        return self.test_pieces or ((self.tfds_test_split, 0, self.test_size),)

    def stored_shape(self) -> tuple:
        return tuple(self.raw_shape) or tuple(self.input_shape)


DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(
        "cifar10",
        10,
        (32, 32, 3),
        50_000,
        10_000,
        "test",
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        50_000,
        True,
    ),
    "cifar100": DatasetSpec(
        "cifar100",
        100,
        (32, 32, 3),
        50_000,
        10_000,
        "test",
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
        50_000,
        True,
    ),
    # ImageNet streams from disk every epoch; its shuffle buffer holds encoded JPEGs (~110 kB each).
    "imagenet2012": DatasetSpec(
        "imagenet2012",
        1000,
        (224, 224, 3),
        1_281_167,
        50_000,
        "validation",
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
        10_000,
        False,
        augmentation="imagenet",
    ),
    "fashion_mnist": DatasetSpec(
        "fashion_mnist", 10, (28, 28, 1), 60_000, 10_000, "test", (0.2860,), (0.3530,), 60_000, True, pad=2
    ),
}
IMAGENET_TRAIN_SIZE, IMAGENET_EVAL_RESIZE = 224, 256


class DatasetInfo(NamedTuple):
    num_classes: int
    input_shape: tuple[int, int, int]
    num_train: int  # examples the train iterator cycles through (all processes together)
    num_test: int  # examples eval_iterator(split='test') yields unpadded
    num_validation: int  # examples eval_iterator(split='validation') yields unpadded (0 = none)


# ----------------------------------------------------------------------------- dataset facts
# The config fields are checked by config_validation (each in one place); this module only looks up
# the facts of the named dataset.


def known_datasets() -> list[str]:
    return sorted(DATASETS)


def dataset_spec(config_or_name) -> DatasetSpec:
    """The facts of the configured dataset (a config) or of a known dataset (a name).

    A known name reads the table and needs no TensorFlow; anything else (a tfds name, ``folder:PATH``,
    ``package.module:attribute``) is resolved once per process by ``sources.resolve``, which may prepare
    the tfds data, scan the folder or call the factory. Every failure is a one-line ValueError.
    """
    if isinstance(config_or_name, str) and config_or_name in DATASETS:
        return DATASETS[config_or_name]
    if not hasattr(config_or_name, "get"):
        raise ValueError(
            f"config.dataset={config_or_name!r} is unknown: known datasets are {', '.join(known_datasets())}"
        )
    if config_or_name.get("dataset") in DATASETS:
        return DATASETS[config_or_name.dataset]
    from soft_prune_jax.training import sources  # imports TensorFlow only for tfds and folder datasets

    return sources.resolve(config_or_name)


def num_classes(config) -> int:
    """config.num_classes where set (a custom dataset module), else the configured dataset's class count."""
    return config.get("num_classes") or dataset_spec(config).num_classes


def default_data_dir() -> str:
    """tfds's own default: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def tfds_data_dir(config) -> str:
    return config.get("data_dir") or default_data_dir()


def is_prepared_on_disk(name: str, data_dir: str) -> bool:
    """Whether tfds has prepared ``name`` in ``data_dir`` (data_dir/name/version/dataset_info.json; no TF)."""
    return bool(glob.glob(os.path.join(data_dir, name, "*", "dataset_info.json")))


def get_dataset_info(config) -> DatasetInfo:
    """Classes, input shape and example counts of the configured dataset (honours the overrides)."""
    spec = dataset_spec(config)
    validation = config.validation_examples
    num_train = config.get("num_train_examples") or spec.train_size - validation
    num_test = config.get("num_eval_examples") or spec.test_size
    num_validation = min(validation, config.get("num_eval_examples") or validation)
    return DatasetInfo(spec.num_classes, spec.input_shape, num_train, num_test, num_validation)


# ----------------------------------------------------------------------------- splits and batches


def process_slice(num_examples: int, process_index: int, process_count: int) -> tuple[int, int]:
    """[start, end) of this process's share of ``num_examples``; shares differ by at most one,
    the first ``num_examples % process_count`` processes take the extra example (as tfds.even_splits)."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is invalid: expected 0 <= index < {process_count}")
    base, extra = divmod(num_examples, process_count)
    start = process_index * base + min(process_index, extra)
    return start, start + base + (process_index < extra)


def _split_range(config, spec: DatasetSpec, split: str) -> tuple[str, int, int]:
    """Our logical split -> ('train' or 'test', [start, end) within that range), overrides applied."""
    validation = config.validation_examples
    if split == "train":
        end = config.get("num_train_examples") or spec.train_size - validation
        return "train", 0, end
    if split == "validation":
        if validation == 0:
            raise ValueError(
                "split='validation' needs config.validation_examples > 0 (it is carved from the end "
                "of train); got validation_examples=0"
            )
        start = spec.train_size - validation
        return "train", start, start + min(validation, config.get("num_eval_examples") or validation)
    if split == "test":
        return "test", 0, config.get("num_eval_examples") or spec.test_size
    raise ValueError(f"split={split!r} is unknown: expected one of {', '.join(SPLITS)}")


def slice_string(pieces: Sequence[tuple[str, int, int]], start: int, end: int) -> str:
    """Positions [start, end) of the concatenated ``pieces`` as an absolute tfds split, e.g.
    'train[0:25000]', or 'train[900:1000]+validation[0:50]' where the range spans two pieces."""
    if start >= end:  # a process without examples reads an empty slice
        name, first, _ = pieces[0]
        return f"{name}[{first}:{first}]"
    parts, position = [], 0
    for name, first, last in pieces:
        lo, hi = max(start, position), min(end, position + last - first)
        if lo < hi:
            parts.append(f"{name}[{first + lo - position}:{first + hi - position}]")
        position += last - first
    return "+".join(parts)


def per_device_batch_size(batch_size: int, local_devices: int, process_count: int) -> int:
    """Global batch -> per-process batch -> per-device batch; both divisions must be exact."""
    if batch_size % process_count:
        raise ValueError(f"batch size {batch_size} is not divisible by the process count {process_count}")
    per_process = batch_size // process_count
    if per_process % local_devices:
        raise ValueError(
            f"per-process batch size {per_process} (global {batch_size} / {process_count} processes) "
            f"is not divisible by the local device count {local_devices}"
        )
    return per_process // local_devices


def _device_count(local_devices: Union[int, Sequence[Any]]) -> int:
    count = local_devices if isinstance(local_devices, (int, np.integer)) else len(local_devices)
    if isinstance(count, bool) or count < 1:
        raise ValueError(f"local_devices={local_devices!r} is invalid: expected an int >= 1 or a list of devices")
    return int(count)


def _process_layout(process_index: Optional[int], process_count: Optional[int]) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax  # only to ask which process this is; the default is a single process

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if process_count < 1:
        raise ValueError(f"process_count={process_count} is invalid: expected an int >= 1")
    return int(process_index), int(process_count)


# ----------------------------------------------------------------------------- TensorFlow side

_TF_READY = False


def _tf():
    """Imports TensorFlow and tfds on first use and hides the GPUs from TensorFlow."""
    global _TF_READY
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ start-up chatter; a user's value wins
    import tensorflow as tf
    import tensorflow_datasets as tfds

    if not _TF_READY:
        try:
            tf.config.experimental.set_visible_devices([], "GPU")
        except RuntimeError:  # TF initialised its devices before this call; they can no longer be hidden
            logging.warning("TensorFlow was initialised before soft_prune_jax.data could hide the GPUs")
        _TF_READY = True
    return tf, tfds


@contextlib.contextmanager
def _file_lock(path: str):
    """Exclusive lock so that concurrent processes do not prepare the same dataset twice."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_PREPARED: set[tuple[str, str]] = set()


def prepare_dataset(config):
    """Returns the tfds builder of the configured tfds dataset, prepared once per data_dir.

    Fashion-MNIST is built from the Debian files when they exist (no internet needed); CIFAR and
    other tfds datasets download as usual; ImageNet is built from config.manual_dir.
    """
    if config.get("dataset") not in DATASETS:
        return prepare_builder(config, config.dataset)
    spec = dataset_spec(config.dataset)
    builder = prepare_builder(config, spec.tfds_name)
    _check_split_sizes(builder, spec)
    return builder


def prepare_builder(config, name: str):
    """The tfds builder of ``name`` in config's data_dir, prepared there first unless it already is."""
    tf, tfds = _tf()
    data_dir = tfds_data_dir(config)
    key = (name, data_dir)
    if key not in _PREPARED:
        try:
            with _file_lock(os.path.join(data_dir, f".soft_prune_jax.{name.replace('/', '_')}.lock")):
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
            raise _unusable_data(name, data_dir, e) from e
    # A fresh builder reads the metadata as it is on disk now (another process may have prepared it).
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:
        raise _unusable_data(name, data_dir, e) from e
    _PREPARED.add(key)
    return builder


# Import names whose PyPI distribution is named otherwise.
_DISTRIBUTIONS = {"importlib_resources": "importlib-resources", "PIL": "pillow", "google.protobuf": "protobuf"}


def _missing_module(error: BaseException) -> str | None:
    """The name of the module whose import failed anywhere in ``error``'s chain, else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, ImportError) and getattr(error, "name", None):
            return error.name
        error = error.__cause__ or error.__context__
    return None


def _unusable_data(name: str, data_dir: str, error: BaseException) -> Exception:
    """One line for any failure to prepare or read a dataset (tfds/TF errors span many lines).

    A module that cannot be imported is a broken install, not a damaged data folder: the message says
    which package to install instead of which folder to delete.
    """
    module = _missing_module(error)
    if module is not None:
        top = module.split(".")[0]
        package = _DISTRIBUTIONS.get(module, _DISTRIBUTIONS.get(top, top.replace("_", "-")))
        return ModuleNotFoundError(
            f"preparing {name} needs the Python module {module!r}, which is not installed "
            f"(a dependency of tensorflow-datasets; pip install {package}, or install the locked "
            f"environment: pip install -r requirements/demo.txt)"
        )
    first = re.sub(r"\{\{.*?\}\}\s*", "", (str(error).splitlines() or [""])[0])[:200]  # drop TF's op context
    return ValueError(
        f"{name} in data_dir={data_dir!r} cannot be prepared or read ({type(error).__name__}: "
        f"{first}); expected a writable directory with a complete tfds {name} (delete "
        f"{os.path.join(data_dir, name)} to prepare it again)"
    )


def _check_split_sizes(builder, spec: DatasetSpec) -> None:
    # The slices are computed from DATASETS; a prepared dataset of another size would be misread.
    for split, expected in (("train", spec.train_size), (spec.tfds_test_split, spec.test_size)):
        if split not in builder.info.splits:  # code-only metadata (mocked tests) knows no sizes
            continue
        actual = builder.info.splits[split].num_examples
        if actual != expected:
            raise ValueError(f"{spec.tfds_name} split {split!r} has {actual} examples on disk: expected {expected}")


def _read(config, spec: DatasetSpec, split: str, process_index: int, process_count: int, *, train: bool, seed: int):
    """Raw examples of this process's range of ``split`` (images still uint8, or JPEG for ImageNet train)."""
    tf, tfds = _tf()
    which, start, end = _split_range(config, spec, split)
    offset, stop = process_slice(end - start, process_index, process_count)
    first, last, count = start + offset, start + stop, stop - offset
    if spec.kind == "folder":
        from soft_prune_jax.training import sources

        key = (spec, which, first, last)
        make = lambda: sources.folder_examples(spec, which, first, last)  # noqa: E731
    else:
        builder = prepare_dataset(config)
        split_slice = slice_string(spec.pieces(which), first, last)
        key = (spec, tfds_data_dir(config), split_slice)
        make = lambda **kwargs: _tfds_examples(builder, spec, split_slice, count, **kwargs)  # noqa: E731
    if spec.in_memory:
        examples = _read_in_memory(config, spec, key, make, count)
        if train:  # a permutation in numpy: see train_iterator
            order = np.random.default_rng(seed).permutation(count)
            examples = {k: v[order] for k, v in examples.items()}
        return tf.data.Dataset.from_tensor_slices(examples), count
    if spec.kind == "folder":
        return make(), count
    decoders = None
    if train and spec.tfds_name == "imagenet2012":
        # Decode only the random crop (decode_and_crop_jpeg), not the whole JPEG.
        decoders = {"image": tfds.decode.SkipDecoding()}
    read_config = tfds.ReadConfig(shuffle_seed=seed, try_autocache=False)
    return make(shuffle_files=train, decoders=decoders, read_config=read_config), count


def _tfds_examples(builder, spec: DatasetSpec, split_slice: str, count: int, **as_dataset_kwargs):
    """{'image', 'label' (int32)} of a tfds split slice, whatever the dataset calls its two features."""
    import tensorflow as tf

    ds = builder.as_dataset(split=split_slice, **as_dataset_kwargs)
    # The slice already has this length; take() also bounds mocked datasets that ignore slices.
    return ds.take(count).map(lambda ex: {"image": ex[spec.image_key], "label": tf.cast(ex[spec.label_key], tf.int32)})


# Decoded small splits, kept for the life of the process: the trainer opens a fresh iterator every
# epoch, and decoding 60,000 PNGs again each time costs ~8 s on 2 cores (CIFAR-10 train: 150 MB).
_IN_MEMORY: dict[tuple, dict[str, np.ndarray]] = {}


def _read_in_memory(config, spec: DatasetSpec, key: tuple, make, count: int) -> dict[str, np.ndarray]:
    if key not in _IN_MEMORY:
        _, tfds = _tf()
        examples = {"image": np.zeros((0, *spec.stored_shape()), np.uint8), "label": np.zeros((0,), np.int32)}
        if count:
            try:
                whole = next(iter(tfds.as_numpy(make().batch(count))))
            except Exception as e:  # truncated or damaged record files
                raise _unusable_data(spec.source or spec.tfds_name, tfds_data_dir(config), e) from e
            examples = {"image": whole["image"], "label": whole["label"].astype(np.int32)}
        _IN_MEMORY[key] = examples
    return _IN_MEMORY[key]


def _normalize(image, spec: DatasetSpec):
    import tensorflow as tf

    image = tf.cast(image, tf.float32) / 255.0
    return (image - tf.constant(spec.mean, tf.float32)) / tf.constant(spec.std, tf.float32)


def _pad_crop_flip(image, seed, pad: int, *, flip: bool):
    """Zero-pad by ``pad``, random crop back to the original size, random horizontal flip."""
    import tensorflow as tf

    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    height, width, channels = image.shape
    image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    image = tf.image.stateless_random_crop(image, (height, width, channels), seed=crop_seed)
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    return image


def _imagenet_train_image(jpeg, seed):
    """Random-resized-crop (area 8-100%, aspect 3/4-4/3) to 224 + horizontal flip."""
    import tensorflow as tf

    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shape = tf.image.extract_jpeg_shape(jpeg)
    whole_image = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=[1, 1, 4])
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        whole_image,
        seed=crop_seed,
        min_object_covered=0.08,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    crop_window = tf.stack([begin[0], begin[1], size[0], size[1]])
    image = tf.image.decode_and_crop_jpeg(jpeg, crop_window, channels=3)
    image = tf.image.resize(image, (IMAGENET_TRAIN_SIZE, IMAGENET_TRAIN_SIZE), method="bilinear", antialias=True)
    return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def _random_resized_crop(image, seed, size):
    """Random-resized-crop (area 8-100%, aspect 3/4-4/3) of a decoded image to ``size`` + horizontal flip."""
    import tensorflow as tf

    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    whole_image = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=[1, 1, 4])
    begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        whole_image,
        seed=crop_seed,
        min_object_covered=0.08,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    image = tf.image.resize(tf.slice(image, begin, crop), size, method="bilinear", antialias=True)
    return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


EVAL_CROP_FRACTION = IMAGENET_TRAIN_SIZE / IMAGENET_EVAL_RESIZE  # 0.875: the centre crop's share of the resize


def _centre_crop(image, size, channels: int):
    """Resize so that ``size`` is 87.5% of the image (ImageNet: shorter side 256), centre crop ``size``."""
    import tensorflow as tf

    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    scale = tf.maximum((size[0] / EVAL_CROP_FRACTION) / height, (size[1] / EVAL_CROP_FRACTION) / width)
    new_size = tf.cast(tf.round(tf.stack([height * scale, width * scale])), tf.int32)
    new_size = tf.maximum(new_size, size)  # rounding must never undercut the crop
    image = tf.image.resize(image, new_size, method="bilinear", antialias=True)
    top = (new_size[0] - size[0]) // 2
    left = (new_size[1] - size[1]) // 2
    image = image[top : top + size[0], left : left + size[1]]
    return tf.ensure_shape(image, (*size, channels))


def _fit(image, spec: DatasetSpec):
    """The image at the model's input size: resized where the stored images have another (or no fixed) size."""
    import tensorflow as tf

    height, width, channels = spec.input_shape
    if tuple(spec.stored_shape()[:2]) == (height, width):
        return image
    image = tf.image.resize(image, (height, width), method="bilinear", antialias=True)
    return tf.ensure_shape(image, (height, width, channels))


def _train_image(image, seed, spec: DatasetSpec, augment: bool):
    if spec.augmentation == "imagenet":
        return _imagenet_train_image(image, seed)  # the crop is the resize; always on
    if spec.augmentation == "random_resized_crop":
        size = tuple(spec.input_shape[:2])
        return _random_resized_crop(image, seed, size) if augment else _centre_crop(image, size, spec.input_shape[2])
    image = _fit(image, spec)
    return _pad_crop_flip(image, seed, pad=spec.pad, flip=True) if augment else image


def _eval_image(image, spec: DatasetSpec):
    if spec.augmentation in ("imagenet", "random_resized_crop"):
        return _centre_crop(image, tuple(spec.input_shape[:2]), spec.input_shape[2])
    return _fit(image, spec)


def _to_devices(batch, local_devices: int):
    """(per_process_batch, ...) -> (local_devices, per_device_batch, ...), the pmap layout."""
    import tensorflow as tf

    return {k: tf.reshape(v, tf.concat([[local_devices, -1], tf.shape(v)[1:]], 0)) for k, v in batch.items()}


# Fixed parallelism instead of tf.data's autotuning. Autotuning runs a model thread that re-optimises on
# a period growing to a minute, and destroying an iterator (the loop opens one per epoch) waits for that
# thread's current wait to end: up to a minute of a stalled training loop at an epoch boundary.
PREFETCH_BATCHES = 4


def _parallel_calls() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def _options(ds):
    import tensorflow as tf

    options = tf.data.Options()
    options.deterministic = True  # parallel maps keep their order: same seed, same batches
    options.autotune.enabled = False  # see PREFETCH_BATCHES
    return ds.with_options(options)


def train_iterator(
    config,
    *,
    local_devices: Union[int, Sequence[Any]],
    seed: int,
    process_index: Optional[int] = None,
    process_count: Optional[int] = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Infinite, shuffled, augmented numpy batches of this process's share of the train split.

    Deterministic given ``seed`` (and the process index). ``config.augment`` (default True) turns
    the augmentation off (ImageNet always uses random-resized-crop). A user pipeline's batches are
    re-cut to this process's share of the global batch (sources.factory_batches).
    """
    spec = dataset_spec(config)
    devices = _device_count(local_devices)
    process_index, process_count = _process_layout(process_index, process_count)
    per_device = per_device_batch_size(config.batch_size, devices, process_count)
    if spec.kind == "factory":
        from soft_prune_jax.training import sources

        return sources.factory_batches(spec, config, "train", devices, per_device, process_index, process_count)
    tf, tfds = _tf()
    process_seed = int(seed) * 7919 + process_index  # distinct, reproducible stream per process
    ds, count = _read(config, spec, "train", process_index, process_count, train=True, seed=process_seed)
    if count < per_device * devices:
        raise ValueError(
            f"this process holds {count} train examples, fewer than its batch of "
            f"{per_device * devices}: lower config.batch_size or raise num_train_examples"
        )
    # Every epoch is a permutation, fixed by the seed (the loop opens a fresh iterator per epoch). Small
    # data sets held in memory are permuted in numpy by _read, which is instant, where a tf.data shuffle
    # buffer of the whole split would be filled element by element at every epoch's start.
    if not spec.in_memory:
        ds = ds.shuffle(min(spec.shuffle_buffer, count), seed=process_seed, reshuffle_each_iteration=True)
    ds = ds.repeat()
    augment = bool(config.get("augment", True))

    def preprocess(index, example):
        example_seed = tf.stack([tf.constant(process_seed, tf.int64), index])
        image = _train_image(example["image"], example_seed, spec, augment)
        return {"image": _normalize(image, spec), "label": example["label"]}

    ds = ds.enumerate().map(preprocess, num_parallel_calls=_parallel_calls())
    ds = ds.batch(per_device * devices, drop_remainder=True).map(lambda b: _to_devices(b, devices))
    return iter(tfds.as_numpy(_options(ds).prefetch(PREFETCH_BATCHES)))


def eval_iterator(
    config,
    *,
    local_devices: Union[int, Sequence[Any]],
    split: str = "test",
    process_index: Optional[int] = None,
    process_count: Optional[int] = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Finite numpy batches of this process's share of ``split`` ('test', 'validation' or 'train').

    The last batch is padded with zero images whose ``mask`` is 0, and every process yields the
    same number of batches (a process with fewer examples adds all-padding batches), so a
    cross-process pmap never waits on a process that has run out.
    """
    spec = dataset_spec(config)
    devices = _device_count(local_devices)
    process_index, process_count = _process_layout(process_index, process_count)
    per_device = per_device_batch_size(config.eval_batch_size, devices, process_count)
    batch = per_device * devices
    _, start, end = _split_range(config, spec, split)
    if spec.kind == "factory":
        from soft_prune_jax.training import sources

        return sources.factory_batches(spec, config, split, devices, per_device, process_index, process_count)
    tf, tfds = _tf()
    largest_share = math.ceil((end - start) / process_count)
    num_batches = math.ceil(largest_share / batch)
    ds, count = _read(config, spec, split, process_index, process_count, train=False, seed=0)

    def preprocess(example):
        image = _normalize(_eval_image(example["image"], spec), spec)
        return {"image": image, "label": example["label"], "mask": tf.constant(1.0, tf.float32)}

    def pad_batch(examples):
        missing = batch - tf.shape(examples["label"])[0]
        return {
            k: tf.ensure_shape(tf.pad(v, [[0, missing]] + [[0, 0]] * (len(v.shape) - 1)), [batch, *v.shape[1:]])
            for k, v in examples.items()
        }

    ds = ds.map(preprocess, num_parallel_calls=_parallel_calls()).batch(batch).map(pad_batch)
    padding_batches = num_batches - math.ceil(count / batch)
    if padding_batches:
        empty = {
            "image": tf.zeros((batch, *spec.input_shape), tf.float32),
            "label": tf.zeros((batch,), tf.int32),
            "mask": tf.zeros((batch,), tf.float32),
        }
        ds = ds.concatenate(tf.data.Dataset.from_tensors(empty).repeat(padding_batches))
    ds = ds.map(lambda b: _to_devices(b, devices))
    return iter(tfds.as_numpy(_options(ds).prefetch(PREFETCH_BATCHES)))


def prefetch_to_device(iterator: Iterable[Any], size: int, devices: Optional[Sequence[Any]] = None):
    """Puts the next ``size`` batches on the devices ahead of use (leading axis = local devices).

    Delegates to flax.jax_utils.prefetch_to_device (still present in flax 0.12); ``devices``
    defaults to the local devices in pmap order.
    """
    from flax import jax_utils

    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"prefetch size={size!r} is invalid: expected an int >= 1")
    return jax_utils.prefetch_to_device(iter(iterator), size, devices=devices)
