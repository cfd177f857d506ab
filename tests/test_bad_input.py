"""Bad input, table-driven: every config field, damaged checkpoints and compact artifacts, wrong inputs
to a reloaded compact model, unusable data directories. Each is one line naming the problem, and
nothing on disk changes."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import default
from soft_prune_jax import pipeline
from soft_prune_jax.compact import artifact
from soft_prune_jax.pipeline import model_path, workdir
from soft_prune_jax.training import checkpoint as ckpt_lib
from soft_prune_jax.training import config_validation
from soft_prune_jax.training.loop import fit

from conftest import SyntheticData, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = SyntheticData().shape


def training_phase(config):
    """The train phase of the traced path (the tiny fmnist_cnn behind its SCP masks)."""
    return model_path.training_phase(config, SHAPE)


def _snapshot(root) -> dict:
    """{path: (size, mtime_ns, sha256)} of every file under ``root`` (or of ``root`` itself)."""
    paths = [root] if os.path.isfile(root) else [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
    out = {}
    for path in paths:
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        st = os.stat(path)
        out[path] = (st.st_size, st.st_mtime_ns, digest)
    return out


def _one_line(error: BaseException) -> str:
    message = str(error)
    assert message and "\n" not in message, repr(message)
    return message


# ---------------------------------------------------------------------------------------------
# Configs: every field of the shared schema, a bad type and/or a bad range.
# ---------------------------------------------------------------------------------------------

NAN, INF = float("nan"), float("inf")
# One line per field, its bad values side by side (kept so by the formatter).
# fmt: off
BAD_FIELDS = [
    ("model", 3), ("model", "resnet57"),
    ("model_kwargs", 3), ("model_kwargs", {"depth": 3}),
    ("model_call", "not"), ("model_call", 3),
    ("dataset", None), ("dataset", "cifar11"), ("dataset", "coco"), ("dataset", "folder:/nonexistent"),
    ("dataset", "tests.no_such_module:pipeline"),
    ("train_split", 3), ("train_split", "train[:50%]"), ("test_split", ""), ("test_split", "test[:10]"),
    ("image_size", 0), ("image_size", 64), ("augmentation", "mixup"), ("augmentation", "pad_crop_flip"),
    ("folder_test_fraction", 1.5), ("folder_test_fraction", "x"),
    ("num_classes", "10"), ("num_classes", 100),
    ("data_dir", 5), ("manual_dir", 7), ("augment", "yes"), ("augment", 1),
    ("batch_size", "16"), ("batch_size", 16.0), ("batch_size", True), ("batch_size", -16),
    ("eval_batch_size", 2.5), ("eval_batch_size", 0),
    ("num_epochs", "2"), ("num_epochs", 0),
    ("learning_rate", "0.1"), ("learning_rate", -0.1), ("learning_rate", NAN), ("learning_rate", INF),
    ("lr_boundaries", ("a",)), ("lr_boundaries", (0,)), ("lr_boundaries", (2, 1)),
    ("lr_decay", "x"), ("lr_decay", 0.0), ("lr_decay", 1.5),
    ("momentum", None), ("momentum", 1.0), ("momentum", -0.1),
    ("nesterov", "yes"), ("nesterov", 1),
    ("weight_decay", "1e-4"), ("weight_decay", -1e-4),
    ("method", None), ("method", "SCP"),
    ("mask.eps", "a"), ("mask.eps", -0.1), ("mask.delta", 0.0), ("mask.k", -1.0), ("mask.tau", NAN),
    ("sparsity_lambda", "1e-4"), ("sparsity_lambda", INF), ("sparsity_s", None), ("sparsity_s", -2.0),
    ("slimming.l1", "0"), ("slimming.l1", -1.0), ("slimming.scale_init", 0.0), ("slimming.scale_init", "0.5"),
    ("slimming.target_channel_ratio", 1.5),
    ("target_macs_ratio", 1.0), ("target_macs_ratio", "half"),  # optional field
    ("target_latency_ratio", 0.0), ("target_latency_ratio", 1.5), ("target_latency_ratio", "half"),  # optional
    ("target_latency_ms", -1.0), ("target_latency_ms", INF), ("target_latency_ms", "10ms"),  # optional field
    ("cost_aware_penalty", "yes"),
    ("budget_controller.kp", -1.0), ("budget_controller.ki", "0.05"), ("budget_controller.ramp_fraction", 1.5),
    ("budget_controller.undershoot_boost", 0.5), ("budget_controller.lambda_min", 0.0),
    ("budget_controller.lambda_max", 1e-9), ("budget_controller.early_q", 1.0), ("budget_controller.aim_above", 1.0),
    ("slimming.target_macs_ratio", 0.0), ("slimming.target_macs_ratio", "half"),  # optional field
    ("finetune_epochs", 1.5), ("finetune_epochs", -1),
    ("finetune_learning_rate", "0.01"), ("finetune_learning_rate", 0.0),
    ("round_to", 2.0), ("round_to", -8),
    ("parallel", None), ("parallel", "pjit"),
    ("cpu_devices", "two"), ("cpu_devices", 0), ("cpu_devices", True), ("cpu_devices", 2.0),
    ("checkpoint_every_epochs", 1.0), ("checkpoint_every_epochs", 0),
    ("keep_checkpoints", "3"), ("keep_checkpoints", 0),
    ("log_every_steps", None), ("log_every_steps", 0),
    ("seed", 1.5), ("seed", -1),
    ("num_train_examples", "64"), ("num_train_examples", 0), ("num_train_examples", 10**6),
    ("num_eval_examples", 1.0), ("num_eval_examples", 10**6),
    ("validation_examples", None), ("validation_examples", 60_000),
    ("benchmark_batch_sizes", (8.0,)), ("benchmark_batch_sizes", (0,)),
    ("benchmark_runs", "50"), ("benchmark_runs", 0),
    ("distributed.coordinator_address", 1234), ("distributed.coordinator_address", "localhost"),
    ("distributed.num_processes", "2"), ("distributed.num_processes", 0),
    ("distributed.process_id", -1), ("distributed.process_id", 2),
]
# fmt: on


def _with(field: str, value) -> ml_collections.ConfigDict:
    """tiny_config with one field replaced, built from a dict so that the value's type is kept as is
    (as a config file that builds its own ConfigDict would); distributed.process_id=2 comes with 2 processes."""
    raw = tiny_config().to_dict()
    if field == "distributed.process_id":
        raw["distributed"]["num_processes"] = 2
    *parents, leaf = field.split(".")
    node = raw
    for p in parents:
        node = node[p]
    node[leaf] = value
    return ml_collections.ConfigDict(raw)


def _leaves(config, prefix=""):
    """The dotted names of every field (model_kwargs is one field: a dict of constructor arguments)."""
    names = set()
    for key in config:
        if isinstance(config[key], ml_collections.ConfigDict) and key != "model_kwargs":
            names |= _leaves(config[key], f"{prefix}{key}.")
        else:
            names.add(prefix + key)
    return names


def test_the_table_covers_every_field_of_the_schema():
    assert {f for f, _ in BAD_FIELDS} == _leaves(default.get_config())


@pytest.mark.parametrize("field,value", BAD_FIELDS, ids=[f"{f}={v!r}" for f, v in BAD_FIELDS])
def test_bad_config_field_is_one_line_naming_field_and_value(field, value):
    with pytest.raises(ValueError) as info:
        config_validation.validate(_with(field, value), num_devices=1)
    message = _one_line(info.value)
    leaf = field.split(".")[-1]
    assert leaf in message and repr(value) in message, message
    assert "expected" in message or "unknown" in message, message


def test_type_locked_config_refuses_a_bad_type_on_assignment():
    config = tiny_config()  # ConfigDicts are type-safe: the override fails at once, naming the field
    with pytest.raises(TypeError, match="batch_size") as info:
        config.batch_size = "sixteen"
    _one_line(info.value)


def test_bad_config_through_the_launcher_is_one_line_and_creates_nothing(tmp_path):
    workdir = tmp_path / "never_created"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "launch", "train.py"),
            f"--config={os.path.join(REPO, 'configs', 'fashion_mnist.py')}",
            "--config.batch_size=-3",
            f"--workdir={workdir}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "error: config.batch_size=-3 is invalid: expected an int >= 1", proc.stderr[-2000:]
    assert not workdir.exists()


# ---------------------------------------------------------------------------------------------
# Training checkpoints: truncated, damaged, of another model.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
    """A workdir after one epoch (checkpoint 16) of the tiny model; tests copy it before damaging."""
    workdir = str(tmp_path_factory.mktemp("trained"))
    config = tiny_config(num_epochs=1)
    ckpt_lib.ensure_workdir_config(workdir, config)
    fit(config, workdir, training_phase(config), dataset=SyntheticData())
    return workdir


def _largest_file(directory: str) -> str:
    files = [p for p in glob.glob(os.path.join(directory, "**", "*"), recursive=True) if os.path.isfile(p)]
    return max(files, key=os.path.getsize)


def _truncate(path: str):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 3)


DAMAGES = {
    "truncated-array-file": lambda step_dir: _truncate(_largest_file(step_dir)),
    "deleted-array-files": lambda step_dir: shutil.rmtree(os.path.join(step_dir, "default")),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_latest_checkpoint_is_one_line_and_left_untouched(trained_workdir, tmp_path, damage):
    workdir = str(tmp_path / "run")
    shutil.copytree(trained_workdir, workdir)
    step_dir = os.path.join(ckpt_lib.checkpoint_dir(workdir, "train"), "16")
    DAMAGES[damage](step_dir)
    before = _snapshot(workdir)
    config = tiny_config(num_epochs=2)
    data = SyntheticData()
    with pytest.raises(ValueError) as info:
        fit(config, workdir, training_phase(config), dataset=data)
    message = _one_line(info.value)
    assert message.startswith(f"checkpoint 16 in {ckpt_lib.checkpoint_dir(workdir, 'train')} cannot be read (")
    assert "left untouched" in message
    assert data.served == 0
    assert {p: v for p, v in _snapshot(workdir).items() if "tensorboard" not in p} == {
        p: v for p, v in before.items() if "tensorboard" not in p
    }


def test_checkpoint_of_another_model_is_refused_naming_the_first_difference(trained_workdir, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(trained_workdir, workdir)
    before = _snapshot(workdir)
    wider = tiny_config(num_epochs=2, model_kwargs={"widths": (6, "M", 8)})
    # Through the pipeline the recorded config already refuses it...
    with pytest.raises(ValueError, match=r"holds a run of a different config \(model_kwargs: ") as info:
        pipeline.run(wider, workdir, "train", dataset=SyntheticData())
    _one_line(info.value)
    # ...and the trainer itself refuses the checkpoint's shapes (orbax alone would return them as stored).
    with pytest.raises(ValueError) as info:
        fit(wider, workdir, training_phase(wider), dataset=SyntheticData())
    message = _one_line(info.value)
    assert "checkpoint 16 in" in message and "does not fit this model" in message
    assert "(4,) in the checkpoint, (6,) in the model" in message
    assert {p: v for p, v in _snapshot(workdir).items() if "tensorboard" not in p} == {
        p: v for p, v in before.items() if "tensorboard" not in p
    }


# ---------------------------------------------------------------------------------------------
# Compact artifacts (a workdir's compact/): damaged, edited or of the old format; never overwritten.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compact_export(tmp_path_factory):
    """A workdir's compact/ artifact: the traced cut of the fresh tiny model (dense: nothing cut)."""
    config = tiny_config(method="dense")
    dense = model_path.dense_model(config, SHAPE)
    variables = dense.init(jax.random.PRNGKey(0), jnp.zeros((1,) + SHAPE))
    compact, compact_vars = model_path.cut(config, variables, SHAPE)
    run = tmp_path_factory.mktemp("export")
    directory = str(run / workdir.COMPACT_DIR)
    artifact.save(directory, compact, compact_vars, jax.ShapeDtypeStruct((1,) + SHAPE, jnp.float32))
    return directory, lambda x: dense.apply(variables, x, train=False), (compact, compact_vars)


