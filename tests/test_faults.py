"""Faults: SIGKILL mid-training and mid-save, a diverging loss, a full disk, an unwritable workdir.

The kill test runs ``launch/train.py`` (real Fashion-MNIST, a tiny fmnist_cnn) as a subprocess and
kills it with SIGKILL twice -- once while orbax is writing a checkpoint (its ``<step>.orbax-checkpoint-tmp``
directory exists), once between two saves -- resuming each time with the same command. After each
kill the newest checkpoint must restore, and the run must end exactly where an uninterrupted run
(started alongside) ends.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from soft_prune_jax import pipeline
from soft_prune_jax.training import checkpoint as ckpt_lib

from conftest import SyntheticData, run_child, tiny_config

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS_DIR)
STEPS_PER_EPOCH, EPOCHS = 4, 5  # 64 examples, batch 16
TOTAL_STEPS = STEPS_PER_EPOCH * EPOCHS

TINY_CONFIG = f"""
from ml_collections import config_dict

from configs import fashion_mnist  # importable: launch/train.py puts the checkout's root on sys.path


def get_config():
    c = fashion_mnist.get_config("lambda")
    c.model_kwargs = config_dict.ConfigDict({{"widths": (4, "M", 8)}})
    c.num_train_examples = 64
    c.num_eval_examples = 64
    c.batch_size = 16
    c.eval_batch_size = 32
    c.num_epochs = {EPOCHS}
    c.lr_boundaries = (3,)
    c.finetune_epochs = 0
    c.log_every_steps = 1
    c.keep_checkpoints = 2
    return c
"""


def _launch(config_path: str, workdir: str) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [
            sys.executable,
            os.path.join(REPO, "launch", "train.py"),
            f"--config={config_path}",
            f"--workdir={workdir}",
            "--phases=train",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _entries(workdir: str) -> list[str]:
    try:
        return sorted(os.listdir(ckpt_lib.checkpoint_dir(workdir, "train")))
    except FileNotFoundError:
        return []


def _temporaries(workdir: str) -> list[str]:
    return [e for e in _entries(workdir) if not e.isdigit()]


def _complete(workdir: str) -> list[int]:
    return sorted(int(e) for e in _entries(workdir) if e.isdigit())


def _kill_when(proc: subprocess.Popen, condition, timeout: float = 240) -> None:
    """Polls ``condition()`` every millisecond and SIGKILLs ``proc`` the moment it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, (
            f"the run ended (rc {proc.returncode}) before the kill:\n{proc.stderr.read()[-3000:]}"
        )
        assert time.monotonic() < deadline, "timed out waiting for the moment to kill"
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


class _StderrLines:
    """Collects a subprocess's stderr lines in a thread (so the pipe never fills)."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc):
        for line in proc.stderr:
            self.lines.append(line)

    def seen(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))


def _restore_newest(workdir: str) -> dict:
    checkpointer = ckpt_lib.TrainCheckpointer(ckpt_lib.checkpoint_dir(workdir, "train"), max_to_keep=2)
    try:
        return checkpointer.restore_raw()
    finally:
        checkpointer.close()


def _assert_trees_equal(a, b):
    import jax

    paths_a = jax.tree_util.tree_leaves_with_path(a)
    paths_b = jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in paths_a] == [p for p, _ in paths_b]
    for (path, x), (_, y) in zip(paths_a, paths_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


def test_sigkill_during_save_and_during_training_then_resume_ends_as_uninterrupted(tmp_path):
    config_path = str(tmp_path / "tiny_config.py")
    with open(config_path, "w") as f:
        f.write(TINY_CONFIG)
    reference_dir, killed_dir = str(tmp_path / "reference"), str(tmp_path / "killed")
    reference = _launch(config_path, reference_dir)  # uninterrupted, side by side with the killed run

    # 1. SIGKILL while orbax writes a checkpoint (its temporary directory exists) after a first complete
    #    one. A save that completes between the poll and the signal is a miss: resume and try the next.
    for _ in range(3):
        run = _launch(config_path, killed_dir)
        _StderrLines(run)
        _kill_when(run, lambda: _complete(killed_dir) and _temporaries(killed_dir))
        newest = _complete(killed_dir)[-1]
        assert int(_restore_newest(killed_dir)["step"]) == newest  # the newest complete one always restores
        if _temporaries(killed_dir):
            in_flight = int(_temporaries(killed_dir)[0].split(".")[0])
            assert in_flight > newest  # the interrupted save is not listed as a checkpoint
            break
    else:
        pytest.fail("no SIGKILL landed inside a save in 3 tries")
    with open(os.path.join(killed_dir, "config.json")) as f:
        recorded_config = f.read()

    # 2. The same command resumes; SIGKILL it between two saves: no save in flight, and the step after a
    #    new checkpoint already logged (saves are asynchronous, so "after step n" alone is not enough).
    run = _launch(config_path, killed_dir)
    stderr = _StderrLines(run)

    def mid_epoch() -> bool:
        done = _complete(killed_dir)
        return (
            not _temporaries(killed_dir)
            and bool(done)
            and done[-1] > resumed_from
            and stderr.seen(f"train step {done[-1] + 1}/{TOTAL_STEPS}")
        )

    resumed_from = newest
    _kill_when(run, mid_epoch)
    assert stderr.seen(f"resuming from step {resumed_from} of {TOTAL_STEPS}")
    assert not _temporaries(killed_dir)
    newest = _complete(killed_dir)[-1]
    assert resumed_from < newest < TOTAL_STEPS and int(_restore_newest(killed_dir)["step"]) == newest

    # 3. The same command again finishes, at exactly the uninterrupted run's state.
    run = _launch(config_path, killed_dir)
    _, err = run.communicate(timeout=240)
    assert run.returncode == 0, err[-3000:]
    assert f"resuming from step {newest} of {TOTAL_STEPS}" in err
    _, err = reference.communicate(timeout=240)
    assert reference.returncode == 0, err[-3000:]
    assert _entries(killed_dir) == _entries(reference_dir) == [str(TOTAL_STEPS - STEPS_PER_EPOCH), str(TOTAL_STEPS)]
    _assert_trees_equal(_restore_newest(killed_dir), _restore_newest(reference_dir))
    with open(os.path.join(killed_dir, "config.json")) as f:
        assert f.read() == recorded_config  # recorded once, never rewritten by a resume
    with open(os.path.join(killed_dir, "train.json")) as f:
        assert json.load(f)["steps"] == TOTAL_STEPS


FULL_DISK_CHILD = r"""
import json, os, resource, signal, sys
sys.path.insert(0, TESTS_DIR)
from conftest import SyntheticData, tiny_config
from soft_prune_jax.training import checkpoint as ckpt_lib
from soft_prune_jax.pipeline.model_path import training_phase
from soft_prune_jax.training.loop import fit

