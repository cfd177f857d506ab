"""Driving one per-device function over devices: ``jax.pmap`` or ``jax.jit(jax.shard_map(...))``.

Both drivers run the very same step (``steps.train_step``/``eval_step``, written with
``axis_name=AXIS``), so they agree to float rounding; ``Parallel`` hides which one runs.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from soft_prune_jax.training.steps import AXIS

PARALLEL_KINDS = ("pmap", "shard_map")


def check_global_batch(batch_size: int, num_devices: int, what: str = "batch_size") -> int:
    """The per-device batch; a clear error when the global batch does not split evenly."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{what}={batch_size!r} is invalid: expected an int >= 1")
    if batch_size % num_devices:
        raise ValueError(
            f"{what}={batch_size} is not divisible by the {num_devices} devices: expected a multiple of {num_devices}"
        )
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
            lambda x: jax.make_array_from_process_local_data(self._replicated, np.asarray(x)), tree
        )
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
                raise ValueError(
                    f"a batch with leading axis {x.shape[0]} does not match the "
                    f"{self.num_local_devices} local devices: expected (devices, per_device, ...)"
                )
            if self.kind == "pmap":
                return x
            return jax.make_array_from_process_local_data(self._sharded, x.reshape((-1,) + x.shape[2:]))

        return {k: put(v) for k, v in batch.items()}
