"""Input pipeline: mocked CIFAR-10 / ImageNet through tfds.testing.mock_data, real Fashion-MNIST offline."""

from __future__ import annotations

import re
import subprocess
import sys
import types

import ml_collections
import numpy as np
import pytest
import tensorflow as tf  # the [data] extra, installed with [test]
import tensorflow_datasets as tfds
from hypothesis import given, settings
from hypothesis import strategies as st

from configs import default
from soft_prune_jax.training import config_validation, data
from soft_prune_jax.training.data import tfds_builders

USE_CODE = tfds.testing.MockPolicy.USE_CODE  # the wheel has no dataset metadata


def make_config(tmp_path, **overrides):
    """The shared schema (configs/default.py) with small counts for mocked data."""
    config = default.get_config()
    config.update(
        dict(
            data_dir=str(tmp_path / "tfds"),
            batch_size=8,
            eval_batch_size=6,
            num_train_examples=24,
            num_eval_examples=13,
        )
    )
    config.update(overrides)
    return config


def channel_bounds(spec):
    """Normalised images must lie in [(0 - mean) / std, (1 - mean) / std] per channel."""
    mean, std = np.array(spec.mean), np.array(spec.std)
    return (0 - mean) / std - 1e-5, (1 - mean) / std + 1e-5


def assert_normalised(images, spec):
    low, high = channel_bounds(spec)
    assert images.dtype == np.float32
    assert np.all(images >= low) and np.all(images <= high)
    assert images.std() > 0.1  # not all one value


# ------------------------------------------------------------------------- index-coded fake data
# tfds's mock ignores split slices, so the slicing tests read a fake dataset that honours them:
# example i has label i % 10 and encodes i in pixel (0, 0) as base-256 digits over the 3 channels.


