"""Joining JAX's distributed runtime from a config (multi-host data-parallel training).

One process per host (or per GPU) runs the same command; ``jax.distributed.initialize`` connects
them through a coordinator (process 0's address), after which ``jax.devices()`` lists every
process's devices and the training steps' ``pmean``/``psum`` reduce over all of them. On the CPU,
jax 0.10's default ``jax_cpu_collectives_implementation='gloo'`` carries the cross-process
collectives (tests run two CPU processes on localhost this way).

The three fields of ``config.distributed`` may each be None: a field left None is taken from the
environment by JAX itself (``JAX_COORDINATOR_ADDRESS``, or a cluster it detects: SLURM, Open MPI,
Kubernetes, ...). The runtime is joined only when something asks for it -- a field set, or one of
those environments present -- so a plain single-process run never waits on a coordinator.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional

import jax

# Environment variables that say "this process is one of several" (JAX's cluster auto-detection
# reads the same ones). A multi-task launcher sets them; a plain shell does not.
_CLUSTER_SIZE_VARIABLES = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def validate_fields(
    coordinator_address: Optional[str], num_processes: Optional[int], process_id: Optional[int]
) -> None:
    """One-line ValueErrors for values ``jax.distributed.initialize`` would reject late or obscurely."""
    if coordinator_address is not None:
        host, sep, port = str(coordinator_address).rpartition(":")
        if not isinstance(coordinator_address, str) or not sep or not host or not port.isdigit():
            raise ValueError(
                f"config.distributed.coordinator_address={coordinator_address!r} is invalid: "
                "expected 'host:port' (process 0's address) or None"
            )
    for name, value, low in (("num_processes", num_processes, 1), ("process_id", process_id, 0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ValueError(f"config.distributed.{name}={value!r} is invalid: expected an int >= {low} or None")
    if num_processes is not None and process_id is not None and process_id >= num_processes:
        raise ValueError(
            f"config.distributed.process_id={process_id} is invalid: expected 0 <= process_id < "
            f"num_processes={num_processes}"
        )


def requested(
    coordinator_address=None, num_processes=None, process_id=None, environ: Optional[Mapping[str, str]] = None
) -> bool:
    """True when the fields or the environment ask for a multi-process run."""
    environ = os.environ if environ is None else environ
    if any(v is not None for v in (coordinator_address, num_processes, process_id)):
        return True
    if environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    return any(environ.get(v, "1").isdigit() and int(environ.get(v, "1")) > 1 for v in _CLUSTER_SIZE_VARIABLES)


def initialize_from_fields(
    coordinator_address: Optional[str] = None, num_processes: Optional[int] = None, process_id: Optional[int] = None
) -> bool:
    """Validates, then joins the runtime if ``requested``; returns whether it did.

    Must run before anything touches a JAX device (JAX's own rule).
    """
    validate_fields(coordinator_address, num_processes, process_id)
    if not requested(coordinator_address, num_processes, process_id):
        return False
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )
    return True


def initialize(config) -> bool:
    """``initialize_from_fields`` with ``config.distributed`` (the shared schema's three fields)."""
    dist = config.distributed
    return initialize_from_fields(dist.coordinator_address, dist.num_processes, dist.process_id)


def is_primary() -> bool:
    """Whether this process writes the files that exist once per run (JSON, reports, exports)."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Waits until every process reaches the barrier ``name`` (no-op with one process).

    Used where one process writes a file the others read next (process 0's phase JSON, an export).
    """
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
