"""Who reads what: each process's contiguous share of the examples, the per-device batch of the global
batch (pmap layout: leading axis = local devices), and putting batches on the devices ahead of use."""

from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np


def process_slice(num_examples: int, process_index: int, process_count: int) -> tuple[int, int]:
    """[start, end) of this process's share of ``num_examples``; shares differ by at most one,
    the first ``num_examples % process_count`` processes take the extra example (as tfds.even_splits)."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is invalid: expected 0 <= index < {process_count}")
    base, extra = divmod(num_examples, process_count)
    start = process_index * base + min(process_index, extra)
    return start, start + base + (process_index < extra)


def per_device_batch_size(batch_size: int, local_devices: int, process_count: int) -> int:
    """Global batch -> per-process batch -> per-device batch; both divisions must be exact."""
    if batch_size % process_count:
        raise ValueError(f"batch size {batch_size} is not divisible by the process count {process_count}")
    per_process = batch_size // process_count
    if per_process % local_devices:
        raise ValueError(
            f"per-process batch size {per_process} (global {batch_size} / {process_count} processes) "
            f"is not divisible by the local device count {local_devices}"
        )
    return per_process // local_devices


def device_count(local_devices: Union[int, Sequence[Any]]) -> int:
    count = local_devices if isinstance(local_devices, (int, np.integer)) else len(local_devices)
    if isinstance(count, bool) or count < 1:
        raise ValueError(f"local_devices={local_devices!r} is invalid: expected an int >= 1 or a list of devices")
    return int(count)


def process_layout(process_index: Optional[int], process_count: Optional[int]) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax  # only to ask which process this is; the default is a single process

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if process_count < 1:
        raise ValueError(f"process_count={process_count} is invalid: expected an int >= 1")
    return int(process_index), int(process_count)


def prefetch_to_device(iterator: Iterable[Any], size: int, devices: Optional[Sequence[Any]] = None):
    """Puts the next ``size`` batches on the devices ahead of use (leading axis = local devices).

    Delegates to flax.jax_utils.prefetch_to_device (still present in flax 0.12); ``devices``
    defaults to the local devices in pmap order.
    """
    from flax import jax_utils

    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"prefetch size={size!r} is invalid: expected an int >= 1")
    return jax_utils.prefetch_to_device(iter(iterator), size, devices=devices)