def _edit_spec(directory, edit):
    path = os.path.join(directory, artifact.SPEC_FILE)
    with open(path) as f:
        spec = json.load(f)
    edit(spec)
    with open(path, "w") as f:
        json.dump(spec, f)


def _flip_bytes(path):
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        middle = len(data) // 2
        data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
        f.seek(0)
        f.write(data)


def _old_format(directory):
    """compact/ as the rebuilt-class export wrote it: model.json naming a class, no "format", orbax arrays."""
    shutil.rmtree(directory)
    os.makedirs(os.path.join(directory, "arrays"))
    with open(os.path.join(directory, artifact.SPEC_FILE), "w") as f:
        json.dump({"class": "VGG", "kwargs": {"widths": [4, "M", 8], "num_classes": 10}}, f)


EXPORT_DAMAGES = {
    "spec-missing": (lambda d: os.remove(os.path.join(d, artifact.SPEC_FILE)), "cannot be read"),
    "spec-not-json": (lambda d: open(os.path.join(d, artifact.SPEC_FILE), "w").write("{not json"), "cannot be read"),
    "spec-other-format": (lambda d: _edit_spec(d, lambda s: s.update(format="other/9")), "has format 'other/9'"),
    "spec-old-format": (_old_format, "holds a compact model in the old format (a rebuilt VGG class"),
    "spec-shapes-edited": (
        lambda d: _edit_spec(d, lambda s: s["shapes"].update({k: [5] for k in s["shapes"] if k.endswith("bias")})),
        "the arrays' shapes do not match model.json",
    ),
    "function-truncated": (lambda d: _truncate(os.path.join(d, artifact.FUNCTION_FILE)), "is missing or damaged"),
    "arrays-flipped": (lambda d: _flip_bytes(os.path.join(d, artifact.ARRAYS_FILE)), "is missing or damaged"),
    "arrays-deleted": (lambda d: os.remove(os.path.join(d, artifact.ARRAYS_FILE)), "is missing or damaged"),
}


