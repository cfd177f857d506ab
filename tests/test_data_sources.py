"""Datasets beyond the four known ones (training/data/: tfds_by_name, folder_source, factory_source): tfds
datasets the project never names (mocked with tfds.testing.mock_data), a generated folder of PNGs, and a
user's factory pipeline (tests/data_pipelines.py) -- from the spec to batches, and end to end through
pipeline.run."""

from __future__ import annotations

import contextlib
import json
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from soft_prune_jax import pipeline
from soft_prune_jax.training import config_validation, data
from soft_prune_jax.training.data import channel_stats, folder_source

from conftest import tiny_config

USE_CODE = tfds.testing.MockPolicy.USE_CODE  # the wheel has no dataset metadata


def source_config(tmp_path, dataset, **overrides):
    """tiny_config on ``dataset``: the tiny fmnist_cnn, data_dir and workdir-free, all examples."""
    settings = dict(
        dataset=dataset,
        data_dir=str(tmp_path / "tfds"),
        num_train_examples=None,
        batch_size=8,
        eval_batch_size=8,
        num_epochs=1,
        lr_boundaries=(1,),
        benchmark_batch_sizes=(4,),
        benchmark_runs=2,
        log_every_steps=100,
    )
    return tiny_config(**{**settings, **overrides})


def assert_normalised(images, spec):
    low = (0 - np.array(spec.mean)) / np.array(spec.std) - 1e-4
    high = (1 - np.array(spec.mean)) / np.array(spec.std) + 1e-4
    assert images.dtype == np.float32 and np.all(images >= low) and np.all(images <= high)
    assert images.std() > 0.1


def assert_ran_end_to_end(results, workdir):
    """Trained, pruned, fine-tuned, evaluated, benchmarked and reported, as the demo."""
    assert set(results) == set(pipeline.PHASES)
    assert 0 <= results["evaluate"]["compact_accuracy_after_finetune"] <= 1
    assert os.listdir(os.path.join(workdir, "compact"))


# ------------------------------------------------------------------------- tfds datasets by name


@pytest.mark.parametrize(
    "name, overrides, shape, classes, augmentation",
    [
        # 32x32 street-view digits: fixed size, held in memory, pad-crop-flip
        ("svhn_cropped", {}, (32, 32, 3), 10, "pad_crop_flip"),
        # flowers of many sizes: resized, streamed, random-resized-crop as asked
        (
            "oxford_flowers102",
            dict(image_size=24, augmentation="random_resized_crop"),
            (24, 24, 3),
            102,
            "random_resized_crop",
        ),
    ],
)
def test_a_never_named_tfds_dataset_reads_its_facts_from_the_builder(
    tmp_path, name, overrides, shape, classes, augmentation
):
    config = source_config(tmp_path, name, **overrides)
    with tfds.testing.mock_data(num_examples=12, policy=USE_CODE):
        config_validation.validate(config, num_devices=1)
        spec = data.dataset_spec(config)
        train = next(data.train_iterator(config, local_devices=2, seed=0))
        evaluation = list(data.eval_iterator(config, local_devices=2))
    assert (spec.input_shape, spec.num_classes, spec.augmentation) == (shape, classes, augmentation)
    assert data.get_dataset_info(config) == data.DatasetInfo(classes, shape, 12, 12, 0)
    assert train["image"].shape == (2, 4, *shape) and train["label"].shape == (2, 4)
    assert np.all((train["label"] >= 0) & (train["label"] < classes))
    assert_normalised(train["image"], spec)
    assert [float(b["mask"].sum()) for b in evaluation] == [8.0, 4.0]
    # The mean / std were computed once from the train split and cached beside the prepared data.
    (cache,) = [
        os.path.join(d, f)
        for d, _, fs in os.walk(tmp_path / "tfds" / name)
        for f in fs
        if f == channel_stats.STATS_FILE
    ]
    with open(cache) as f:
        assert json.load(f)["train"]["mean"] == list(spec.mean)
    assert all(0.3 < m < 0.7 for m in spec.mean)  # mocked pixels are uniform in [0, 255]


# The four known datasets' published per-channel constants, written again here: changing one is deliberate.
PUBLISHED = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_the_known_datasets_keep_their_published_constants(tmp_path, name, monkeypatch):
    monkeypatch.setattr(channel_stats, "cached", lambda *a: pytest.fail("a known dataset computed its mean / std"))
    spec = data.dataset_spec(source_config(tmp_path, name))
    assert (spec.mean, spec.std) == PUBLISHED[name] and spec.kind == "tfds"
    assert not os.path.exists(tmp_path / "tfds")  # nothing prepared or cached to know them


