"""Jitted latency of a dense model against its compact version, with FLOP rates a reader can check.

Three ways to name the models:

    # a finished run: the dense architecture with the trained weights vs the compact export
    python launch/benchmark.py --workdir=/tmp/scp_resnet56
    # an experiment config, random BN parameters pruning ~50% of each masked layer's channels
    python launch/benchmark.py --config=configs/cifar.py:cifar10_resnet56 --random_prune=0.5
    # a registry model without a config
    python launch/benchmark.py --model=vgg16 --num_classes=10 --input_shape=32,32,3 --random_prune=0.5

Per batch size (--batch_sizes, default 1,64,256) it prints median latency with p10-p90, MACs, the
MAC-reduction ratio, the speed-up and speed-up / MAC ratio, and each model's GFLOP/s against the
machine's sgemm rate (a jitted 2048^3 float32 matmul, measured in the same run). --json=- writes the
same numbers as JSON to stdout (the table then goes to stderr), --json=PATH to a file. --per_layer
adds every conv/dense layer timed alone (--formulations=xla,auto compares conv formulations), and
--train_step times the training package's own train step (plain and SCP) against the jitted inference
forward of the same batch. --conv_formulation=auto times the models
with their nn.Conv layers run through soft_prune_jax.fast_conv (default: the models as built).
Timings on a shared machine are noisy: the output records the load average before and after.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

# The config files import each other as the package ``configs``, which lives in this checkout's root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "An experiment config (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "A finished run's workdir: dense train checkpoint + compact export.")
flags.DEFINE_string("model", None, "A registry model name (instead of --config/--workdir).")
flags.DEFINE_integer("num_classes", 10, "With --model: number of classes.")
flags.DEFINE_string("input_shape", None, "One example's H,W,C (default: from the dataset, or 32,32,3).")
flags.DEFINE_string(
    "model_kwargs", None, "With --model: JSON constructor overrides, e.g. '{\"stage_sizes\": [1,1,1]}'."
)
flags.DEFINE_float(
    "random_prune",
    0.5,
    "With --config/--model: fraction of each masked layer's channels that random "
    "BN parameters prune (0 = time the dense model only).",
)
flags.DEFINE_string(
    "round_to",
    None,
    "Channel alignment for surgery: an int >= 1, 'auto' (the fastest convs by a cached table) or 'latency' "
    "(the widths whose layers are fastest at the first batch size, method/latency.py); "
    "default: the config's round_to, else 1.",
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


def _input_shape(config) -> tuple[int, ...]:
    if FLAGS.input_shape:
        return _parse_shape(FLAGS.input_shape)
    if config is None:
        return (32, 32, 3)
    from soft_prune_jax.training import data  # the dataset's own facts: one source for its input shape

    try:  # a known name reads the table; a tfds name, folder or pipeline is resolved (training/data/resolve.py)
        return tuple(data.dataset_spec(config).input_shape)
    except ValueError as e:
        raise app.UsageError(f"{e} (or pass --input_shape=H,W,C)") from None


def _round_to(value):
    """'auto', 'latency' or an int >= 1 ('latency' is turned into a chooser once the model is known)."""
    if str(value) in ("auto", "latency"):
        return str(value)
    try:
        return int(value)
    except ValueError:
        raise app.UsageError(f"--round_to={value!r} is invalid: expected an int >= 1 or 'auto'") from None


def _random_compact(model, variables, round_to):
    """Random BN parameters dropping ~--random_prune of each masked layer, then surgery."""
    from soft_prune_jax.compact import surgery

    if not 0.0 <= FLAGS.random_prune < 1.0:
        raise app.UsageError(f"--random_prune={FLAGS.random_prune} is invalid: expected a number in [0, 1)")
    variables = surgery.randomize_bn(variables, FLAGS.seed, FLAGS.random_prune)
    if FLAGS.random_prune == 0.0:
        return variables, None, None
    compact, compact_vars = surgery.prune(model, variables, round_to=round_to)
    return variables, compact, compact_vars


def _models():
    """(dense, dense_vars, compact|None, compact_vars|None, input_shape, description)."""
    import jax

    from soft_prune_jax.training.experiment import create_model
    from soft_prune_jax.training.state import init_variables

    sources = [name for name in ("workdir", "config", "model") if getattr(FLAGS, name) is not None]
    if len(sources) != 1:
        raise app.UsageError(f"give exactly one of --workdir, --config, --model (got {sources or 'none'})")
    if FLAGS.workdir is not None:
        from ml_collections import ConfigDict

        from soft_prune_jax import pipeline
        from soft_prune_jax.training import checkpoint

        config = ConfigDict(checkpoint.load_workdir_config(FLAGS.workdir))
        try:  # the class count of a tfds name, folder or pipeline comes from resolving its dataset again
            dense = create_model(config, mask=None)
        except ValueError as e:
            raise app.UsageError(
                f"{e} (benchmarking a workdir resolves its dataset again: run it where it was trained, with "
                "the same data_dir)"
            ) from None
        variables = pipeline.trained_variables(config, FLAGS.workdir)
        compact, compact_vars, which = pipeline.final_compact(FLAGS.workdir)
        return (
            dense,
            variables,
            compact,
            compact_vars,
            _input_shape(config),
            f"workdir {FLAGS.workdir} ({config.model}, compact: {which})",
        )

    if FLAGS.config is not None:
        config = FLAGS.config
        model = create_model(config)
        input_shape, name = _input_shape(config), config.model
        round_to = _round_to(FLAGS.round_to or config.round_to)
    else:
        from soft_prune_jax.models import get_model

        kwargs = json.loads(FLAGS.model_kwargs) if FLAGS.model_kwargs else {}
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
        try:
            model = get_model(FLAGS.model, FLAGS.num_classes, **kwargs)
        except (ValueError, TypeError) as e:
            raise app.UsageError(str(e)) from None
        input_shape, name = _input_shape(None), FLAGS.model
        round_to = _round_to(FLAGS.round_to or 1)
    variables = init_variables(model, jax.random.key(FLAGS.seed), input_shape)
    if round_to == "latency":  # the widths fastest at the first batch size timed, from this device's table
        from soft_prune_jax.pipeline import latency

        round_to = latency.builtin_chooser(model, input_shape, int(FLAGS.batch_sizes[0]))
    variables, compact, compact_vars = _random_compact(model, variables, round_to)
    return (
        model.clone(mask=None),
        variables,
        compact,
        compact_vars,
        input_shape,
        f"{name}, random BN pruning {FLAGS.random_prune:.2f}, round_to {FLAGS.round_to or round_to}",
    )


def _train_steps(dense, variables, batch_size: int, input_shape):
    """(forward, {'plain', 'scp'}) as (fn, args): the jitted inference forward of the dense model and
    the training package's own ``train_step`` (SGD + Nesterov, weight decay) of the dense model and of
    the SCP model (Gumbel masks, sparsity penalty), on one random batch. ``axis_name=None``: one device
    without pmap, as the loop runs on one CPU."""
    import functools

    import jax
    import numpy as np

    from soft_prune_jax.measure import benchmark as B
    from soft_prune_jax.methods import get_method
    from soft_prune_jax.training import state as S
    from soft_prune_jax.training.steps import train_step

    config = FLAGS.config if FLAGS.config is not None else _default_config()
    x = B.random_inputs(batch_size, input_shape, FLAGS.seed)
    labels = jax.random.randint(jax.random.key(FLAGS.seed + 1), (batch_size,), 0, int(dense.num_classes))
    lr_fn = S.create_learning_rate_fn(float(config.learning_rate), (), 1.0, 1)
    tx = S.create_optimizer(config, lr_fn, variables["params"])
    # The loop's own kind of key: a raw uint32 key, which also replicates across devices (a typed key does not).
    state = S.create_train_state(jax.random.PRNGKey(FLAGS.seed + 2), variables, tx)
    batch = {"image": x, "label": labels}
    scp = get_method("scp")

    def step(model, method, **kwargs):
        return functools.partial(
            train_step, model=model, tx=tx, learning_rate_fn=lr_fn, regulariser=method.regulariser(config), **kwargs
        )

    scp_model = dense.clone(mask=scp.mask_config(config))
    steps = {
        "plain": (step(dense, get_method("dense"), axis_name=None), (state, batch)),
        "scp": (step(scp_model, scp, axis_name=None), (state, batch)),
    }
    n = jax.local_device_count()
    if n > 1 and batch_size % n == 0:
        # The step as the training loop runs it on a CPU split into several devices (config.cpu_devices):
        # the same global batch, data-parallel over every local device.
        from soft_prune_jax.training.parallel import Parallel
        from soft_prune_jax.training.steps import AXIS

        parallel = Parallel("pmap")
        split = {k: np.asarray(v).reshape((n, -1) + tuple(v.shape[1:])) for k, v in batch.items()}
        steps[f"scp_{n}_devices"] = (
            parallel.map(step(scp_model.clone(axis_name=AXIS), scp)),
            (parallel.replicate(state), parallel.shard_batch(split)),
        )
    forward = (
        lambda v, x: dense.apply(v, x, train=False),
        ({"params": variables["params"], "batch_stats": variables["batch_stats"]}, x),
    )
    return forward, steps


def _default_config():
    """configs/default.py's config (the paper's optimizer, lambda and mask settings)."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the ``configs`` package
    from configs import default

    return default.get_config()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from soft_prune_jax import host_memory
    from soft_prune_jax.measure import benchmark as B
    from soft_prune_jax.training import cpu_devices

    # Before JAX starts: the malloc policy and a CPU-only host split as training does (timings use device 0).
    host_memory.retain_freed_memory()
    cpu_devices.apply(FLAGS.config if FLAGS.config is not None else _default_config())
    batch_sizes = _batch_sizes()
    dense, dense_vars, compact, compact_vars, input_shape, description = _models()
    formulation = None if FLAGS.conv_formulation == "model" else FLAGS.conv_formulation
    result = B.compare(
        dense,
        dense_vars,
        compact,
        compact_vars,
        input_shape=input_shape,
        batch_sizes=batch_sizes,
        runs=FLAGS.runs,
        warmup=FLAGS.warmup,
        conv_formulation=formulation,
        seed=FLAGS.seed,
    )
    result["source"] = description
    human = sys.stderr if FLAGS.json == "-" else sys.stdout
    print(description, file=human)
    print(B.format_table(result), file=human)

    largest = max(batch_sizes)
    if FLAGS.per_layer:
        result["per_layer"] = {"batch_size": largest, "formulations": list(FLAGS.formulations)}
        for name, model, variables in (("dense", dense, dense_vars), ("compact", compact, compact_vars)):
            if model is None:
                continue
            rows = B.time_layers(
                model,
                variables,
                largest,
                input_shape=input_shape,
                formulations=FLAGS.formulations,
                runs=max(3, FLAGS.runs // 5),
                seed=FLAGS.seed,
            )
            result["per_layer"][name] = rows
            print(f"\n{name} layers, each alone, batch {largest}:", file=human)
            print(B.format_layers(rows, FLAGS.formulations, result["sgemm_gflops"]), file=human)
    if FLAGS.train_step:
        forward, steps = _train_steps(dense, dense_vars, largest, input_shape)
        step = B.time_train_steps(forward, steps, runs=max(5, FLAGS.runs // 5), warmup=3)
        step["batch_size"] = largest
        result["train_step"] = step
        print(
            f"\ntrain step (training.steps.train_step, jitted), batch {largest}, interleaved medians: forward "
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

    if FLAGS.json == "-":
        json.dump(result, sys.stdout, indent=1)
        print()
    elif FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    app.run(main)