workdir = sys.argv[1]
SHAPE = SyntheticData().shape
config = tiny_config(num_epochs=1, num_train_examples=32, log_every_steps=1)
ckpt_lib.ensure_workdir_config(workdir, config)
fit(config, workdir, training_phase(config, SHAPE), dataset=SyntheticData())  # one good epoch: checkpoint 2
# From here on no file may grow past 64 bytes: every write fails as on a full disk (EFBIG instead of ENOSPC).
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))
config = tiny_config(num_epochs=3, num_train_examples=32, log_every_steps=1)
try:
    fit(config, workdir, training_phase(config, SHAPE), dataset=SyntheticData())
    print("RESULT " + json.dumps({"error": None}))
except Exception as e:
    print("RESULT " + json.dumps({"error": type(e).__name__, "message": str(e)}))
"""


def test_full_disk_is_a_clear_error_not_a_hang_and_keeps_the_last_checkpoint(tmp_path):
    workdir = str(tmp_path / "run")
    child = FULL_DISK_CHILD.replace("TESTS_DIR", repr(TESTS_DIR))
    result = run_child(child, cwd=REPO, args=(workdir,), timeout=180)  # a hang fails here
    assert result["error"] == "OSError", result
    assert "\n" not in result["message"] and workdir in result["message"]
    assert "disk full or" in result["message"]
    assert _complete(workdir) == [2]
    assert int(_restore_newest(workdir)["step"]) == 2


@pytest.mark.parametrize(
    "make_workdir",
    [
        lambda tmp: os.path.join(_regular_file(tmp), "workdir"),  # a path below a regular file
        lambda tmp: _regular_file(tmp),  # a regular file itself
        lambda tmp: "/proc/soft_prune_jax_workdir",  # a file system that refuses new entries, even to root
    ],
    ids=["below-a-file", "is-a-file", "proc"],
)
def test_unwritable_workdir_is_a_clear_error_before_any_work(tmp_path, make_workdir):
    workdir = make_workdir(tmp_path)
    before = _snapshot(tmp_path)
    data = SyntheticData()
    with pytest.raises(OSError) as info:
        pipeline.run(tiny_config(), workdir, "train", dataset=data)
    assert str(info.value).startswith(f"workdir {workdir!r} cannot be created (")
    assert "\n" not in str(info.value) and str(info.value).endswith("expected a writable directory path")
    assert data.served == 0  # refused before training
    assert _snapshot(tmp_path) == before  # nothing existing was touched


def _regular_file(tmp) -> str:
    path = os.path.join(str(tmp), "a_file")
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write("not a directory")
    return path


def _snapshot(root) -> dict:
    """{path: (size, mtime_ns, content digest)} of every file under ``root``."""
    import hashlib

    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            st = os.stat(path)
            out[path] = (st.st_size, st.st_mtime_ns, digest)
    return out


def test_non_finite_loss_stops_the_pipeline_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    workdir = str(tmp_path)
    config = tiny_config(num_epochs=3, finetune_epochs=0, num_train_examples=64)  # 4 steps per epoch
    with pytest.raises(FloatingPointError) as info:
        pipeline.run(config, workdir, "train,prune", dataset=SyntheticData(nan_at=9))  # step 10, epoch 3
    message = str(info.value)
    assert "\n" not in message
    assert "non-finite loss nan at step 10" in message and "last good checkpoint (step 8)" in message
    assert _complete(workdir) == [4, 8]
    assert int(_restore_newest(workdir)["step"]) == 8
    assert not os.path.exists(os.path.join(workdir, "train.json"))  # the phase did not finish...
    assert not os.path.exists(os.path.join(workdir, "compact"))  # ...so nothing downstream ran on it
    checkpoint_files = _snapshot(ckpt_lib.checkpoint_dir(workdir, "train"))
    with pytest.raises(FileNotFoundError, match="train.json does not exist"):
        pipeline.run(config, workdir, "prune", dataset=SyntheticData())
    assert _snapshot(ckpt_lib.checkpoint_dir(workdir, "train")) == checkpoint_files
