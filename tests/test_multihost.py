"""Multi-host data-parallel training on JAX's own distributed runtime, on one machine.

Two processes on localhost (``jax.distributed.initialize`` with a free port), each with two CPU
devices (``--xla_force_host_platform_device_count=2``; jax 0.10's CPU client uses gloo collectives
by default, ``jax_cpu_collectives_implementation='gloo'``), train a tiny model with ``training.loop.fit``
and must end at the parameters of one process with four devices fed the same global batches.
Each process generates only its own rows of every global batch (its shard), the checkpoints are
written once through orbax's multi-process protocol, and the metrics are the global ones.
The children print a JSON line; the asserts are here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from soft_prune_jax.training import distributed

from conftest import tiny_config

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS_DIR)
NUM_PROCESSES, DEVICES_PER_PROCESS = 2, 2
GLOBAL_BATCH, NUM_TRAIN, NUM_TEST, EPOCHS = 16, 64, 20, 2  # 4 steps per epoch, 8 in all
KINDS = ("pmap", "shard_map")  # both ways training.parallel.Parallel drives a step

CHILD = r"""
import json, os, sys
import numpy as np
import jax

ROLE, PORT, ROOT, KINDS = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")
if ROLE != "single":
    from soft_prune_jax.training import distributed
    distributed.initialize_from_fields(coordinator_address=f"localhost:{PORT}", num_processes=NUM_PROCESSES,
                                       process_id=int(ROLE))
sys.path.insert(0, TESTS_DIR)
from conftest import tiny_config
from soft_prune_jax.training import checkpoint as ckpt_lib
from soft_prune_jax.training.eval_loop import evaluate
from soft_prune_jax.pipeline.model_path import training_phase
from soft_prune_jax.training.loop import fit
from soft_prune_jax.training.parallel import Parallel
from soft_prune_jax.training.steps import AXIS, eval_step

SHAPE, CLASSES = (8, 8, 1), 10
PROTOTYPES = np.random.default_rng(1234).normal(size=(CLASSES,) + SHAPE).astype(np.float32)


def example(split, i):
    # Every example is a function of its index alone: a process can make exactly the rows it owns.
    rng = np.random.default_rng([0 if split == "train" else 1, i])
    label = int(rng.integers(CLASSES))
    return PROTOTYPES[label] + 0.3 * rng.normal(size=SHAPE).astype(np.float32), label