def test_tfds_slicing_syntax_chooses_the_splits(tmp_path):
    config = source_config(tmp_path, "eurosat", train_split="train[:75%]", test_split="train[75%:]")
    with tfds.testing.mock_data(num_examples=20, policy=USE_CODE):
        spec = data.dataset_spec(config)
    assert spec.train_pieces == (("train", 0, 15),) and spec.test_pieces == (("train", 15, 20),)
    assert (spec.train_size, spec.test_size) == (15, 5)
    # A process's share of a range spanning two pieces is one absolute tfds split.
    assert data.slice_string((("train", 10, 20), ("extra", 0, 5)), 8, 12) == "train[18:20]+extra[0:2]"


def test_a_never_named_tfds_dataset_runs_end_to_end_on_mock_data(tmp_path):
    config = source_config(tmp_path, "svhn_cropped", image_size=12)
    workdir = str(tmp_path / "run")
    with tfds.testing.mock_data(num_examples=32, policy=USE_CODE):
        results = pipeline.run(config, workdir)
    assert_ran_end_to_end(results, workdir)
    assert results["benchmark"]["input_shape"] == [12, 12, 3]


# ------------------------------------------------------------------------- a folder of PNGs


def write_pngs(root, counts: dict, size=(10, 10), mode="L", seed=0):
    """``counts`` images per class folder under ``root``; the class sets the mean brightness."""
    rng = np.random.default_rng(seed)
    for index, (name, count) in enumerate(counts.items()):
        os.makedirs(root / name, exist_ok=True)
        for i in range(count):
            shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
            pixels = np.clip(40 + 80 * index + rng.normal(0, 20, shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory):
    return write_pngs(tmp_path_factory.mktemp("pngs"), {"boot": 20, "coat": 20, "shirt": 20})


def test_a_folder_is_split_by_a_fixed_seed_per_class(tmp_path, png_folder):
    config = source_config(tmp_path, f"folder:{png_folder}", folder_test_fraction=0.25)
    listing = folder_source.folder_listing(config)
    spec = data.dataset_spec(config)
    assert listing["classes"] == ["boot", "coat", "shirt"]
    assert (spec.train_size, spec.test_size, spec.num_classes, spec.input_shape) == (45, 15, 3, (10, 10, 1))
    assert np.bincount([label for _, label in listing["test"]]).tolist() == [5, 5, 5]
    train_files = {f for f, _ in listing["train"]}
    assert train_files.isdisjoint(f for f, _ in listing["test"])
    folder_source._FOLDERS.clear()
    assert folder_source.folder_listing(config) == listing  # the same split every time
    assert spec.augmentation == "pad_crop_flip" and spec.in_memory


def test_a_folders_mean_std_are_its_train_pixels_computed_once_and_a_damaged_cache_is_rebuilt(
    tmp_path, png_folder, monkeypatch
):
    config = source_config(tmp_path, f"folder:{png_folder}", folder_test_fraction=0.25)
    train = [np.asarray(Image.open(f), np.float64) / 255 for f, _ in folder_source.folder_listing(config)["train"]]
    spec = folder_source.folder_spec(config)
    np.testing.assert_allclose(spec.mean + spec.std, (np.mean(train), np.std(train)), rtol=1e-5)
    (cache,) = (tmp_path / "tfds" / "soft_prune_jax_folders").glob("*.json")
    computed = []
    monkeypatch.setattr(channel_stats, "mean_std", lambda ds: computed.append(1) or ([0.5], [0.25], 1))
    assert folder_source.folder_spec(config).mean == spec.mean and not computed  # read, not computed again
    cache.write_text(cache.read_text()[:20])  # a half-written file
    assert folder_source.folder_spec(config).mean == (0.5,) and len(computed) == 1
    assert json.loads(cache.read_text())[str(png_folder)]["mean"] == [0.5]


# A cache entry that is not ``channels`` finite means and positive stds is computed again, never used.
DAMAGED_ENTRIES = {
    "not-json": '{"train": {"mean": [0.4, 0.4',
    "a-list": "[1, 2]",
    "entry-a-string": json.dumps({"train": "0.4"}),
    "too-few-channels": json.dumps({"train": {"mean": [0.4], "std": [0.2]}}),
    "nan-mean": '{"train": {"mean": [NaN, 0.4, 0.4], "std": [0.2, 0.2, 0.2]}}',
    "zero-std": json.dumps({"train": {"mean": [0.4, 0.4, 0.4], "std": [0.2, 0.0, 0.2]}}),
    "std-missing": json.dumps({"train": {"mean": [0.4, 0.4, 0.4]}}),
}


@pytest.mark.parametrize("damage", sorted(DAMAGED_ENTRIES))
def test_a_damaged_mean_std_cache_is_computed_again(tmp_path, damage):
    path = str(tmp_path / channel_stats.STATS_FILE)
    computed = []

    def compute():
        computed.append(1)
        return [0.1, 0.2, 0.3], [0.4, 0.5, 0.6], 7

    (tmp_path / channel_stats.STATS_FILE).write_text(DAMAGED_ENTRIES[damage])
    expected = ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert channel_stats.cached(path, "train", compute, 3) == expected and len(computed) == 1
    assert channel_stats.cached(path, "train", compute, 3) == expected and len(computed) == 1  # now trusted
    assert json.loads((tmp_path / channel_stats.STATS_FILE).read_text())["train"]["examples"] == 7


def test_a_folder_with_train_and_test_folders_keeps_them(tmp_path):
    root = tmp_path / "split"
    write_pngs(root / "train", {"a": 6, "b": 4}, size=(8, 6), mode="RGB")
    write_pngs(root / "test", {"a": 2, "b": 3}, size=(8, 6), mode="RGB")
    config = source_config(tmp_path, f"folder:{root}", eval_batch_size=4)
    spec = data.dataset_spec(config)
    assert (spec.train_size, spec.test_size, spec.input_shape) == (10, 5, (6, 8, 3))
    batches = list(data.eval_iterator(config, local_devices=1))
    labels = np.concatenate([b["label"][b["mask"] == 1] for b in batches])
    assert sorted(labels.tolist()) == [0, 0, 1, 1, 1]
    assert_normalised(np.concatenate([b["image"] for b in batches]), spec)


def test_a_folder_of_many_image_sizes_is_streamed_and_resized(tmp_path):
    root = tmp_path / "sizes"
    write_pngs(root, {"a": 3}, size=(9, 14), mode="RGB")
    write_pngs(root, {"b": 3}, size=(20, 7), mode="RGB", seed=1)
    config = source_config(tmp_path, f"folder:{root}", image_size=6, augmentation="random_resized_crop", batch_size=4)
    spec = data.dataset_spec(config)
    assert spec.raw_shape == (None, None, 3) and not spec.in_memory and spec.input_shape == (6, 6, 3)
    assert next(data.train_iterator(config, local_devices=1, seed=0))["image"].shape == (1, 4, 6, 6, 3)
    (batch,) = data.eval_iterator(config, local_devices=1)
    assert batch["image"].shape == (1, 8, 6, 6, 3) and batch["mask"].sum() == 2


def test_a_folder_of_pngs_runs_end_to_end_under_shard_map_and_resumes(tmp_path, png_folder):
    # The whole pipeline once (the launcher on a folder of Fashion-MNIST PNGs is in the README); here
    # shard_map and a resume: the second run finds training done and goes on from its checkpoint.
    config = source_config(tmp_path, f"folder:{png_folder}", parallel="shard_map", image_size=8, finetune_epochs=0)
    workdir = str(tmp_path / "run")
    first = pipeline.run(config, workdir, "train")
    results = pipeline.run(config, workdir, "train,prune,evaluate")
    assert results["train"]["steps"] == first["train"]["steps"] == 48 // 8
    assert 0 <= results["evaluate"]["compact_accuracy_before_finetune"] <= 1


# ------------------------------------------------------------------------- a user's pipeline


def test_a_factory_pipeline_is_recut_into_the_configured_batches(tmp_path):
    config = source_config(tmp_path, "data_pipelines:tiny", batch_size=16, eval_batch_size=8)
    spec = data.dataset_spec(config)
    assert (spec.kind, spec.input_shape, spec.num_classes, spec.train_size, spec.test_size) == (
        "factory",
        (8, 8, 1),
        4,
        96,
        20,
    )
    batch = next(data.train_iterator(config, local_devices=2, seed=0))
    assert batch["image"].shape == (2, 8, 8, 8, 1) and batch["image"].dtype == np.float32
    masks = [b["mask"].sum() for b in data.eval_iterator(config, local_devices=2)]
    assert masks == [8, 8, 4]


def test_a_factory_pipeline_is_shared_between_processes(tmp_path):
    config = source_config(tmp_path, "data_pipelines:indexed", batch_size=8, eval_batch_size=4)

    def seen(split, index):
        kwargs = dict(local_devices=1, process_index=index, process_count=2)
        if split == "train":
            iterator = data.train_iterator(config, seed=0, **kwargs)
            return [next(iterator)["image"][0, :, 0, 0, 0].tolist() for _ in range(5)]
        return [(b["image"][0, :, 0, 0, 0] * b["mask"][0]).tolist() for b in data.eval_iterator(config, **kwargs)]

    first, second = seen("train", 0), seen("train", 1)
    assert first[0] == [0, 1, 2, 3] and second[0] == [4, 5, 6, 7]
    assert first[4] == [32, 33, 34, 35] and second[4] == [36, 37, 38, 39]
    # The same number of eval batches on each process; the padding rows masked out.
    assert seen("test", 0) == [[0, 1], [4, 5], [8, 9]] and seen("test", 1) == [[2, 3], [6, 7], [10, 0]]


def test_a_factory_pipeline_trains_a_user_model_end_to_end_with_pmap(tmp_path):
    config = source_config(tmp_path, "data_pipelines:tiny", batch_size=16, model="user_zoo:resnet_tiny")
    config.model_kwargs = {}
    workdir = str(tmp_path / "run")
    results = pipeline.run(config, workdir)
    assert_ran_end_to_end(results, workdir)
    assert results["train"]["steps"] == 96 // 16
    assert results["benchmark"]["input_shape"] == [8, 8, 1]


# ------------------------------------------------------------------------- resume, every kind


class KilledAfter:
    """The data package, but the process is killed (KeyboardInterrupt) after ``batches`` train batches."""

    def __init__(self, batches: int):
        self.left = batches

    def get_dataset_info(self, config):
        return data.get_dataset_info(config)

    def eval_iterator(self, config, **kwargs):
        return data.eval_iterator(config, **kwargs)

    def train_iterator(self, config, **kwargs):
        for batch in data.train_iterator(config, **kwargs):
            if not self.left:
                raise KeyboardInterrupt("killed")
            self.left -= 1
            yield batch


USER_MODEL = dict(model="user_zoo:Tiny")  # conv, BN, ReLU, dense: the least to compile
# Each kind with the model kind and parallelism its end-to-end test above does not use.
RESUME_CASES = {
    "tfds-user_model-shard_map": ("svhn_cropped", dict(image_size=8, parallel="shard_map", **USER_MODEL)),
    "folder-user_model-pmap": ("folder:", dict(image_size=8, **USER_MODEL)),
    "factory-builtin-shard_map": ("data_pipelines:tiny", dict(parallel="shard_map", batch_size=16)),
}


@pytest.mark.parametrize("case", sorted(RESUME_CASES))
def test_a_run_killed_after_a_checkpoint_resumes_to_the_uninterrupted_parameters(tmp_path, png_folder, case):
    from soft_prune_jax.training import checkpoint

    dataset, overrides = RESUME_CASES[case]
    dataset += str(png_folder) if dataset == "folder:" else ""
    config = source_config(tmp_path, dataset, num_epochs=2, **overrides)
    if "model" in overrides:
        config.model_kwargs = {}  # as published (update() would merge the tiny fmnist_cnn's widths in)
    mocked = tfds.testing.mock_data(num_examples=32, policy=USE_CODE) if dataset == "svhn_cropped" else None
    with mocked or contextlib.nullcontext():
        steps_per_epoch = data.get_dataset_info(config).num_train // config.batch_size
        pipeline.run(config, str(tmp_path / "whole"), "train")
        with pytest.raises(KeyboardInterrupt):  # in the middle of epoch 2
            pipeline.run(config, str(tmp_path / "killed"), "train", dataset=KilledAfter(steps_per_epoch + 1))
        saved = checkpoint.TrainCheckpointer(checkpoint.checkpoint_dir(str(tmp_path / "killed"), "train"))
        assert saved.all_steps() == [steps_per_epoch]
        pipeline.run(config, str(tmp_path / "killed"), "train")  # the same command again
    whole, resumed = (
        checkpoint.TrainCheckpointer(checkpoint.checkpoint_dir(str(tmp_path / w), "train")).restore_raw()
        for w in ("whole", "killed")
    )
    assert int(resumed["step"]) == int(whole["step"]) == 2 * steps_per_epoch
    for name in ("params", "batch_stats"):
        jax.tree_util.tree_map(np.testing.assert_array_equal, resumed[name], whole[name])


def test_a_workdir_recorded_before_the_data_fields_existed_still_resumes(tmp_path):
    from soft_prune_jax.training import checkpoint

    recorded = tiny_config().to_dict()
    for field in (*data.SOURCE_FIELDS, "folder_test_fraction"):
        del recorded[field]
    (tmp_path / checkpoint.CONFIG_FILE).write_text(json.dumps(recorded))
    checkpoint.ensure_workdir_config(str(tmp_path), tiny_config())  # the new fields at their None default
    with pytest.raises(ValueError, match=r"holds a run of a different config \(image_size: None -> 16\)"):
        checkpoint.ensure_workdir_config(str(tmp_path), tiny_config(image_size=16))
