"""Input pipelines: tensorflow-datasets -> tf.data -> numpy batches laid out for pmap / shard_map.

Datasets: cifar10, cifar100, imagenet2012, fashion_mnist (docs/method.md, "Training recipe", for augmentation).
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
    ),
    "fashion_mnist": DatasetSpec(
        "fashion_mnist", 10, (28, 28, 1), 60_000, 10_000, "test", (0.2860,), (0.3530,), 60_000, True
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


def dataset_spec(name) -> DatasetSpec:
    """The facts of dataset ``name``; an unknown name is a one-line error listing the known ones."""
    if name not in DATASETS:
        raise ValueError(f"config.dataset={name!r} is unknown: known datasets are {', '.join(known_datasets())}")
    return DATASETS[name]


def num_classes(config) -> int:
    """config.num_classes where set (a custom dataset module), else the configured dataset's class count."""
    return config.get("num_classes") or dataset_spec(config.dataset).num_classes


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
    spec = dataset_spec(config.dataset)
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
    """Our logical split -> (tfds split, absolute [start, end) within it), overrides applied."""
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
        return spec.tfds_test_split, 0, config.get("num_eval_examples") or spec.test_size
    raise ValueError(f"split={split!r} is unknown: expected one of {', '.join(SPLITS)}")


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
    """Returns the tfds builder of the configured dataset, prepared once per data_dir.

    Fashion-MNIST is built from the Debian files when they exist (no internet needed); CIFAR
    downloads as usual; ImageNet is built from config.manual_dir.
    """
    spec = dataset_spec(config.dataset)
    tf, tfds = _tf()
    data_dir = tfds_data_dir(config)
    key = (spec.tfds_name, data_dir)
    if key not in _PREPARED:
        try:
            with _file_lock(os.path.join(data_dir, f".soft_prune_jax.{spec.tfds_name}.lock")):
                builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
                if not builder.is_prepared():
                    download_config = None
                    if spec.tfds_name == "fashion_mnist" and os.path.isdir(FASHION_MNIST_OFFLINE_DIR):
                        # tfds's MNIST-family builders join their class attribute URL with the file names.
                        builder.URL = "file://" + FASHION_MNIST_OFFLINE_DIR
                    if spec.tfds_name == "imagenet2012":
                        download_config = tfds.download.DownloadConfig(manual_dir=config.manual_dir)
                    logging.info("preparing %s in %s", spec.tfds_name, data_dir)
                    builder.download_and_prepare(download_config=download_config)
        except Exception as e:  # data_dir a file or read-only, damaged metadata, a failed download, ...
            raise _unusable_data(spec, data_dir, e) from e
    # A fresh builder reads the metadata as it is on disk now (another process may have prepared it).
    try:
        builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
    except Exception as e:
        raise _unusable_data(spec, data_dir, e) from e
    _check_split_sizes(builder, spec)
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