@pytest.mark.parametrize("damage", sorted(EXPORT_DAMAGES))
def test_damaged_export_is_one_line_and_left_untouched(compact_export, tmp_path, damage):
    """The workdir's final compact model (``workdir.final_compact``: compact/ without a finetuned/)."""
    source = compact_export[0]
    run = str(tmp_path / "run")
    directory = os.path.join(run, workdir.COMPACT_DIR)
    shutil.copytree(source, directory)
    apply, expected = EXPORT_DAMAGES[damage]
    apply(directory)
    before = _snapshot(directory)
    with pytest.raises(artifact.ExportError) as info:
        workdir.final_compact(run)
    message = _one_line(info.value)
    assert expected in message, message
    assert directory in message, message
    assert _snapshot(directory) == before


def test_export_never_overwrites_an_existing_directory(compact_export, tmp_path):
    compact, compact_vars = compact_export[2]
    directory = tmp_path / "taken"
    directory.mkdir()
    (directory / "precious.txt").write_text("keep me")
    before = _snapshot(str(directory))
    sample = jax.ShapeDtypeStruct((1,) + SHAPE, jnp.float32)
    with pytest.raises(artifact.ExportError, match="exists: pass overwrite=True") as info:
        artifact.save(str(directory), compact, compact_vars, sample)
    _one_line(info.value)
    assert _snapshot(str(directory)) == before
    assert sorted(os.listdir(tmp_path)) == ["taken"]  # no staging directory left behind