def sliced_fake_dataset(self, split, decoders=None, read_config=None, shuffle_files=False, **kwargs):
    match = re.fullmatch(r"(\w+)\[(\d+):(\d+)\]", str(split))
    assert match, f"the pipeline must ask for absolute slices, got {split!r}"
    start, stop = int(match.group(2)), int(match.group(3))

    def example(i):
        digits = tf.cast(tf.stack([i % 256, (i // 256) % 256, i // 65536]), tf.uint8)
        image = tf.pad(tf.reshape(digits, (1, 1, 3)), [[0, 31], [0, 31], [0, 0]])
        return {"image": image, "label": i % 10}

    return tf.data.Dataset.range(start, stop).map(example)


def decode_indices(images, spec):
    """Inverse of sliced_fake_dataset's encoding, after normalisation."""
    pixel = images[..., 0, 0, :] * np.array(spec.std) + np.array(spec.mean)
    digits = np.rint(pixel * 255).astype(np.int64)
    return digits[..., 0] + 256 * digits[..., 1] + 65536 * digits[..., 2]


def eval_indices(config, **kwargs):
    spec = data.DATASETS[config.dataset]
    found = []
    for batch in data.eval_iterator(config, local_devices=1, **kwargs):
        real = batch["mask"].reshape(-1) == 1
        found.append(decode_indices(batch["image"].reshape(-1, 32, 32, 3), spec)[real])
    return np.concatenate(found)


# ------------------------------------------------------------------------- CIFAR-10 (mocked)


def test_cifar10_train_batches_have_device_layout_and_normalised_values(tmp_path):
    config = make_config(tmp_path)
    with tfds.testing.mock_data(num_examples=24, policy=USE_CODE):
        batch = next(data.train_iterator(config, local_devices=2, seed=0))
    assert batch["image"].shape == (2, 4, 32, 32, 3)
    assert batch["label"].shape == (2, 4) and batch["label"].dtype == np.int32
    assert np.all((batch["label"] >= 0) & (batch["label"] < 10))
    assert_normalised(batch["image"], data.DATASETS["cifar10"])


def test_train_iterator_is_deterministic_given_seed(tmp_path):
    config = make_config(tmp_path)

    def first_batches(seed, count=4):
        iterator = data.train_iterator(config, local_devices=1, seed=seed)
        return [next(iterator)["image"] for _ in range(count)]

    with tfds.testing.mock_data(num_examples=24, policy=USE_CODE):
        first, again, other = first_batches(0), first_batches(0), first_batches(1)
    np.testing.assert_array_equal(np.stack(first), np.stack(again))
    assert not np.array_equal(np.stack(first), np.stack(other))


def test_eval_batches_match_the_normalisation_formula(tmp_path):
    config = make_config(tmp_path)
    spec = data.DATASETS["cifar10"]
    with tfds.testing.mock_data(num_examples=13, policy=USE_CODE):
        raw = np.stack([ex["image"] for ex in tfds.as_numpy(tfds.load("cifar10", split="test"))])
        batches = list(data.eval_iterator(config, local_devices=1))
    images = np.concatenate([b["image"][0] for b in batches])[:13]
    expected = (raw / 255.0 - np.array(spec.mean)) / np.array(spec.std)
    np.testing.assert_allclose(images, expected, atol=1e-5)


def test_last_eval_batch_is_padded_and_masked(tmp_path):
    config = make_config(tmp_path, num_eval_examples=13, eval_batch_size=6)
    with tfds.testing.mock_data(num_examples=13, policy=USE_CODE):
        batches = list(data.eval_iterator(config, local_devices=2))
    assert [b["image"].shape for b in batches] == [(2, 3, 32, 32, 3)] * 3
    assert [float(b["mask"].sum()) for b in batches] == [6.0, 6.0, 1.0]
    last_mask = batches[-1]["mask"].reshape(-1)
    np.testing.assert_array_equal(last_mask, [1, 0, 0, 0, 0, 0])
    padding = batches[-1]["image"].reshape(6, -1)[1:]
    assert not padding.any() and not batches[-1]["label"].reshape(-1)[1:].any()


def test_augmentation_crops_and_flips_only_train_images(tmp_path):
    with tfds.testing.mock_data(num_examples=8, policy=USE_CODE):

        def first_batch(augment):
            config = make_config(tmp_path, augment=augment, num_train_examples=8)
            return next(data.train_iterator(config, local_devices=1, seed=0))

        plain, augmented = first_batch(False), first_batch(True)
        evaluated = np.concatenate(
            [
                b["image"][0]
                for b in data.eval_iterator(
                    make_config(tmp_path, num_eval_examples=8, eval_batch_size=8), local_devices=1
                )
            ]
        )
    # Without augmentation the train images are the evaluation images, only shuffled.
    key = lambda images: sorted(image.tobytes() for image in images)  # noqa: E731
    assert key(plain["image"][0]) == key(evaluated)
    assert key(augmented["image"][0]) != key(evaluated)


# ------------------------------------------------------------------------- slicing and sharding


def test_processes_read_disjoint_slices_and_yield_the_same_number_of_batches(tmp_path):
    config = make_config(tmp_path, num_eval_examples=11, eval_batch_size=4)
    with tfds.testing.mock_data(policy=USE_CODE, as_dataset_fn=sliced_fake_dataset):
        shares = [eval_indices(config, process_index=i, process_count=2) for i in range(2)]
        counts = [
            len(list(data.eval_iterator(config, local_devices=1, process_index=i, process_count=2))) for i in range(2)
        ]
    assert set(shares[0]).isdisjoint(shares[1])
    assert sorted(np.concatenate(shares)) == list(range(11))
    assert counts[0] == counts[1] == 3  # 6 and 5 examples, 2 per process batch


def test_train_shards_stay_within_their_process_range(tmp_path):
    config = make_config(tmp_path, num_train_examples=20, batch_size=4, augment=False)
    spec = data.DATASETS["cifar10"]
    seen = []
    with tfds.testing.mock_data(policy=USE_CODE, as_dataset_fn=sliced_fake_dataset):
        for index in range(2):
            iterator = data.train_iterator(config, local_devices=1, seed=0, process_index=index, process_count=2)
            images = np.concatenate([next(iterator)["image"].reshape(-1, 32, 32, 3) for _ in range(10)])
            seen.append(set(decode_indices(images, spec).tolist()))
    assert seen == [set(range(10)), set(range(10, 20))]


def test_validation_split_is_carved_from_the_end_of_train(tmp_path):
    config = make_config(tmp_path, validation_examples=5, num_eval_examples=None, eval_batch_size=4)
    with tfds.testing.mock_data(policy=USE_CODE, as_dataset_fn=sliced_fake_dataset):
        validation = eval_indices(config, split="validation")
    assert sorted(validation) == list(range(49_995, 50_000))
    info = data.get_dataset_info(make_config(tmp_path, validation_examples=5, num_train_examples=None))
    assert (info.num_train, info.num_validation, info.num_test) == (49_995, 5, 13)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 64))
def test_process_slices_partition_the_examples(num_examples, process_count):
    slices = [data.process_slice(num_examples, i, process_count) for i in range(process_count)]
    assert slices[0][0] == 0 and slices[-1][1] == num_examples
    assert all(a[1] == b[0] for a, b in zip(slices, slices[1:]))  # contiguous, no overlap
    sizes = [end - start for start, end in slices]
    assert max(sizes) - min(sizes) <= 1


def test_batch_is_split_over_processes_then_devices():
    assert data.per_device_batch_size(256, 4, 2) == 32
    with pytest.raises(ValueError, match="64 .* not divisible by the local device count 3"):
        data.per_device_batch_size(64, 3, 1)
    with pytest.raises(ValueError, match="batch size 10 is not divisible by the process count 4"):
        data.per_device_batch_size(10, 1, 4)


# ------------------------------------------------------------------------- ImageNet (mocked)


def imagenet_config(tmp_path, **overrides):
    manual_dir = tmp_path / "manual"
    manual_dir.mkdir(exist_ok=True)
    for name in data.IMAGENET_MANUAL_FILES:
        (manual_dir / name).touch()
    return make_config(
        tmp_path,
        dataset="imagenet2012",
        num_classes=1000,
        manual_dir=str(manual_dir),
        batch_size=4,
        eval_batch_size=4,
        num_train_examples=4,
        num_eval_examples=3,
        **overrides,
    )


def test_imagenet_train_and_eval_crops(tmp_path):
    config = imagenet_config(tmp_path)
    spec = data.DATASETS["imagenet2012"]
    with tfds.testing.mock_data(num_examples=4, policy=USE_CODE):
        train = next(data.train_iterator(config, local_devices=2, seed=0))
        evaluation = list(data.eval_iterator(config, local_devices=2))
    assert train["image"].shape == (2, 2, 224, 224, 3) and train["label"].shape == (2, 2)
    assert_normalised(train["image"], spec)
    assert np.all((train["label"] >= 0) & (train["label"] < 1000))
    assert len(evaluation) == 1 and evaluation[0]["image"].shape == (2, 2, 224, 224, 3)
    np.testing.assert_array_equal(evaluation[0]["mask"].reshape(-1), [1, 1, 1, 0])
    assert_normalised(evaluation[0]["image"][:1], spec)


@pytest.mark.parametrize(
    "manual_dir, message",
    [
        (None, "config.manual_dir is not set"),
        ("missing", "is missing or empty"),
        ("empty", "is missing or empty"),
        ("no_tars", "lacks ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar"),
    ],
)
def test_imagenet_without_manual_files_fails_before_reading(tmp_path, manual_dir, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "no_tars").mkdir()
    (tmp_path / "no_tars" / "readme.txt").touch()
    path = None if manual_dir is None else str(tmp_path / manual_dir)
    config = make_config(tmp_path, dataset="imagenet2012", num_classes=1000, manual_dir=path)
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        config_validation.validate(config, num_devices=1)
    if path is not None:
        assert path in str(error.value)


# ------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(dataset="cifar11"), "config.dataset='cifar11' is unknown: did you mean cifar10"),
        (dict(num_classes=100), "config.num_classes=100 does not match dataset 'cifar10': expected 10"),
        (dict(batch_size=0), "config.batch_size=0 is invalid"),
        (dict(validation_examples=50_000), "config.validation_examples=50000 is invalid"),
        (dict(num_train_examples=49_999, validation_examples=10), "config.num_train_examples=49999 is invalid"),
        (dict(num_eval_examples=10_001), "config.num_eval_examples=10001 is invalid"),
    ],
)
def test_bad_config_values_are_named(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        config_validation.validate(make_config(tmp_path, **overrides), num_devices=1)


def test_prepared_data_of_another_size_is_refused():
    on_disk = types.SimpleNamespace(
        info=types.SimpleNamespace(
            splits={
                "train": types.SimpleNamespace(num_examples=49_000),
                "test": types.SimpleNamespace(num_examples=10_000),
            }
        )
    )
    with pytest.raises(ValueError, match="split 'train' has 49000 examples on disk: expected 50000"):
        tfds_builders._check_split_sizes(on_disk, data.DATASETS["cifar10"])


def test_non_bool_augment_is_named(tmp_path):
    # ConfigDict keeps field types, so a wrong type can only come from a config built by hand.
    config = ml_collections.ConfigDict({**make_config(tmp_path).to_dict(), "augment": "yes"})
    with pytest.raises(ValueError, match="config.augment='yes' is invalid: expected True or False"):
        config_validation.validate(config, num_devices=1)


def test_bad_iterator_arguments_are_named(tmp_path):
    config = make_config(tmp_path)
    with pytest.raises(ValueError, match="split='val' is unknown"):
        data.eval_iterator(config, local_devices=1, split="val")
    with pytest.raises(ValueError, match="validation_examples > 0"):
        data.eval_iterator(config, local_devices=1, split="validation")
    with pytest.raises(ValueError, match="per-process batch size 8 .* local device count 3"):
        data.train_iterator(config, local_devices=3, seed=0)
    with pytest.raises(ValueError, match="prefetch size=0 is invalid"):
        data.prefetch_to_device(iter([]), 0)


def test_prefetch_to_device_keeps_order_and_values():
    import jax

    devices = jax.local_devices()
    batches = [{"x": np.full((len(devices), 2), i, np.float32)} for i in range(3)]
    fetched = list(data.prefetch_to_device(iter(batches), 2, devices))
    assert len(fetched) == 3 and all(isinstance(b["x"], jax.Array) for b in fetched)
    for batch, got in zip(batches, fetched):
        np.testing.assert_array_equal(np.asarray(got["x"]), batch["x"])


def test_dataset_info_needs_no_tensorflow_and_honours_overrides(tmp_path):
    # Without TensorFlow (as on the GPU image) the module imports and answers get_dataset_info.
    script = (
        "import sys; sys.modules['tensorflow'] = sys.modules['tensorflow_datasets'] = None\n"
        "import ml_collections\nfrom soft_prune_jax.training import data\n"
        "config = ml_collections.ConfigDict(dict(dataset='fashion_mnist', num_classes=10, batch_size=8,"
        " eval_batch_size=8, validation_examples=0))\n"
        "print(data.get_dataset_info(config).num_train)"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["60000"]
    info = data.get_dataset_info(make_config(tmp_path, num_train_examples=None, num_eval_examples=None))
    assert info == data.DatasetInfo(10, (32, 32, 3), 50_000, 10_000, 0)
    assert data.get_dataset_info(make_config(tmp_path)).num_train == 24


# ------------------------------------------------------------------------- real Fashion-MNIST


@pytest.fixture(scope="module")
def fashion_mnist_config(tmp_path_factory):
    """Real Fashion-MNIST prepared into a fresh data_dir (15-40 s, once for the module): offline from
    the Debian package dataset-fashion-mnist when installed, else tfds downloads it."""
    tmp_path = tmp_path_factory.mktemp("fashion_mnist")
    config = make_config(
        tmp_path,
        dataset="fashion_mnist",
        num_train_examples=None,
        num_eval_examples=None,
        batch_size=128,
        eval_batch_size=2000,
    )
    builder = data.prepare_dataset(config)
    return config, builder


@pytest.mark.slow
@pytest.mark.drift
def test_fashion_mnist_is_prepared_offline_with_the_real_counts(fashion_mnist_config):
    config, builder = fashion_mnist_config
    assert builder.info.splits["train"].num_examples == 60_000
    assert builder.info.splits["test"].num_examples == 10_000
    assert data.get_dataset_info(config) == data.DatasetInfo(10, (28, 28, 1), 60_000, 10_000, 0)
    # A 1,024-image train range keeps the shuffle buffer (the whole range) quick to fill.
    small = config.copy_and_resolve_references()
    small.num_train_examples = 1024
    batch = next(data.train_iterator(small, local_devices=1, seed=0))
    assert batch["image"].shape == (1, 128, 28, 28, 1) and batch["image"].dtype == np.float32
    assert np.all((batch["label"] >= 0) & (batch["label"] < 10))
    labels = np.concatenate([b["label"][b["mask"] == 1] for b in data.eval_iterator(config, local_devices=1)])
    # The Fashion-MNIST test set has exactly 1,000 images of each of its 10 classes.
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), [1000] * 10)


@pytest.mark.slow
def test_fashion_mnist_normalisation_constants_fit_the_real_train_set(fashion_mnist_config):
    config, _ = fashion_mnist_config
    # The first 10,000 train images: their statistics are within ~1e-3 of the whole set's.
    config = config.copy_and_resolve_references()
    config.num_train_examples = config.eval_batch_size = 10_000
    batches = list(data.eval_iterator(config, local_devices=1, split="train"))
    assert len(batches) == 1 and batches[0]["mask"].all()
    images = batches[0]["image"]
    assert abs(images.mean()) < 5e-3 and abs(images.std() - 1) < 5e-3