class ShardedData:
    # The global batch of a step is fixed by (seed, step); process p reads rows [p*B/P, (p+1)*B/P) of it.
    served_rows = 0

    def get_dataset_info(self, config):
        return train_info(config)

    def _rows(self, global_rows):
        per_process = len(global_rows) // jax.process_count()
        start = jax.process_index() * per_process
        return global_rows[start:start + per_process]

    def train_iterator(self, config, *, local_devices, seed):
        rng = np.random.default_rng(seed)
        n, bs = config.num_train_examples, config.batch_size
        while True:
            order = rng.permutation(n)
            for i in range(n // bs):
                rows = self._rows(order[i * bs:(i + 1) * bs])
                ShardedData.served_rows += len(rows)
                images, labels = zip(*(example("train", int(r)) for r in rows))
                yield {"image": np.stack(images).reshape((local_devices, -1) + SHAPE),
                       "label": np.asarray(labels, np.int32).reshape(local_devices, -1)}

    def eval_iterator(self, config, *, local_devices, split="test"):
        bs = config.eval_batch_size
        for start in range(0, NUM_TEST, bs):
            rows = self._rows(np.arange(start, start + bs))
            images, labels, mask = [], [], []
            for r in rows:
                image, label = example("test", int(r)) if r < NUM_TEST else (np.zeros(SHAPE, np.float32), 0)
                images.append(image); labels.append(label); mask.append(float(r < NUM_TEST))
            yield {"image": np.stack(images).reshape((local_devices, -1) + SHAPE),
                   "label": np.asarray(labels, np.int32).reshape(local_devices, -1),
                   "mask": np.asarray(mask, np.float32).reshape(local_devices, -1)}


def train_info(config):
    import collections
    Info = collections.namedtuple("Info", "num_classes input_shape num_train num_test")
    return Info(CLASSES, SHAPE, config.num_train_examples, NUM_TEST)


results = {}
for KIND in KINDS:
    WORKDIR = os.path.join(ROOT, KIND)  # shared by every process of the run, as on a shared file system
    config = tiny_config(batch_size=GLOBAL_BATCH, eval_batch_size=GLOBAL_BATCH, num_train_examples=NUM_TRAIN,
                         num_epochs=EPOCHS, lr_boundaries=(1,), parallel=KIND, sparsity_lambda=1e-2,
                         log_every_steps=4, keep_checkpoints=1)
    ckpt_lib.ensure_workdir_config(WORKDIR, config)
    data = ShardedData()
    ShardedData.served_rows = 0
    phase = training_phase(config, SHAPE)
    result = fit(config, WORKDIR, phase, dataset=data)
    parallel = Parallel(KIND)
    model = phase.model.clone(axis_name=AXIS)
    p_eval = parallel.map(lambda v, b: eval_step(v, b, model=model))
    evaluation = evaluate(parallel, p_eval, parallel.replicate(result.state.variables),
                                data.eval_iterator(config, local_devices=parallel.num_local_devices))
    flat = {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(
        {"params": result.state.params, "batch_stats": result.state.batch_stats})}
    np.savez(os.path.join(WORKDIR, f"final_{ROLE}.npz"), **flat)
    pipeline_results = {}
    if KIND == "pmap":  # the pipeline after training: prune (one export on the shared workdir), evaluate
        from soft_prune_jax import pipeline
        pipeline_results = pipeline.run(config, WORKDIR, "train,prune,evaluate", dataset=data)
    results[KIND] = {
        "evaluate": pipeline_results.get("evaluate"),
        "process_index": jax.process_index(), "process_count": jax.process_count(),
        "devices": jax.device_count(), "local_devices": jax.local_device_count(),
        "served_rows": ShardedData.served_rows, "steps": int(result.state.step),
        "train_metrics": result.train_metrics, "evaluation": evaluation}
print("RESULT " + json.dumps(results), flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _child_source() -> str:
    constants = dict(
        TESTS_DIR=repr(TESTS_DIR),
        NUM_PROCESSES=NUM_PROCESSES,
        GLOBAL_BATCH=GLOBAL_BATCH,
        NUM_TRAIN=NUM_TRAIN,
        NUM_TEST=NUM_TEST,
        EPOCHS=EPOCHS,
    )
    return "".join(f"{k} = {v}\n" for k, v in constants.items()) + CHILD


def _start(role: str, port: int, root: str, devices: int) -> subprocess.Popen:
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    return subprocess.Popen(
        [sys.executable, "-c", _child_source(), role, str(port), root, ",".join(KINDS)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(proc: subprocess.Popen, timeout: float) -> dict:
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"child failed (rc {proc.returncode}):\n{stderr[-4000:]}"
    return json.loads(lines[-1][len("RESULT ") :])


@pytest.fixture(scope="module")
def all_runs(tmp_path_factory):
    """One single-process 4-device run and one 2x2 run (each process doing every kind), side by side."""
    single_root = str(tmp_path_factory.mktemp("single"))
    multi_root = str(tmp_path_factory.mktemp("multi"))
    port = _free_port()
    start = time.perf_counter()
    procs = [_start("single", 0, single_root, NUM_PROCESSES * DEVICES_PER_PROCESS)]
    procs += [_start(str(i), port, multi_root, DEVICES_PER_PROCESS) for i in range(NUM_PROCESSES)]
    results = [_result(p, timeout=300) for p in procs]
    return {
        "single": results[0],
        "multi": results[1:],
        "single_root": single_root,
        "multi_root": multi_root,
        "seconds": time.perf_counter() - start,
    }


@pytest.fixture(params=KINDS)
def runs(request, all_runs):
    kind = request.param
    return {
        "kind": kind,
        "single": all_runs["single"][kind],
        "multi": [r[kind] for r in all_runs["multi"]],
        "single_dir": os.path.join(all_runs["single_root"], kind),
        "multi_dir": os.path.join(all_runs["multi_root"], kind),
    }


@pytest.mark.multihost
def test_two_processes_see_four_devices_and_read_their_own_shards(runs):
    single, multi = runs["single"], runs["multi"]
    assert single["process_count"] == 1 and single["devices"] == 4
    steps = EPOCHS * NUM_TRAIN // GLOBAL_BATCH
    assert single["steps"] == steps and single["served_rows"] == steps * GLOBAL_BATCH
    for i, r in enumerate(multi):
        assert (r["process_index"], r["process_count"], r["devices"], r["local_devices"]) == (i, 2, 4, 2)
        assert r["steps"] == steps
        assert r["served_rows"] == steps * GLOBAL_BATCH // NUM_PROCESSES  # half of every global batch


def _load(path) -> dict:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


@pytest.mark.multihost
def test_two_processes_end_at_the_single_process_parameters(runs):
    single = _load(os.path.join(runs["single_dir"], "final_single.npz"))
    for i in range(NUM_PROCESSES):
        multi = _load(os.path.join(runs["multi_dir"], f"final_{i}.npz"))
        assert multi.keys() == single.keys()
        for key in single:
            np.testing.assert_allclose(multi[key], single[key], rtol=1e-5, atol=1e-6, err_msg=key)
    initial_scale = 1.0  # BN scales start at 1: training moved them (the comparison is not vacuous)
    scales = [v for k, v in single.items() if k.endswith("['scale']")]
    assert max(float(np.max(np.abs(s - initial_scale))) for s in scales) > 1e-3


@pytest.mark.multihost
def test_metrics_are_global_and_identical_on_every_process(runs):
    single, multi = runs["single"], runs["multi"]
    for r in multi:
        for key, value in single["train_metrics"].items():
            assert r["train_metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
        assert r["evaluation"]["count"] == NUM_TEST  # both shards summed, padding excluded
        assert r["evaluation"]["accuracy"] == pytest.approx(single["evaluation"]["accuracy"])
        assert r["evaluation"]["loss"] == pytest.approx(single["evaluation"]["loss"], rel=1e-5)


@pytest.mark.multihost
def test_checkpoints_written_once_and_restorable(runs):
    from soft_prune_jax.training import checkpoint as ckpt_lib

    directory = os.path.join(runs["multi_dir"], "checkpoints", "train")
    entries = sorted(os.listdir(directory))
    final_step = EPOCHS * NUM_TRAIN // GLOBAL_BATCH
    assert entries == [str(final_step)], entries  # keep_checkpoints=1; no stray per-process copies or temps
    checkpointer = ckpt_lib.TrainCheckpointer(directory, max_to_keep=1)
    try:
        stored = checkpointer.restore_raw()
    finally:
        checkpointer.close()
    assert int(stored["step"]) == final_step
    single = _load(os.path.join(runs["single_dir"], "final_single.npz"))
    np.testing.assert_allclose(
        stored["params"]["head"]["kernel"], single["['params']['head']['kernel']"], rtol=1e-5, atol=1e-6
    )
    with open(os.path.join(runs["multi_dir"], "config.json")) as f:
        assert json.load(f)["batch_size"] == GLOBAL_BATCH


@pytest.mark.multihost
def test_pipeline_prunes_once_and_evaluates_across_processes(all_runs):
    single = all_runs["single"]["pmap"]["evaluate"]
    workdir = os.path.join(all_runs["multi_root"], "pmap")
    for r in all_runs["multi"]:
        evaluation = r["pmap"]["evaluate"]
        assert evaluation["test_examples"] == NUM_TEST
        assert evaluation["max_abs_logit_diff_before_finetune"] < 1e-5  # the export reloaded on every process
        assert evaluation["compact_accuracy_before_finetune"] == pytest.approx(
            single["compact_accuracy_before_finetune"]
        )
    assert sorted(os.listdir(os.path.join(workdir, "compact"))) == ["apply.jax_export", "arrays.npz", "model.json"]
    assert not [e for e in os.listdir(workdir) if ".tmp" in e or e.endswith(".old")]


@pytest.mark.parametrize(
    "fields,environ,expected",
    [
        ({}, {}, False),  # a plain single-process run never waits on a coordinator
        ({}, {"SLURM_NTASKS": "1"}, False),
        ({}, {"SLURM_NTASKS": "4"}, True),
        ({}, {"OMPI_COMM_WORLD_SIZE": "2"}, True),
        ({}, {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, True),
        ({"num_processes": 2}, {}, True),
        ({"coordinator_address": "10.0.0.1:1234"}, {}, True),
    ],
)
def test_distributed_runtime_is_joined_only_when_asked(fields, environ, expected):
    assert distributed.requested(**fields, environ=environ) is expected


def test_single_process_initialize_is_a_no_op_and_sync_returns(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.initialize(tiny_config()) is False
    distributed.sync("nothing to wait for")
    assert distributed.is_primary()