# ---------------------------------------------------------------------------------------------
# Inputs to a reloaded compact model: the artifact checks their shape (ExportedModel.apply).
# ---------------------------------------------------------------------------------------------

BAD_INPUTS = [
    ("unbatched", np.zeros((8, 8, 1), np.float32), r"input shape \(8, 8, 1\) is invalid: the artifact takes"),
    ("five-axes", np.zeros((1, 2, 8, 8, 1), np.float32), r"input shape \(1, 2, 8, 8, 1\) is invalid"),
    ("channels-first", np.zeros((2, 1, 8, 8), np.float32), r"input shape \(2, 1, 8, 8\) is invalid"),
    ("rgb", np.zeros((2, 8, 8, 3), np.float32), r"input shape \(2, 8, 8, 3\) is invalid"),
    ("other-size", np.zeros((2, 12, 12, 1), np.float32), r"the artifact takes \(batch, 8, 8, 1\)"),
    ("a-list", [[1.0]], r"input shape \(1, 1\) is invalid"),
]


@pytest.mark.parametrize("name,x,message", BAD_INPUTS, ids=[n for n, _, _ in BAD_INPUTS])
def test_bad_input_to_a_compact_model_is_one_clear_line(compact_export, name, x, message):
    model, variables = workdir.load_model_dir(compact_export[0])
    with pytest.raises(ValueError, match=message) as info:
        model.apply(variables, x)
    _one_line(info.value)


