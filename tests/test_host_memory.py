"""soft_prune_jax.host_memory: the malloc policy, and that it really stops XLA:CPU's per-step page faults."""

import os

import pytest

from soft_prune_jax import host_memory

from conftest import run_child

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A jitted function whose temporary buffers (a cumulative sum over 2**24 float32s: 64 MiB each) are
# larger than a glibc thread arena can hold: without the policy every call maps them afresh and faults
# them in, page by page, as XLA:CPU does with a training step's activations.
FAULTS_PER_CALL = """
import json, resource
from soft_prune_jax import host_memory
host_memory.retain_freed_memory()  # as the launchers do, before JAX starts its backend
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.sum(jnp.cumsum(jnp.exp(x))[::3]))
x = jnp.linspace(0.0, 1.0, 1 << 24)
for _ in range(10):  # the retained heap reaches its working size (it may grow a few times first)
    f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    f(x).block_until_ready()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20
print("RESULT " + json.dumps({"faults_per_call": faults, "state": host_memory.state()}))
"""


def test_policy_names_the_bad_value():
    assert host_memory.policy({}) == "auto"
    assert host_memory.policy({host_memory.ENV: "System"}) == "system"
    with pytest.raises(ValueError, match=r"SOFT_PRUNE_JAX_HOST_MALLOC='sometimes' is invalid: expected one of"):
        host_memory.policy({host_memory.ENV: "sometimes"})


def test_computes_on_cpu_from_platforms_or_installed_plugins():
    assert host_memory.computes_on_cpu({"JAX_PLATFORMS": "cpu"}, accelerator_modules=["jax_cuda12_plugin"])
    assert not host_memory.computes_on_cpu({"JAX_PLATFORMS": "cuda,cpu"}, accelerator_modules=[])
    assert not host_memory.computes_on_cpu({}, accelerator_modules=["jax_plugins.xla_cuda12"])
    assert host_memory.computes_on_cpu({}, accelerator_modules=[])


def test_importing_the_package_leaves_malloc_alone():
    # A library import has no process-wide side effects: the launchers apply the policy.
    code = "import json, soft_prune_jax\nfrom soft_prune_jax import host_memory\n"
    state = run_child(code + 'print("RESULT " + json.dumps(host_memory.state()))', cwd=REPO)
    assert state == {"policy": "auto", "applied": False, "reason": "not called"}, state


def test_retained_memory_stops_the_per_call_page_faults():
    retained = run_child(FAULTS_PER_CALL, cwd=REPO)
    system = run_child(FAULTS_PER_CALL, cwd=REPO, env={host_memory.ENV: "system"})
    assert retained["state"]["applied"] and not system["state"]["applied"], (retained, system)
    # Two 64 MiB buffers in 4 KiB pages are 32768 faults per call when they are mapped afresh.
    assert system["faults_per_call"] > 16000, system
    assert retained["faults_per_call"] < 0.25 * system["faults_per_call"], (retained, system)
