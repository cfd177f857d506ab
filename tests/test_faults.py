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
import resource
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from soft_prune_jax import checkpoint as ckpt_lib
from soft_prune_jax import pipeline

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS_DIR)
STEPS_PER_EPOCH, EPOCHS = 4, 5  # 64 examples, batch 16
TOTAL_STEPS = STEPS_PER_EPOCH * EPOCHS

TINY_CONFIG = f"""
import runpy
from ml_collections import config_dict


def get_config():
    c = runpy.run_path({os.path.join(REPO, "configs", "fashion_mnist.py")!r})["get_config"]()
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
    return subprocess.Popen([sys.executable, os.path.join(REPO, "launch", "train.py"), f"--config={config_path}",
                             f"--workdir={workdir}", "--phases=train"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


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
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before the kill:\n{proc.stderr.read()[-3000:]}"
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

    # 1. SIGKILL while orbax writes the second checkpoint (its temporary directory exists).
    run = _launch(config_path, killed_dir)
    _StderrLines(run)
    _kill_when(run, lambda: _complete(killed_dir) and _temporaries(killed_dir))
    assert _temporaries(killed_dir), "the kill did not land inside a save"
    assert _complete(killed_dir) == [STEPS_PER_EPOCH]  # the interrupted save is not listed as a checkpoint
    assert int(_restore_newest(killed_dir)["step"]) == STEPS_PER_EPOCH
    with open(os.path.join(killed_dir, "config.json")) as f:
        recorded_config = f.read()

    # 2. The same command resumes; SIGKILL it between two saves: no save in flight, and the step after a
    #    new checkpoint already logged (saves are asynchronous, so "after step n" alone is not enough).
    run = _launch(config_path, killed_dir)
    stderr = _StderrLines(run)

    def mid_epoch() -> bool:
        done = _complete(killed_dir)
        return (not _temporaries(killed_dir) and bool(done) and done[-1] > STEPS_PER_EPOCH
                and stderr.seen(f"train step {done[-1] + 1}/{TOTAL_STEPS}"))

    _kill_when(run, mid_epoch)
    assert stderr.seen(f"resuming from step {STEPS_PER_EPOCH} of {TOTAL_STEPS}")
    assert not _temporaries(killed_dir)
    newest = _complete(killed_dir)[-1]
    assert STEPS_PER_EPOCH < newest < TOTAL_STEPS and int(_restore_newest(killed_dir)["step"]) == newest

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