def _unusable_data(spec: DatasetSpec, data_dir: str, error: BaseException) -> Exception:
    """One line for any failure to prepare or read a dataset (tfds/TF errors span many lines).

    A module that cannot be imported is a broken install, not a damaged data folder: the message says
    which package to install instead of which folder to delete.
    """
    module = _missing_module(error)
    if module is not None:
        top = module.split(".")[0]
        package = _DISTRIBUTIONS.get(module, _DISTRIBUTIONS.get(top, top.replace("_", "-")))
        return ModuleNotFoundError(
            f"preparing {spec.tfds_name} needs the Python module {module!r}, which is not installed "
            f"(a dependency of tensorflow-datasets; pip install {package}, or install the locked "
            f"environment: pip install -r requirements/demo.txt)"
        )
    first = re.sub(r"\{\{.*?\}\}\s*", "", (str(error).splitlines() or [""])[0])[:200]  # drop TF's op context
    return ValueError(
        f"{spec.tfds_name} in data_dir={data_dir!r} cannot be prepared or read ({type(error).__name__}: "
        f"{first}); expected a writable directory with a complete tfds {spec.tfds_name} (delete "
        f"{os.path.join(data_dir, spec.tfds_name)} to prepare it again)"
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
    builder = prepare_dataset(config)
    tfds_split, start, end = _split_range(config, spec, split)
    offset, stop = process_slice(end - start, process_index, process_count)
    decoders = None
    if train and spec.tfds_name == "imagenet2012":
        # Decode only the random crop (decode_and_crop_jpeg), not the whole JPEG.
        decoders = {"image": tfds.decode.SkipDecoding()}
    count = stop - offset
    split_slice = f"{tfds_split}[{start + offset}:{start + stop}]"
    if spec.in_memory:
        examples = _read_in_memory(config, spec, builder, split_slice, count)
        if train:  # a permutation in numpy: see train_iterator
            order = np.random.default_rng(seed).permutation(count)
            examples = {k: v[order] for k, v in examples.items()}
        return tf.data.Dataset.from_tensor_slices(examples), count
    read_config = tfds.ReadConfig(shuffle_seed=seed, try_autocache=False)
    ds = builder.as_dataset(split=split_slice, shuffle_files=train, decoders=decoders, read_config=read_config)
    # The slice already has this length; take() also bounds mocked datasets that ignore slices.
    ds = ds.take(count).map(lambda ex: {"image": ex["image"], "label": tf.cast(ex["label"], tf.int32)})
    return ds, count


# Decoded small splits, kept for the life of the process: the trainer opens a fresh iterator every
# epoch, and decoding 60,000 PNGs again each time costs ~8 s on 2 cores (CIFAR-10 train: 150 MB).
_IN_MEMORY: dict[tuple[str, str, str], dict[str, np.ndarray]] = {}


def _read_in_memory(config, spec: DatasetSpec, builder, split_slice: str, count: int) -> dict[str, np.ndarray]:
    key = (spec.tfds_name, tfds_data_dir(config), split_slice)
    if key not in _IN_MEMORY:
        _, tfds = _tf()
        examples = {"image": np.zeros((0, *spec.input_shape), np.uint8), "label": np.zeros((0,), np.int32)}
        if count:
            ds = builder.as_dataset(split=split_slice, shuffle_files=False).take(count)  # take(): see _read
            try:
                whole = next(iter(tfds.as_numpy(ds.batch(count))))
            except Exception as e:  # truncated or damaged record files
                raise _unusable_data(spec, tfds_data_dir(config), e) from e
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


def _imagenet_eval_image(image):
    """Resize the shorter side to 256, centre crop 224."""
    import tensorflow as tf

    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    scale = IMAGENET_EVAL_RESIZE / tf.minimum(height, width)
    new_size = tf.cast(tf.round(tf.stack([height * scale, width * scale])), tf.int32)
    new_size = tf.maximum(new_size, IMAGENET_TRAIN_SIZE)  # rounding must never undercut the crop
    image = tf.image.resize(image, new_size, method="bilinear", antialias=True)
    top = (new_size[0] - IMAGENET_TRAIN_SIZE) // 2
    left = (new_size[1] - IMAGENET_TRAIN_SIZE) // 2
    image = image[top : top + IMAGENET_TRAIN_SIZE, left : left + IMAGENET_TRAIN_SIZE]
    return tf.ensure_shape(image, (IMAGENET_TRAIN_SIZE, IMAGENET_TRAIN_SIZE, 3))


def _train_image(image, seed, spec: DatasetSpec, augment: bool):
    if spec.tfds_name == "imagenet2012":
        return _imagenet_train_image(image, seed)  # the crop is the resize; always on
    if not augment:
        return image
    if spec.tfds_name == "fashion_mnist":
        return _pad_crop_flip(image, seed, pad=2, flip=True)
    return _pad_crop_flip(image, seed, pad=4, flip=True)


def _eval_image(image, spec: DatasetSpec):
    return _imagenet_eval_image(image) if spec.tfds_name == "imagenet2012" else image


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
    the CIFAR / Fashion-MNIST augmentation off; ImageNet always uses random-resized-crop.
    """
    spec = dataset_spec(config.dataset)
    devices = _device_count(local_devices)
    process_index, process_count = _process_layout(process_index, process_count)
    per_device = per_device_batch_size(config.batch_size, devices, process_count)
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
    spec = dataset_spec(config.dataset)
    devices = _device_count(local_devices)
    process_index, process_count = _process_layout(process_index, process_count)
    per_device = per_device_batch_size(config.eval_batch_size, devices, process_count)
    batch = per_device * devices
    tf, tfds = _tf()
    _, start, end = _split_range(config, spec, split)
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
