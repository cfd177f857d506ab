"""Jitted latency of a dense model against its compact version, with FLOP rates a reader can check.

Three ways to name the models:

    # a finished run: the dense architecture with the trained weights vs the compact artifact
    python launch/benchmark.py --workdir=/tmp/scp_resnet56
    # an experiment config, random BN parameters pruning ~50% of each unit's channels
    python launch/benchmark.py --config=configs/cifar.py:cifar10_resnet56 --random_prune=0.5
    # a registry model (or a user's 'package.module:attribute') without a config
    python launch/benchmark.py --model=vgg16 --num_classes=10 --input_shape=32,32,3 --random_prune=0.5

Every model takes the pipeline's own road (``pipeline.model_path``): the dense model as written, the cut
``model_path.cut`` makes from its units' hard masks (random BN parameters: a fraction of every unit's
channels dead), MACs read off the graph (``traced.macs``). Per batch size (--batch_sizes, default
1,64,256) it prints median latency with p10-p90, MACs, the MAC-reduction ratio, the speed-up and
speed-up / MAC ratio, and each model's GFLOP/s against the machine's sgemm rate (a jitted 2048^3
float32 matmul, measured in the same run). --json=- writes the same numbers as JSON to stdout (the
table then goes to stderr), --json=PATH to a file. --per_layer adds every conv/dense layer of both
graphs timed alone (--formulations=xla,auto compares conv formulations), and --train_step times the
training package's own train step (plain and SCP, as the pipeline's train phase builds them) against
the jitted inference forward of the same batch. --conv_formulation=auto times the models with their
nn.Conv layers run through soft_prune_jax.fast_conv (default: the models as built).
Timings on a shared machine are noisy: the output records the load average before and after.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import Any, NamedTuple, Optional

from absl import app, flags
from ml_collections import config_flags

# The config files import each other as the package ``configs``, which lives in this checkout's root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "An experiment config (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "A finished run's workdir: dense train checkpoint + compact artifact.")
flags.DEFINE_string(
    "model", None, "A registry model name or 'package.module:attribute' (instead of --config/--workdir)."
)
flags.DEFINE_integer("num_classes", 10, "With --model: number of classes.")
flags.DEFINE_string("input_shape", None, "One example's H,W,C (default: from the dataset, or 32,32,3).")
flags.DEFINE_string(
    "model_kwargs", None, "With --model: JSON constructor overrides, e.g. '{\"stage_sizes\": [1,1,1]}'."
)
flags.DEFINE_float(
    "random_prune",
    0.5,
    "With --config/--model: fraction of each unit's channels that random BN parameters kill "
    "(0 = time the dense model only).",
)
flags.DEFINE_string(
    "round_to",
    None,
    "Kept widths padded to multiples of an int >= 1, or 'latency' (the widths whose layers are fastest at the "
    "first batch size, pipeline/latency_setup.py); default: the config's round_to, else 1.",
)
flags.DEFINE_list("batch_sizes", ["1", "64", "256"], "Batch sizes to time.")
flags.DEFINE_integer("runs", 50, "Timed runs per measurement (the median is reported).")
flags.DEFINE_integer("warmup", 5, "Untimed warm-up runs per measurement.")
flags.DEFINE_integer("seed", 0, "Seed of the random weights, BN parameters and inputs.")
flags.DEFINE_string("json", None, "Write machine-readable results: '-' = stdout, else a file path.")
flags.DEFINE_enum(
    "conv_formulation",
    "model",
    ["model", "auto", "xla", "im2col"],
    "How convs run: 'model' = as the model builds them; else through fast_conv.conv2d.",
)
flags.DEFINE_bool("per_layer", False, "Also time every conv/dense layer alone (batch: the largest batch size).")
flags.DEFINE_list("formulations", ["xla", "auto"], "With --per_layer: conv formulations to compare.")
flags.DEFINE_bool(
    "train_step",
    False,
    "Also time the real train step (plain and SCP) against the jitted inference forward (largest batch size).",
)


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise app.UsageError(f"--input_shape={text!r} is invalid: expected three positive ints H,W,C")
    return shape


def _batch_sizes() -> list[int]:
    try:
        sizes = [int(v) for v in FLAGS.batch_sizes]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise app.UsageError(f"--batch_sizes={','.join(FLAGS.batch_sizes)!r} is invalid: expected ints >= 1")
    return sizes


def _input_shape(config, known: bool) -> tuple[int, ...]:
    """--input_shape, else the dataset's (``known``: the config names one), else CIFAR's."""
    if FLAGS.input_shape:
        return _parse_shape(FLAGS.input_shape)
    if not known:
        return (32, 32, 3)
    from soft_prune_jax.training import data  # the dataset's own facts: one source for its input shape

    try:  # a known name reads the table; a tfds name, folder or pipeline is resolved (training/data/resolve.py)
        return tuple(data.dataset_spec(config).input_shape)
    except ValueError as e:
        raise app.UsageError(f"{e} (or pass --input_shape=H,W,C)") from None


def _round_to(value):
    """'latency' or an int >= 1, as config.round_to takes it."""
    if str(value) == "latency":
        return "latency"
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise app.UsageError(f"--round_to={value!r} is invalid: expected an int >= 1 or 'latency'")
    return number


def _default_config():
    """configs/default.py's config (the paper's optimizer, lambda and mask settings)."""
    from configs import default

    return default.get_config()


def _model_config():
    """The config of --model: the defaults with this model, its class count and constructor overrides."""
    config = _default_config()
    config.model = FLAGS.model
    config.num_classes = FLAGS.num_classes
    try:
        kwargs = json.loads(FLAGS.model_kwargs) if FLAGS.model_kwargs else {}
    except ValueError as e:
        raise app.UsageError(f"--model_kwargs={FLAGS.model_kwargs!r} is not JSON: {e}") from None
    config.model_kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return config


def _random_bn(variables, units, seed: int, fraction: float):
    """Random BN parameters and statistics whose hard masks kill about ``fraction`` of every unit's
    channels: a dead channel gets bias -10 (the unit's output is zero for any input), a live one a
    positive bias; other BNs get random values too, so no layer is an identity by accident."""
    import jax
    import numpy as np
    from flax import traverse_util

    rng = np.random.default_rng(seed)
    unit_biases = {tuple(p) for u in units.units for p in u.params_leaves if p[-1] == "bias"}
    flat = traverse_util.flatten_dict(jax.tree_util.tree_map(np.asarray, dict(variables)))
    for key in sorted(flat):
        if key[-1] not in ("scale", "bias", "mean", "var") or flat[key].ndim != 1:
            continue
        n = flat[key].shape[0]
        if key[-1] == "scale":
            value = rng.uniform(0.5, 1.5, n)
        elif key in unit_biases:
            value = np.where(rng.random(n) < fraction, -10.0, rng.uniform(0.1, 1.0, n))
        elif key[-1] == "var":
            value = rng.uniform(0.5, 2.0, n)
        else:
            value = rng.normal(0.0, 0.3, n)
        flat[key] = value.astype(np.float32)
    return jax.tree_util.tree_map(jax.numpy.asarray, traverse_util.unflatten_dict(flat))


class Models(NamedTuple):
    """What is timed, and the cut whose graph --per_layer reads (a workdir's artifact has none)."""

    config: Any
    dense: Any
    dense_vars: Any
    compact: Optional[Any]
    compact_vars: Optional[Any]
    macs: dict  # {'dense'|'compact': {'macs', 'params'}} from the graph (traced.macs)
    input_shape: tuple
    description: str
    cut: Optional[Any]  # the prune_traced result the compact model is (or was saved from)


def _macs(dense_count, compact_count) -> dict:
    counts = {"dense": dense_count, "compact": compact_count}
    return {name: {"macs": c.macs, "params": c.params} for name, c in counts.items() if c is not None}


def _from_workdir() -> Models:
    """A finished run: its trained network as written against its final compact artifact."""
    from ml_collections import ConfigDict

    from soft_prune_jax.pipeline import model_path, workdir
    from soft_prune_jax.traced import macs
    from soft_prune_jax.training import checkpoint, data

    try:
        config = ConfigDict(checkpoint.load_workdir_config(FLAGS.workdir))
    except OSError as e:  # no run here: one line naming it
        raise app.UsageError(str(e)) from None
    try:  # the class count of a tfds name, folder or pipeline comes from resolving its dataset again
        data.num_classes(config)
    except ValueError as e:
        raise app.UsageError(
            f"{e} (benchmarking a workdir resolves its dataset again: run it where it was trained, with "
            "the same data_dir)"
        ) from None
    try:  # an unfinished run, or a compact model of the format before: one line naming it
        compact, compact_vars, which = workdir.final_compact(FLAGS.workdir)
        variables = workdir.trained_variables(config, FLAGS.workdir)
        kept = model_path.kept_of(FLAGS.workdir, "benchmark")
    except (OSError, ValueError) as e:
        raise app.UsageError(str(e).splitlines()[0]) from None
    saved = compact.spec.get("input_shape")  # the artifact's own images: no dataset to resolve for them
    input_shape = tuple(saved) if saved and not FLAGS.input_shape else _input_shape(config, True)
    dense = model_path.dense_model(config, input_shape)
    cut, _ = model_path.cut(config, variables, input_shape, keep=kept)
    counts = _macs(macs.count(cut.program.analysis), macs.of_compact(cut))
    description = f"workdir {FLAGS.workdir} ({config.model}, compact: {which})"
    return Models(config, dense, variables, compact, compact_vars, counts, input_shape, description, cut)


def _random_cut(config, input_shape):
    """(dense, dense_vars, compact|None, compact_vars|None, macs): random BN parameters, then the
    pipeline's own cut (``model_path.cut``: the units' hard masks, config.round_to)."""
    import jax

    from soft_prune_jax.pipeline import model_path
    from soft_prune_jax.traced import macs
    from soft_prune_jax.traced.masked import describe

    if not 0.0 <= FLAGS.random_prune < 1.0:
        raise app.UsageError(f"--random_prune={FLAGS.random_prune} is invalid: expected a number in [0, 1)")
    try:
        user, units = model_path.setup(config, input_shape)
    except ValueError as e:  # an unknown model or a constructor that refuses the overrides: one line
        raise app.UsageError(str(e).splitlines()[0]) from None
    x = jax.numpy.zeros((model_path.SAMPLE_BATCH,) + tuple(input_shape), jax.numpy.float32)
    variables = _random_bn(user.init(jax.random.PRNGKey(FLAGS.seed), x), units, FLAGS.seed, FLAGS.random_prune)
    dense = model_path.dense_model(config, input_shape)
    if FLAGS.random_prune == 0.0 or not units.units:
        if not units.units:
            print(describe(units, config.model), file=sys.stderr)
        return dense, variables, None, None, _macs(macs.count(units.analysis), None)
    compact, compact_vars = model_path.cut(config, variables, input_shape)
    counts = macs.count(compact.program.analysis), macs.of_compact(compact)
    return dense, variables, compact, compact_vars, _macs(*counts)


def _models() -> Models:
    sources = [name for name in ("workdir", "config", "model") if getattr(FLAGS, name) is not None]
    if len(sources) != 1:
        raise app.UsageError(f"give exactly one of --workdir, --config, --model (got {sources or 'none'})")
    if FLAGS.workdir is not None:
        return _from_workdir()
    if FLAGS.config is not None:
        config = FLAGS.config.copy_and_resolve_references()
        input_shape = _input_shape(config, True)
    else:
        config = _model_config()
        input_shape = _input_shape(config, False)
    config.round_to = _round_to(FLAGS.round_to or config.round_to)
    config.benchmark_batch_sizes = tuple(_batch_sizes())  # round_to='latency' prices the first one
    dense, variables, compact, compact_vars, counts = _random_cut(config, input_shape)
    description = f"{config.model}, random BN pruning {FLAGS.random_prune:.2f}, round_to {config.round_to}"
    return Models(config, dense, variables, compact, compact_vars, counts, input_shape, description, compact)


def _graph_layers(analysis, kept, batch: int) -> list:
    """The ``LayerShape`` of every NHWC conv / dense layer of a traced graph, with the widths ``kept``
    leaves ((slot, axis) -> indices; {} = dense), at ``batch``: a compact model is a replay of its
    graph, not linen modules, so its layers are read off the graph for both models alike."""
    from soft_prune_jax.compact import interpret as I
    from soft_prune_jax.measure.timing import LayerShape
    from soft_prune_jax.traced import macs

    def shape(e, j):
        return tuple(int(d) for d in I.compact_shape(analysis, kept, analysis.split_uses.get((e.index, j), e.ins[j])))

    rows = []
    for e, path in macs.layer_equations(analysis.graph):
        name, x, w = "/".join(path[1:-1]), shape(e, 0), shape(e, 1)
        if e.name == "dot_general":
            rows.append(LayerShape(name, "dense", (batch,) + x[1:], w, (1, 1), None))
            continue
        p = e.params
        plain = all(d == 1 for d in tuple(p.get("lhs_dilation") or ()) + tuple(p.get("rhs_dilation") or ()))
        nhwc = tuple(p["dimension_numbers"].lhs_spec) == (0, 3, 1, 2)
        hwio = tuple(p["dimension_numbers"].rhs_spec) == (3, 2, 0, 1)
        if plain and nhwc and hwio and int(p.get("feature_group_count", 1)) == 1:
            padding = tuple(tuple(int(v) for v in pad) for pad in p["padding"])
            rows.append(LayerShape(name, "conv", (batch,) + x[1:], w, tuple(p["window_strides"]), padding))
    return rows


def _time_layers(layers, runs: int) -> list:
    """``measure.timing.time_layer_shapes``' rows for layers read off a graph: shapes timed once each."""
    from soft_prune_jax.measure import timing as B

    try:
        return B.time_layer_shapes(layers, formulations=FLAGS.formulations, runs=runs, warmup=2, seed=FLAGS.seed)
    except ValueError as e:
        raise app.UsageError(f"--formulations: {e}") from None


def _per_layer(cut, batch: int, result: dict, human) -> None:
    from soft_prune_jax.measure import timing as B

    analysis, kept, _ = next(iter(cut.program.cache.values()))
    result["per_layer"] = {"batch_size": batch, "formulations": list(FLAGS.formulations)}
    for name, cut in (("dense", {}), ("compact", kept)):
        rows = _time_layers(_graph_layers(analysis, cut, batch), max(3, FLAGS.runs // 5))
        result["per_layer"][name] = rows
        print(f"\n{name} layers, each alone, batch {batch}:", file=human)
        print(B.format_layers(rows, FLAGS.formulations, result["sgemm_gflops"]), file=human)


def _train_steps(config, variables, batch_size: int, input_shape):
    """(forward, {'plain', 'scp', ...}) as (fn, args): the jitted inference forward of the dense model
    and the training package's own ``train_step`` (SGD + Nesterov, weight decay) of the model as the
    train phase builds it (``model_path.training_phase``: methods dense and scp), on one random batch,
    mapped over one device as the loop runs on one CPU (BN is synchronised over the trainer's axis),
    and for SCP also over every local device where there are several."""
    import jax
    import numpy as np

    from soft_prune_jax.measure import timing as B
    from soft_prune_jax.pipeline import model_path
    from soft_prune_jax.training import state as S
    from soft_prune_jax.training.parallel import Parallel
    from soft_prune_jax.training.steps import train_step

    x = B.random_inputs(batch_size, input_shape, FLAGS.seed)
    classes = int(jax.eval_shape(lambda: model_path.dense_model(config, input_shape).apply(variables, x[:1])).shape[-1])
    labels = jax.random.randint(jax.random.key(FLAGS.seed + 1), (batch_size,), 0, classes)
    lr_fn = S.create_learning_rate_fn(float(config.learning_rate), (), 1.0, 1)
    tx = S.create_optimizer(config, lr_fn, variables["params"])
    # The loop's own kind of key: a raw uint32 key, which also replicates across devices (a typed key does not).
    state = S.create_train_state(jax.random.PRNGKey(FLAGS.seed + 2), variables, tx)
    batch = {"image": np.asarray(x), "label": np.asarray(labels)}

    def step(method: str):
        with_method = config.copy_and_resolve_references()
        with_method.method = method
        phase = model_path.training_phase(with_method, input_shape)
        return functools.partial(
            train_step, model=phase.model, tx=tx, learning_rate_fn=lr_fn, regulariser=phase.regulariser
        )

    def mapped(fn, devices):
        parallel = Parallel("pmap", devices=devices)
        n = len(devices)
        split = {k: v.reshape((n, -1) + v.shape[1:]) for k, v in batch.items()}
        return parallel.map(fn), (parallel.replicate(state), parallel.shard_batch(split))

    one = jax.local_devices()[:1]
    steps = {"plain": mapped(step("dense"), one), "scp": mapped(step("scp"), one)}
    n = jax.local_device_count()
    if n > 1 and batch_size % n == 0:  # the same global batch, data-parallel over every local device
        steps[f"scp_{n}_devices"] = mapped(step("scp"), jax.local_devices())
    dense = model_path.dense_model(config, input_shape)
    forward = (lambda v, x: dense.apply(v, x, train=False), (variables, x))
    return forward, steps


def _report_train_step(config, variables, batch: int, input_shape, result: dict, human) -> None:
    from soft_prune_jax.measure import timing as B

    forward, steps = _train_steps(config, variables, batch, input_shape)
    step = B.time_train_steps(forward, steps, runs=max(5, FLAGS.runs // 5), warmup=3)
    step["batch_size"] = batch
    result["train_step"] = step
    print(
        f"\ntrain step (training.steps.train_step, jitted), batch {batch}, interleaved medians: forward "
        f"{step['forward']['median_ms']:.1f} ms, plain step {step['plain']['median_ms']:.1f} ms "
        f"({step['over_forward']['plain']:.2f}x the forward), SCP step {step['scp']['median_ms']:.1f} ms "
        f"({step['over_forward']['scp']:.2f}x the forward; {step['ratio']:.3f}x the plain step)",
        file=human,
    )
    for name in step["over_forward"]:
        if name.endswith("_devices"):
            print(
                f"SCP step data-parallel over the {name.split('_')[1]} local devices "
                f"(config.cpu_devices): {step[name]['median_ms']:.1f} ms ({step['over_forward'][name]:.2f}x "
                "the forward)",
                file=human,
            )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from soft_prune_jax import host_memory
    from soft_prune_jax.measure import timing as B
    from soft_prune_jax.training import cpu_devices

    # Before JAX starts: the malloc policy and a CPU-only host split as training does (timings use device 0).
    host_memory.retain_freed_memory()
    cpu_devices.apply(FLAGS.config if FLAGS.config is not None else _default_config())
    batch_sizes = _batch_sizes()
    models = _models()
    if FLAGS.per_layer and models.cut is None:
        raise app.UsageError("--per_layer times the layers of a cut: expected --random_prune > 0")
    formulation = None if FLAGS.conv_formulation == "model" else FLAGS.conv_formulation
    result = B.compare(
        models.dense,
        models.dense_vars,
        models.compact,
        models.compact_vars,
        input_shape=models.input_shape,
        batch_sizes=batch_sizes,
        runs=FLAGS.runs,
        warmup=FLAGS.warmup,
        conv_formulation=formulation,
        seed=FLAGS.seed,
        macs=models.macs,
    )
    result["source"] = models.description
    human = sys.stderr if FLAGS.json == "-" else sys.stdout
    print(models.description, file=human)
    print(B.format_table(result), file=human)

    largest = max(batch_sizes)
    if FLAGS.per_layer:
        _per_layer(models.cut, largest, result, human)
    if FLAGS.train_step:
        _report_train_step(models.config, models.dense_vars, largest, models.input_shape, result, human)

    if FLAGS.json == "-":
        json.dump(result, sys.stdout, indent=1)
        print()
    elif FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    app.run(main)
