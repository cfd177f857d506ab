"""Training: the state, the loss, the per-device steps, the schedule and the loop.

Structured like Flax's examples/imagenet: one per-device ``train_step``/``eval_step`` written with
an ``axis_name`` (gradients and metrics averaged with ``lax.pmean``, BatchNorm statistics
synchronised by the models themselves), driven either by ``jax.pmap`` or by
``jax.jit(jax.shard_map(...))`` -- the same function in both cases (``Parallel``).

Determinism (what makes resuming exact): the Gumbel key of a step is ``fold_in(state.rng, step)``,
identical on every replica, and the training data of epoch e comes from a fresh iterator seeded by
``epoch_seed(config.seed, e)``, so the batches of any step are a function of (seed, step) alone.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import time
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from soft_prune_jax.training import checkpoint as ckpt_lib
from soft_prune_jax.method import masks as M
from soft_prune_jax.method.units import GUMBEL_RNG
from soft_prune_jax.models import get_model

AXIS = "batch"  # the mapped axis name used by every step, pmap and shard_map alike
PARALLEL_KINDS = ("pmap", "shard_map")
METHODS = ("scp", "dense", "slimming")


# ---------------------------------------------------------------------------------------------
# State and model.
# ---------------------------------------------------------------------------------------------

@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes; a pure pytree of arrays (checkpointed as is)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array  # replicated base key; the step's Gumbel key is fold_in(rng, step)

    @property
    def variables(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats}


def mask_config(config) -> Optional[M.MaskConfig]:
    """The soft-mask hyper-parameters for 'scp'; None (no masks) for 'dense' and 'slimming'."""
    if config.method not in METHODS:
        raise ValueError(f"method={config.method!r} is invalid: expected one of {', '.join(METHODS)}")
    if config.method != "scp":
        return None
    return M.MaskConfig(**{k: float(v) for k, v in config.mask.items()})


def create_model(config, **overrides) -> nn.Module:
    """The registry model of ``config`` (masked for 'scp', mask=None for 'dense'/'slimming').

    An optional ``config.model_kwargs`` overrides constructor defaults (e.g. tiny widths for tests).
    """
    kwargs = dict(config.get("model_kwargs") or {})
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}  # JSON lists -> tuples
    return get_model(config.model, config.num_classes, **{"mask": mask_config(config), **kwargs, **overrides})


@functools.lru_cache(maxsize=16)
def _jitted_init(model: nn.Module) -> Callable:
    # One jitted init per model (modules are frozen dataclasses, hence hashable): compiling the
    # initialisers' random number generation is the slow part on CPU, and is then done once.
    return jax.jit(functools.partial(model.init, train=False))


def init_variables(model: nn.Module, key, input_shape: Sequence[int]) -> dict:
    """He-normal weights, BN scale 1 / bias 0, from one key (jitted: big models init fast)."""
    return _jitted_init(model)({"params": key}, jnp.zeros((1,) + tuple(input_shape), jnp.float32))


def create_train_state(rng, variables: Mapping[str, Any], tx: optax.GradientTransformation) -> TrainState:
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params), rng=rng)


# ---------------------------------------------------------------------------------------------
# Schedule, optimiser, loss.
# ---------------------------------------------------------------------------------------------

def steps_per_epoch(num_train_examples: int, batch_size: int) -> int:
    steps = num_train_examples // batch_size
    if steps < 1:
        raise ValueError(f"batch_size={batch_size} is larger than the {num_train_examples} training examples: "
                         "expected batch_size <= num_train_examples")
    return steps


def create_learning_rate_fn(base_learning_rate: float, boundaries_epochs: Iterable[float], decay: float,
                            steps_per_epoch: int) -> optax.Schedule:
    """Piecewise constant in steps: multiply by ``decay`` at each epoch boundary."""
    boundaries = {int(round(e * steps_per_epoch)): float(decay) for e in boundaries_epochs}
    return optax.piecewise_constant_schedule(float(base_learning_rate), boundaries)


def weight_decay_mask(params) -> Any:
    """True on conv/dense kernels and BN scales, False on every bias (METHOD.md section 2)."""
    def decays(path, _):
        return getattr(path[-1], "key", None) in ("kernel", "scale")
    return jax.tree_util.tree_map_with_path(decays, params)


def create_optimizer(config, learning_rate_fn: optax.Schedule, params) -> optax.GradientTransformation:
    """L2 weight decay added to the gradient (d/dw of wd/2 ||w||^2), then SGD with Nesterov momentum."""
    return optax.chain(
        optax.add_decayed_weights(float(config.weight_decay), mask=weight_decay_mask(params)),
        optax.sgd(learning_rate_fn, momentum=float(config.momentum), nesterov=bool(config.nesterov)),
    )


def slimming_penalty(params):
    """Network Slimming's L1 term: sum |scale| over the masked (prunable) BN layers."""
    layers = M.masked_layers(params)
    return sum((jnp.sum(jnp.abs(layer["scale"])) for layer in layers.values()), jnp.zeros((), jnp.float32))