def test_reloaded_compact_model_runs_good_inputs(compact_export):
    """Any batch size, other float dtypes cast to the artifact's: the dense model's logits."""
    source, dense_apply, _ = compact_export
    model, variables = workdir.load_model_dir(source)
    x = np.random.default_rng(0).normal(size=(3,) + SHAPE).astype(np.float32)
    np.testing.assert_allclose(model.apply(variables, x), dense_apply(x), rtol=1e-5, atol=1e-5)
    assert model.apply(variables, jnp.asarray(x[:1], jnp.bfloat16)).shape == (1, 10)


# ---------------------------------------------------------------------------------------------
# Data directories.
# ---------------------------------------------------------------------------------------------


def _fashion_mnist_prepared() -> str:
    """The version directory of Fashion-MNIST in the default data_dir (prepared offline once if needed)."""
    from soft_prune_jax.training import data

    return data.prepare_dataset(tiny_config(num_train_examples=16)).data_dir


@pytest.mark.parametrize("damage", ["data_dir-is-a-file", "metadata-damaged", "records-truncated"])
def test_unusable_data_dir_is_one_line_naming_it(tmp_path, damage):
    from soft_prune_jax.training import data

    data_dir = str(tmp_path / "tfds")
    if damage == "data_dir-is-a-file":
        with open(data_dir, "w") as f:
            f.write("not a directory")
    else:
        prepared = _fashion_mnist_prepared()  # .../fashion_mnist/<version>
        shutil.copytree(prepared, os.path.join(data_dir, "fashion_mnist", os.path.basename(prepared)))
        if damage == "metadata-damaged":
            path = glob.glob(os.path.join(data_dir, "fashion_mnist", "*", "dataset_info.json"))[0]
            with open(path, "r+") as f:
                f.truncate(os.path.getsize(path) // 2)
        else:
            with open(glob.glob(os.path.join(data_dir, "fashion_mnist", "*", "*train.tfrecord*"))[0], "r+b") as f:
                f.truncate(1000)  # inside the first few records: even a 16-example read hits the cut
    before = _snapshot(data_dir)
    config = tiny_config(num_train_examples=16, data_dir=data_dir)
    with pytest.raises(ValueError) as info:
        next(data.train_iterator(config, local_devices=1, seed=0))
    message = _one_line(info.value)
    assert message.startswith(f"fashion_mnist in data_dir={data_dir!r} cannot be prepared or read ("), message
    after = _snapshot(data_dir)  # the preparation lock file may be new; nothing that existed changed
    assert {p: after.get(p) for p in before} == before


def test_empty_or_incomplete_imagenet_manual_dir_is_one_line(tmp_path):
    (tmp_path / "manual").mkdir()
    config = tiny_config(
        model="resnet18",
        dataset="imagenet2012",
        num_classes=1000,
        data_dir=str(tmp_path / "tfds"),
        manual_dir=str(tmp_path / "manual"),
    )
    config.model_kwargs = {}  # resnet18 as published
    with pytest.raises(ValueError, match=r"config.manual_dir='.*manual' is missing or empty") as info:
        config_validation.validate(config, num_devices=1)
    _one_line(info.value)
    (tmp_path / "manual" / "ILSVRC2012_img_train.tar").write_bytes(b"")
    with pytest.raises(ValueError, match="lacks ILSVRC2012_img_val.tar") as info:
        config_validation.validate(config, num_devices=1)
    _one_line(info.value)


def test_missing_module_while_preparing_data_names_the_package(tmp_path, monkeypatch):
    # tfds imports some modules only when it prepares a data set (importlib_resources through etils):
    # a broken install is reported as such, never as a damaged data folder to delete.
    from soft_prune_jax.training import data
    from soft_prune_jax.training.data import tf_runtime

    _, tfds = tf_runtime.import_tensorflow()

    class Builder:
        def is_prepared(self):
            return False

        def download_and_prepare(self, download_config=None):
            try:
                import importlib_resources_gone_for_this_test  # noqa: F401
            except ModuleNotFoundError as e:
                raise RuntimeError("tfds wrapped it") from e

    monkeypatch.setattr(tfds, "builder", lambda *a, **k: Builder())
    data_dir = str(tmp_path / "tfds")
    config = tiny_config(num_train_examples=16, data_dir=data_dir)
    with pytest.raises(ModuleNotFoundError) as info:
        data.prepare_dataset(config)
    message = _one_line(info.value)
    assert "'importlib_resources_gone_for_this_test'" in message, message
    assert "pip install importlib-resources-gone-for-this-test" in message, message
    assert "delete" not in message and not os.path.exists(os.path.join(data_dir, "fashion_mnist"))


def test_a_download_without_network_is_one_line_saying_so(tmp_path, monkeypatch):
    # A tfds dataset the project never named, prepared where its server cannot be reached: deleting the
    # data folder would not help, so the message asks for a network or the prepared data instead.
    import requests

    from soft_prune_jax.training import data
    from soft_prune_jax.training.data import tf_runtime

    _, tfds = tf_runtime.import_tensorflow()

    class Builder:
        def is_prepared(self):
            return False

        def download_and_prepare(self, download_config=None):
            raise requests.exceptions.ConnectionError("HTTPSConnectionPool(host='example.org'): Max retries\nmore")

    monkeypatch.setattr(tfds, "builder", lambda *a, **k: Builder())
    data_dir = str(tmp_path / "tfds")
    with pytest.raises(ValueError) as info:
        data.prepare_dataset(tiny_config(dataset="svhn_cropped", data_dir=data_dir))
    message = _one_line(info.value)
    expected_start = f"svhn_cropped cannot be downloaded into data_dir={data_dir!r} (ConnectionError: "
    assert message.startswith(expected_start), message
    assert "expected network access to its source" in message and "delete" not in message, message


# ---------------------------------------------------------------------------------------------
# Data sources: folders and user pipelines that cannot be trained on, refused before training.
# ---------------------------------------------------------------------------------------------

# tfds names that cannot be trained on (no download: refused from tfds's registry and the builder's info)
BAD_TFDS_NAMES = {
    "svhn": "is unknown: did you mean svhn_cropped?",  # a name's start
    "oxford_flower102": "is unknown: did you mean oxford_flowers102,",  # a misspelling
    "coco": "is not an image-classification dataset: expected an Image feature and a ClassLabel label, it has "
    "image: Image, ",  # detection: no ClassLabel
    "imdb_reviews": "is not an image-classification dataset: expected an Image feature and a ClassLabel label, "
    "it has text: Text, label: ClassLabel",  # text classification
}


@pytest.mark.parametrize("name", sorted(BAD_TFDS_NAMES))
def test_unusable_tfds_name_is_one_line_before_training(tmp_path, name):
    config = tiny_config(dataset=name, data_dir=str(tmp_path / "tfds"), num_train_examples=None)
    with pytest.raises(ValueError) as info:
        config_validation.validate(config, num_devices=1)
    message = _one_line(info.value)
    assert message.startswith(f"config.dataset={name!r} ") and BAD_TFDS_NAMES[name] in message, message
    assert not os.path.exists(tmp_path / "tfds" / name)  # refused before anything is prepared


# case -> ({class folder: PIL mode of its two PNGs, None = no images}, the message's core)
BAD_FOLDERS = {
    "no-images": ({"a": None, "b": None}, "holds no images: expected CLASS/*.png"),
    "one-class": ({"a": "L"}, "has 1 class with images (a): expected at least 2"),
    "empty-class": ({"a": "L", "b": None, "c": "L"}, "folder(s) b hold no training images: expected at least one"),
    "mixed-channels": ({"a": "L", "b": "RGB"}, "has images of mixed channel counts (1 channel: "),
}


@pytest.mark.parametrize("case", sorted(BAD_FOLDERS))
def test_unusable_image_folder_is_one_line_before_training(tmp_path, case):
    from PIL import Image

    classes, message = BAD_FOLDERS[case]
    for name, mode in classes.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "notes.txt").write_text("not an image")
        for i in range(2 if mode else 0):
            Image.new(mode, (6, 6)).save(tmp_path / name / f"{i}.png")
    config = tiny_config(dataset=f"folder:{tmp_path}", data_dir=str(tmp_path / "tfds"), num_train_examples=None)
    with pytest.raises(ValueError) as info:
        config_validation.validate(config, num_devices=1)
    assert f"config.dataset='folder:{tmp_path}'" in _one_line(info.value) and message in str(info.value), info.value


