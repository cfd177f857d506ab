"""soft_prune_jax.training.cpu_devices: how many XLA devices a CPU-only host is split into, and applying it."""

import os

import pytest

from soft_prune_jax.training import cpu_devices

from conftest import run_child, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _resolve(cores=2, environ=None, on_cpu=True, **overrides):
    return cpu_devices.resolve(tiny_config(**overrides), cores=cores, environ=environ or {}, on_cpu=on_cpu)


def test_auto_splits_a_multi_core_cpu_in_two():
    assert _resolve() == (2, "auto: 2 cores")
    assert _resolve(cores=16)[0] == 2


@pytest.mark.parametrize(
    "kwargs, expected, why",
    [
        (dict(cores=1), 1, "auto: 1 core"),
        (dict(batch_size=15), 1, "batch size 15 does not split over 2 devices"),
        (dict(eval_batch_size=125), 1, "batch size 125 does not split"),
        (dict(environ={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}), 0, "XLA_FLAGS sets"),
        (dict(on_cpu=False), 0, "accelerator"),
        (dict(on_cpu=False, cpu_devices=4), 0, "accelerator"),
        (dict(cpu_devices=3, cores=1), 3, "config.cpu_devices"),
        (dict(distributed={"coordinator_address": "h:1", "num_processes": 2, "process_id": 0}), 1, "multi-host"),
    ],
)
def test_auto_keeps_one_device_or_jax_own_setting_where_two_would_not_work(kwargs, expected, why):
    n, reason = _resolve(**kwargs)
    assert n == expected and why in reason, (n, reason)


@pytest.mark.parametrize("bad", ["two", 0, -2, True, 2.0, None])
def test_bad_setting_is_one_clear_error(bad):
    with pytest.raises(ValueError, match=rf"config.cpu_devices={bad!r} is invalid: expected an int >= 1 or 'auto'"):
        _resolve(cpu_devices=bad)


def test_apply_creates_the_devices_before_jax_starts_and_refuses_after():
    child = """
import json
from ml_collections import ConfigDict
from soft_prune_jax.training import cpu_devices
applied = cpu_devices.apply(ConfigDict({"cpu_devices": 3, "batch_size": 6}))
import jax
n = jax.local_device_count()
try:
    cpu_devices.apply(ConfigDict({"cpu_devices": 2, "batch_size": 6}))
    late = None
except ValueError as e:
    late = str(e)
print("RESULT " + json.dumps({"applied": applied, "devices": n, "late": late}))
"""
    result = run_child(child, cwd=REPO)
    assert result["devices"] == 3 and result["applied"] == {"devices": 3, "reason": "config.cpu_devices"}, result
    assert "cannot take effect: JAX's backend is already running" in result["late"], result
