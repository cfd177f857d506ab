"""Training-state checkpoints (orbax) and the workdir's config record.

Layout of a workdir:
  WORKDIR/config.json               the config of the run that owns this workdir
  WORKDIR/checkpoints/<phase>/<step> orbax checkpoints of the training state of one phase

The training state is stored as a plain nested dict of arrays (``flax.serialization.to_state_dict``)
with ``ocp.args.StandardSave``; restoring needs a template of the same structure (a freshly
initialised state), which rebuilds the exact pytree types (optax NamedTuples, the state dataclass).
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization

CONFIG_FILE = "config.json"
# Fields that never change a run's numbers (only where/how often it logs, saves or reads data, or how the
# step is parallelised, which is numerically equivalent): a workdir may be resumed with other values.
RESULT_NEUTRAL_FIELDS = frozenset(
    {
        "log_every_steps",
        "checkpoint_every_epochs",
        "keep_checkpoints",
        "data_dir",
        "manual_dir",
        "distributed",
        "parallel",
        "cpu_devices",
        "eval_batch_size",
        "benchmark_runs",
    }
)


def checkpoint_dir(workdir: str, phase: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints", phase)


class TrainCheckpointer:
    """A thin wrapper over ``ocp.CheckpointManager`` for one phase's training state.

    The caller decides when to save (the loop saves at epoch boundaries); this class keeps the last
    ``max_to_keep`` checkpoints and restores the newest complete one. Saves are asynchronous: a run
    killed mid-save leaves an incomplete temporary directory that orbax ignores on restart.
    """

    def __init__(self, directory: str, *, max_to_keep: int = 3):
        if not isinstance(max_to_keep, int) or max_to_keep < 1:
            raise ValueError(f"keep_checkpoints={max_to_keep!r} is invalid: expected an int >= 1")
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any) -> None:
        """Saves ``state`` (any flax-serialisable pytree, on host or device) as checkpoint ``step``."""
        tree = jax.device_get(serialization.to_state_dict(state))
        try:  # an earlier asynchronous save's I/O error surfaces here or in wait_until_finished
            self._manager.save(int(step), args=ocp.args.StandardSave(tree), force=True)
        except (OSError, ValueError) as e:  # tensorstore reports failed writes as ValueError
            raise OSError(_write_failed(self.directory, e)) from e

    def restore(self, template: Any, step: Optional[int] = None) -> Any:
        """Restores checkpoint ``step`` (default: the newest) into the structure of ``template``."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        target = jax.tree_util.tree_map(np.asarray, serialization.to_state_dict(jax.device_get(template)))
        # Read as stored, then compare: orbax would return stored shapes despite the target's, and fail
        # obscurely on another tree structure.
        restored = self.restore_raw(step)
        _check_matches(target, restored, self.directory, step)
        restored = jax.tree_util.tree_map(lambda t, r: np.asarray(r, dtype=t.dtype), target, restored)
        return serialization.from_state_dict(template, restored)

    def restore_raw(self, step: Optional[int] = None) -> dict:
        """Checkpoint ``step`` (default: the newest) as stored: nested dicts of numpy arrays.

        Needs no template, so a later phase can read a finished run's params and batch_stats without
        rebuilding its optimiser state.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        try:
            return self._manager.restore(int(step), args=ocp.args.StandardRestore())
        except Exception as e:  # orbax/tensorstore raise many types for truncated or foreign files
            raise ValueError(_unreadable(self.directory, step, e)) from e

    def restore_or(self, template: Any) -> Any:
        """The newest checkpoint if there is one, else ``template`` itself (a fresh start)."""
        return template if self.latest_step() is None else self.restore(template)

    def wait_until_finished(self) -> None:
        try:
            self._manager.wait_until_finished()
        except (OSError, ValueError) as e:  # tensorstore reports failed writes as ValueError
            raise OSError(_write_failed(self.directory, e)) from e

    def close(self) -> None:
        try:  # close() waits for a pending save: its failure is a write failure too
            self._manager.close()
        except (OSError, ValueError) as e:
            raise OSError(_write_failed(self.directory, e)) from e


def _first_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"


def _write_failed(directory: str, error: BaseException) -> str:
    return (
        f"writing a checkpoint to {directory} failed ({_first_line(error)}): is the disk full or the directory "
        "not writable? Complete checkpoints written before are kept"
    )


def _unreadable(directory: str, step: int, error: BaseException) -> str:
    # Never repaired or deleted here: the user decides (move it away to resume from the one before).
    return (
        f"checkpoint {step} in {directory} cannot be read ({_first_line(error)}); it is left untouched: "
        "move that step's directory away to resume from the previous checkpoint, or use a new workdir"
    )


def _check_matches(target, restored, directory: str, step: int) -> None:
    """A checkpoint of another model (other widths or layers) is refused, naming the first difference."""

    def shapes(tree):
        return {jax.tree_util.keystr(p): np.shape(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}

    want, got = shapes(target), shapes(restored)
    if want != got:
        key = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))[0]
        raise ValueError(
            f"checkpoint {step} in {directory} does not fit this model: {key} is "
            f"{got.get(key, 'missing')} in the checkpoint, {want.get(key, 'absent')} in the model"
        )


def _comparable(config_dict: dict, ignore: Iterable[str]) -> dict:
    # A JSON round trip turns tuples into lists, so a recorded config compares equal to a live one.
    return {k: v for k, v in json.loads(json.dumps(config_dict, sort_keys=True)).items() if k not in ignore}


def config_to_dict(config) -> dict:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def ensure_workdir_config(workdir: str, config, *, ignore: Iterable[str] = RESULT_NEUTRAL_FIELDS) -> None:
    """Records ``config`` in WORKDIR/config.json, or checks it matches the recorded one.

    A workdir holding a run of a different config is refused (never overwritten): resuming it would
    mix two experiments. Fields in ``ignore`` do not change results and may differ.
    """
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:  # below a regular file, a read-only or special file system, ...
        raise OSError(
            f"workdir {workdir!r} cannot be created ({e.strerror}): expected a writable directory path"
        ) from e
    path = os.path.join(workdir, CONFIG_FILE)
    current = config_to_dict(config)
    if os.path.exists(path):
        with open(path) as f:
            recorded = json.load(f)
        old, new = _comparable(recorded, ignore), _comparable(current, ignore)
        # A field added to the schema after this run was recorded (they default to None) is absent from it.
        new = {k: v for k, v in new.items() if k in old or v is not None}
        if old != new:
            diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            details = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
            raise ValueError(
                f"workdir {workdir!r} holds a run of a different config ({details}); "
                "use a new --workdir or the recorded config"
            )
        return
    if jax.process_index() == 0:
        tmp = path + ".tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(current, f, indent=2, sort_keys=True, default=str)
            os.replace(tmp, path)  # atomic: a kill never leaves half a config.json
        except OSError as e:
            raise OSError(
                f"workdir {workdir!r} is not writable ({e.strerror} writing {CONFIG_FILE}): expected a "
                "writable directory with free space"
            ) from e


def load_workdir_config(workdir: str) -> dict:
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: run the train phase in this workdir first")
    with open(path) as f:
        return json.load(f)