# factory in tests/data_pipelines.py -> the message's core
BAD_FACTORIES = {
    "returns_two": "the factory returned a tuple of 2: expected (train, eval, num_classes)",
    "one_shot_generator": "the factory's train is a generator: expected a re-iterable",
    "wrong_keys": "train batch 0 is ['x', 'y']: expected a dict {'image': (N, H, W, C), 'label': (N,) ints}",
    "float_labels": "train batch 0 has image (4, 8, 8, 1) and label (4,) float64: expected a dict",
    "one_class": "the factory's num_classes=1: expected an int >= 2",
    "raises": "the factory raised RuntimeError: no such bucket; expected (train, eval, num_classes)",
    "NOT_CALLABLE": "'NOT_CALLABLE' is a int, expected a factory",
    "missing": "module 'data_pipelines' has no attribute 'missing': expected a factory",
}


@pytest.mark.parametrize("factory", sorted(BAD_FACTORIES))
def test_factory_returning_the_wrong_thing_is_one_line_before_training(tmp_path, factory):
    config = tiny_config(dataset=f"data_pipelines:{factory}", num_train_examples=None)
    with pytest.raises(ValueError) as info:
        config_validation.validate(config, num_devices=1)
    message = _one_line(info.value)
    assert message.startswith(f"config.dataset='data_pipelines:{factory}': ") and BAD_FACTORIES[factory] in message