def create_regulariser(config) -> Callable[[Any], jax.Array]:
    """params -> the loss term added to the cross-entropy for ``config.method``."""
    if config.method == "scp":
        lam, s = float(config.sparsity_lambda), float(config.sparsity_s)
        return lambda params: lam * M.sparsity_penalty(params, s)
    if config.method == "slimming":
        l1 = float(config.slimming.l1)
        return lambda params: l1 * slimming_penalty(params)
    if config.method == "dense":
        return lambda params: jnp.zeros((), jnp.float32)
    raise ValueError(f"method={config.method!r} is invalid: expected one of {', '.join(METHODS)}")


def no_regulariser(params):
    return jnp.zeros((), jnp.float32)


def cross_entropy_loss(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


# ---------------------------------------------------------------------------------------------
# Per-device steps (run under pmap or shard_map with axis_name=AXIS).
# ---------------------------------------------------------------------------------------------

def train_step(state: TrainState, batch, *, model: nn.Module, tx: optax.GradientTransformation,
               learning_rate_fn: optax.Schedule, regulariser: Callable, axis_name: Optional[str] = AXIS):
    """One SGD step on this device's shard of the global batch.

    The model must be built with ``axis_name`` (synchronised BN). The Gumbel key depends only on the
    step, so every replica samples the same masks, as a single device would for the whole batch.
    """
    gumbel_key = jax.random.fold_in(state.rng, state.step)
    params = state.params

    def loss_fn(params):
        logits, new_model_state = model.apply(
            {"params": params, "batch_stats": state.batch_stats}, batch["image"], train=True,
            rngs={GUMBEL_RNG: gumbel_key}, mutable=["batch_stats"])
        ce = jnp.mean(cross_entropy_loss(logits, batch["label"]))
        reg = regulariser(params)
        return ce + reg, (logits, new_model_state, ce, reg)

    (loss, (logits, new_model_state, ce, reg)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    if axis_name is not None:
        grads = lax.pmean(grads, axis_name)
    updates, new_opt_state = tx.update(grads, state.opt_state, params)
    metrics = {
        "loss": loss, "cross_entropy": ce, "regulariser": reg,
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
    }
    if axis_name is not None:
        metrics = lax.pmean(metrics, axis_name)
    metrics["learning_rate"] = learning_rate_fn(state.step)
    new_state = state.replace(step=state.step + 1, params=optax.apply_updates(params, updates),
                              batch_stats=new_model_state["batch_stats"], opt_state=new_opt_state)
    return new_state, metrics


def eval_step(variables, batch, *, model: nn.Module, axis_name: Optional[str] = AXIS):
    """Sums of correct predictions, loss and real examples (``batch['mask']`` zeroes the padding)."""
    logits = model.apply(variables, batch["image"], train=False)
    weight = batch.get("mask", jnp.ones(batch["label"].shape, jnp.float32))
    sums = {
        "correct": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * weight),
        "loss": jnp.sum(cross_entropy_loss(logits, batch["label"]) * weight),
        "count": jnp.sum(weight),
    }
    return lax.psum(sums, axis_name) if axis_name is not None else sums


# ---------------------------------------------------------------------------------------------
# Driving a per-device function over devices.
# ---------------------------------------------------------------------------------------------

def check_global_batch(batch_size: int, num_devices: int, what: str = "batch_size") -> int:
    """The per-device batch; a clear error when the global batch does not split evenly."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{what}={batch_size!r} is invalid: expected an int >= 1")
    if batch_size % num_devices:
        raise ValueError(f"{what}={batch_size} is not divisible by the {num_devices} devices: "
                         f"expected a multiple of {num_devices}")
    return batch_size // num_devices


class Parallel:
    """Runs one per-device function ``fn(replicated, batch_shard)`` over the local devices.

    'pmap': ``jax.pmap`` over ``devices``; replicated values carry a leading device axis.
    'shard_map': ``jax.jit(jax.shard_map(...))`` over a 1-D mesh; replicated values are single
    arrays with a replicated sharding. Host batches always arrive as (devices, per_device, ...).
    Outputs of ``fn`` must be replicated (pmean/psum'ed), as a train step's are.
    """

    def __init__(self, kind: str, devices: Optional[Sequence[jax.Device]] = None):
        if kind not in PARALLEL_KINDS:
            raise ValueError(f"parallel={kind!r} is invalid: expected one of {', '.join(PARALLEL_KINDS)}")
        self.kind = kind
        self.devices = list(devices) if devices is not None else jax.local_devices()
        # pmap's own default (None) maps over the local devices but reduces over every process's devices;
        # passing jax.local_devices() explicitly would confine pmean/psum to this process (multi-host bug).
        self._pmap_devices = list(devices) if devices is not None else None
        if kind == "shard_map":
            # Multi-process: the mesh spans every process's devices; each supplies its local shard.
            mesh_devices = self.devices if devices is not None or jax.process_count() == 1 else jax.devices()
            self.mesh = Mesh(np.asarray(mesh_devices), (AXIS,))
            self._replicated = NamedSharding(self.mesh, P())
            self._sharded = NamedSharding(self.mesh, P(AXIS))

    @property
    def num_local_devices(self) -> int:
        return len(self.devices)

    def map(self, fn: Callable, *, donate_first: bool = False) -> Callable:
        donate = (0,) if donate_first and self.devices[0].platform != "cpu" else ()
        if self.kind == "pmap":
            return jax.pmap(fn, axis_name=AXIS, devices=self._pmap_devices, donate_argnums=donate)
        # check_vma=False keeps pmap's semantics: a replicated input's gradient is the per-device one and
        # the step's explicit pmean averages it (with vma checking, shard_map would sum it implicitly).
        mapped = jax.shard_map(fn, mesh=self.mesh, in_specs=(P(), P(AXIS)), out_specs=P(), check_vma=False)
        return jax.jit(mapped, donate_argnums=donate)

    def replicate(self, tree):
        """One copy per device, laid out exactly as the mapped functions' outputs are.

        (A different layout, e.g. ``device_put_replicated``'s, would make the second step compile again.)
        """
        if self.kind == "pmap":
            stacked = jax.tree_util.tree_map(lambda x: np.stack([np.asarray(x)] * len(self.devices)), tree)
            return jax.pmap(lambda t: t, axis_name=AXIS, devices=self._pmap_devices)(stacked)
        host = jax.tree_util.tree_map(
            lambda x: jax.make_array_from_process_local_data(self._replicated, np.asarray(x)), tree)
        return jax.jit(lambda t: t, out_shardings=self._replicated)(host)

    def unreplicate(self, tree):
        """A host (numpy) copy of one replica."""
        if self.kind == "pmap":
            tree = jax.tree_util.tree_map(lambda x: x[0], tree)
        return jax.device_get(tree)

    def shard_batch(self, batch: Mapping[str, np.ndarray]):
        def put(x):
            x = np.asarray(x)
            if x.shape[0] != self.num_local_devices:
                raise ValueError(f"a batch with leading axis {x.shape[0]} does not match the "
                                 f"{self.num_local_devices} local devices: expected (devices, per_device, ...)")
            if self.kind == "pmap":
                return x
            return jax.make_array_from_process_local_data(self._sharded, x.reshape((-1,) + x.shape[2:]))
        return {k: put(v) for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------
# Evaluation and progress output.
# ---------------------------------------------------------------------------------------------

def evaluate(parallel: Parallel, p_eval: Callable, replicated_variables, batches: Iterable) -> dict:
    """Accuracy and mean loss over a finite iterator of eval batches (padding excluded)."""
    totals = None
    for batch in batches:
        sums = p_eval(replicated_variables, parallel.shard_batch(batch))
        totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
    if totals is None:
        raise ValueError("the evaluation iterator yielded no batches")
    totals = parallel.unreplicate(totals)
    count = float(totals["count"])
    return {"accuracy": float(totals["correct"]) / count, "loss": float(totals["loss"]) / count, "count": int(count)}


def channel_summary(params, mask_cfg: Optional[M.MaskConfig]) -> Optional[dict]:
    """Hard kept channels (``masks.hard_masks``) and the pi of every masked layer; None without masks."""
    if mask_cfg is None or not M.masked_layers(params):
        return None
    probs = M.layer_probabilities(params, mask_cfg)
    kept = M.kept_channels({name: p["hard_mask"] for name, p in probs.items()})
    kept["pi"] = {name: np.asarray(p["pi"]) for name, p in probs.items()}
    return kept


def epoch_seed(seed: int, epoch: int) -> int:
    """The data seed of one epoch: a deterministic function of (seed, epoch) only."""
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0])


class _Summaries:
    """TensorBoard (tensorboardX) writer for process 0; a no-op elsewhere.

    tensorboardX writes from a thread that dies on an I/O error (disk full, directory gone), after
    which its bounded queue fills and the training loop would block for ever. So the queue is made
    larger than any number of events written between two checks, and every write first checks
    that thread: a dead writer is a clear OSError instead of a hang.
    """

    _MAX_QUEUE = 10_000

    def __init__(self, logdir: str):
        self._writer = None
        self._logdir = logdir
        if jax.process_index() == 0:
            from tensorboardX import SummaryWriter  # imported lazily: only the loop needs it
            self._writer = SummaryWriter(logdir=logdir, max_queue=self._MAX_QUEUE)

    def _alive(self) -> bool:
        worker = getattr(getattr(getattr(self._writer, "file_writer", None), "event_writer", None), "_worker", None)
        return worker is None or worker.is_alive()

    def _check(self):
        if not self._alive():
            raise OSError(f"writing TensorBoard summaries to {self._logdir} failed (disk full or not writable?); "
                          "the training checkpoints written so far are kept")

    def scalars(self, step: int, values: Mapping[str, float]):
        if self._writer is not None:
            self._check()
            for name, value in values.items():
                self._writer.add_scalar(name, float(value), step)

    def histograms(self, step: int, values: Mapping[str, np.ndarray]):
        if self._writer is not None:
            self._check()
            for name, value in values.items():
                self._writer.add_histogram(name, np.asarray(value), step)

    def close(self):
        if self._writer is not None and self._alive():  # a dead writer has nothing left to flush
            try:
                self._writer.close()
            except OSError as e:  # runs in fit's `finally`: must not mask the error that stopped training
                logging.warning("closing the TensorBoard writer for %s failed: %s", self._logdir, e)


# ---------------------------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Phase:
    """One training run of the pipeline: joint SCP training from scratch, or fine-tuning.

    name: checkpoint subdirectory and summary tag ('train', 'finetune').
    model: built without ``axis_name`` (the loop clones it with ``axis_name=AXIS``).
    variables: initial variables, or None to initialise from ``config.seed``.
    """

    name: str
    model: nn.Module
    learning_rate: float
    num_epochs: int
    regulariser: Callable[[Any], jax.Array] = no_regulariser
    mask: Optional[M.MaskConfig] = None
    variables: Optional[Mapping[str, Any]] = None
    lr_boundaries: Optional[Sequence[float]] = None  # epochs; None = config.lr_boundaries
    seed_offset: int = 0


@dataclasses.dataclass
class FitResult:
    state: TrainState  # host copy
    steps: int
    train_metrics: dict  # mean over the last logging window
    validation: Optional[dict]


def default_dataset():
    from soft_prune_jax.training import data  # TensorFlow is imported only when real data is read
    return data


def _mean_metrics(window: list[dict]) -> dict:
    return {k: float(np.mean([m[k] for m in window])) for k in window[0]}


def _format_progress(name, step, total, rate, metrics, channels, macs) -> str:
    line = (f"{name} step {step}/{total} | {rate:.2f} steps/s | loss {metrics['loss']:.4f} "
            f"(ce {metrics['cross_entropy']:.4f}) | acc {metrics['accuracy']:.4f} | lr {metrics['learning_rate']:.4g}")
    if channels is not None:
        line += f" | kept channels {channels['kept']}/{channels['total']} ({100 * channels['ratio']:.1f}%)"
    if macs is not None:
        line += f" | MACs {macs['macs'] / 1e6:.2f}M ({100 * macs['ratio']:.1f}% of dense)"
    return line


class _Progress:
    """Checks the losses of finished steps, logs a progress line and writes TensorBoard summaries.

    Device metrics are fetched only here (every log_every_steps and at epoch ends), so the host does
    not wait on every step; a non-finite loss found here stops the run before the next save.
    """

    def __init__(self, phase, parallel, total_steps, start_step, checkpointer, macs_fn, summaries):
        self.phase, self.parallel, self.total_steps = phase, parallel, total_steps
        self.checkpointer, self.macs_fn, self.summaries = checkpointer, macs_fn, summaries
        self.pending: list[tuple[int, Any]] = []  # (step, device metrics) not yet checked
        self.window: list[dict] = []  # checked host metrics since the last progress line
        self.last_mean: dict = {}  # the mean metrics of the last progress line
        self.last_saved = checkpointer.latest_step()
        self._last_log = (time.perf_counter(), start_step)

    def flush(self, step: int, state, *, log: bool) -> None:
        for s, device_metrics in self.pending:
            metrics = self.parallel.unreplicate(device_metrics)
            if not np.isfinite(metrics["loss"]):
                self.checkpointer.wait_until_finished()
                raise FloatingPointError(
                    f"non-finite loss {float(metrics['loss'])} at step {s} of phase {self.phase.name!r}; "
                    f"the last good checkpoint (step {self.last_saved}) in {self.checkpointer.directory} is kept")
            self.window.append({k: float(v) for k, v in metrics.items()})
        self.pending.clear()
        if log and self.window:
            self._log(step, state)

    def _log(self, step: int, state) -> None:
        now = time.perf_counter()
        rate = (step - self._last_log[1]) / max(now - self._last_log[0], 1e-9)
        self._last_log = (now, step)
        mean = self.last_mean = _mean_metrics(self.window)
        self.window.clear()
        host = self.parallel.unreplicate(state)
        channels = channel_summary(host.params, self.phase.mask)
        macs = self.macs_fn(host.variables) if self.macs_fn is not None else None
        logging.info(_format_progress(self.phase.name, step, self.total_steps, rate, mean, channels, macs))
        scalars = {f"train/{k}": v for k, v in mean.items()} | {"train/steps_per_second": rate}
        if channels is not None:
            scalars |= {"channels/kept": channels["kept"], "channels/kept_ratio": channels["ratio"]}
            scalars |= {f"kept_channels/{n}": k for n, (k, _) in channels["per_layer"].items()}
            self.summaries.histograms(step, {f"pi/{n}": pi for n, pi in channels["pi"].items()})
        if macs is not None:
            scalars |= {"macs/expected": macs["macs"], "macs/ratio": macs["ratio"]}
        self.summaries.scalars(step, scalars)


def fit(config, workdir: str, phase: Phase, *, dataset=None, devices: Optional[Sequence[jax.Device]] = None,
        macs_fn: Optional[Callable[[Any], dict]] = None) -> FitResult:
    """Trains ``phase.model`` for ``phase.num_epochs``, resuming from WORKDIR/checkpoints/<phase>.

    dataset: a module-like object with ``get_dataset_info``, ``train_iterator`` and ``eval_iterator``
      (default: ``soft_prune_jax.data``); tests pass a synthetic one.
    macs_fn: variables -> {'macs', 'ratio'} for the progress line (MACs under the hard masks).
    Raises FloatingPointError on a non-finite loss; checkpoints written before it are kept.
    """
    dataset = dataset if dataset is not None else default_dataset()
    parallel = Parallel(config.parallel, devices)
    check_global_batch(config.batch_size, parallel.num_local_devices * jax.process_count())
    info = dataset.get_dataset_info(config)
    spe = steps_per_epoch(int(info.num_train), config.batch_size)  # validation already excluded
    total_steps = phase.num_epochs * spe
    boundaries = config.lr_boundaries if phase.lr_boundaries is None else phase.lr_boundaries
    lr_fn = create_learning_rate_fn(phase.learning_rate, boundaries, config.lr_decay, spe)

    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), phase.seed_offset)
    init_key, gumbel_key = jax.random.split(key)
    variables = phase.variables
    if variables is None:
        variables = init_variables(phase.model, init_key, info.input_shape)
    tx = create_optimizer(config, lr_fn, variables["params"])
    checkpointer = ckpt_lib.TrainCheckpointer(ckpt_lib.checkpoint_dir(workdir, phase.name),
                                              max_to_keep=config.keep_checkpoints)
    host_state = checkpointer.restore_or(create_train_state(gumbel_key, variables, tx))
    start_step = int(host_state.step)
    if start_step:
        logging.info("%s: resuming from step %d of %d (%s)", phase.name, start_step, total_steps,
                     checkpointer.directory)

    model = phase.model.clone(axis_name=AXIS)
    p_train = parallel.map(functools.partial(train_step, model=model, tx=tx, learning_rate_fn=lr_fn,
                                             regulariser=phase.regulariser), donate_first=True)
    p_eval = parallel.map(functools.partial(eval_step, model=model))
    state = parallel.replicate(host_state)
    progress = _Progress(phase, parallel, total_steps, start_step, checkpointer, macs_fn,
                         _Summaries(os.path.join(workdir, "tensorboard", phase.name)))
    log_every = max(1, int(config.log_every_steps))
    validation = None

    try:
        for epoch in range(start_step // spe, phase.num_epochs):
            first = max(start_step, epoch * spe)
            batches = dataset.train_iterator(config, local_devices=parallel.num_local_devices,
                                             seed=epoch_seed(config.seed, epoch))
            batches = itertools.islice(batches, first - epoch * spe, None)  # mid-epoch resume
            for step in range(first, (epoch + 1) * spe):
                state, metrics = p_train(state, parallel.shard_batch(next(batches)))
                progress.pending.append((step + 1, metrics))
                if (step + 1) % log_every == 0:
                    progress.flush(step + 1, state, log=True)
            progress.flush((epoch + 1) * spe, state, log=False)  # every loss of the epoch is finite before saving
            if int(config.get("validation_examples") or 0) > 0:
                variables = {"params": state.params, "batch_stats": state.batch_stats}
                validation = evaluate(parallel, p_eval, variables,
                                      dataset.eval_iterator(config, local_devices=parallel.num_local_devices,
                                                            split="validation"))
                logging.info("%s epoch %d: validation accuracy %.4f, loss %.4f", phase.name, epoch + 1,
                             validation["accuracy"], validation["loss"])
                progress.summaries.scalars((epoch + 1) * spe, {f"validation/{k}": v for k, v in validation.items()})
            if (epoch + 1) % int(config.checkpoint_every_epochs) == 0 or epoch + 1 == phase.num_epochs:
                checkpointer.save((epoch + 1) * spe, parallel.unreplicate(state))
                progress.last_saved = (epoch + 1) * spe
        progress.flush(total_steps, state, log=True)
        checkpointer.wait_until_finished()
    finally:
        progress.summaries.close()
        checkpointer.close()
    return FitResult(state=parallel.unreplicate(state), steps=total_steps, train_metrics=progress.last_mean,
                     validation=validation)
