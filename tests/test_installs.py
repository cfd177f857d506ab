"""Installs that do not drift: pyproject.toml declares what the code imports, the committed locks pin every
declared package inside its range, and scripts/check_drift.py names the packages that moved.

Tests marked ``drift`` (here and elsewhere) are the subset scripts/check_drift.py runs against the newest
versions the ranges allow."""

from __future__ import annotations

import ast
import glob
import importlib.metadata
import os
import subprocess
import sys
import tomllib

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement

from scripts import check_drift

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRST_PARTY = {"soft_prune_jax", "configs"}


def _declared() -> dict[str, Requirement]:
    """Every requirement of the package and its extras that applies on this machine, by normalised name."""
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    lines = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    requirements = [Requirement(line) for line in lines]
    return {
        check_drift._normalise(r.name): r
        for r in requirements
        if r.name != "soft_prune_jax" and (r.marker is None or r.marker.evaluate({"extra": ""}))
    }


def _imported_top_level_modules() -> dict[str, str]:
    """{top-level module: a file importing it} over the package, the launchers and the configs."""
    files = glob.glob(os.path.join(REPO, "soft_prune_jax", "**", "*.py"), recursive=True)
    files += glob.glob(os.path.join(REPO, "launch", "*.py")) + glob.glob(os.path.join(REPO, "configs", "*.py"))
    found = {}
    for path in files:
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], os.path.relpath(path, REPO))
    return found


@pytest.mark.drift
def test_every_third_party_module_the_code_imports_is_declared_in_pyproject():
    declared = _declared()
    distributions = importlib.metadata.packages_distributions()
    undeclared = []
    for module, where in sorted(_imported_top_level_modules().items()):
        if module in sys.stdlib_module_names or module in FIRST_PARTY:
            continue
        owners = {check_drift._normalise(d) for d in distributions.get(module, [])}
        if not owners & set(declared):
            undeclared.append(f"{module} (imported in {where}; installed by {sorted(owners) or 'nothing'})")
    assert not undeclared, "imported but not declared in pyproject.toml: " + "; ".join(undeclared)


def test_the_data_extra_declares_what_tfds_imports_to_prepare_data():
    # etils >= 1.15 stopped installing importlib_resources, which tfds imports when it prepares a data set.
    assert "importlib-resources" in _declared()


@pytest.mark.parametrize("lock", ["demo", "test"])
def test_locks_pin_every_declared_package_inside_its_range(lock):
    with open(os.path.join(REPO, "requirements", f"{lock}.txt")) as f:
        text = f.read()
    pinned = check_drift.pins(text, applies=lambda marker: Marker(marker).evaluate())
    declared = _declared()
    if lock == "demo":  # the demo's lock holds the package and its data extra, not the test tools
        with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
            test_only = tomllib.load(f)["project"]["optional-dependencies"]["test"]
        for name in {check_drift._normalise(Requirement(r).name) for r in test_only}:
            declared.pop(name, None)
    problems = [
        f"{name} {requirement.specifier} is {'not in the lock' if name not in pinned else f'locked at {pinned[name]}'}"
        for name, requirement in sorted(declared.items())
        if name not in pinned or not requirement.specifier.contains(pinned[name], prereleases=True)
    ]
    assert not problems, f"requirements/{lock}.txt is stale (bash scripts/lock.sh): " + "; ".join(problems)
    lines = text.splitlines()
    unhashed = [
        line
        for line, after in zip(lines, lines[1:] + [""])
        if check_drift._PIN.match(line.strip()) and not after.strip().startswith("--hash=sha256:")
    ]
    assert not unhashed, f"pins without hashes: {unhashed}"


def test_pins_choose_the_line_whose_marker_applies_and_moved_names_each_change():
    lock = (
        "jax==0.10.2 ; python_full_version < '3.12' \\\n    --hash=sha256:aa\n"
        "jax==0.11.2 ; python_full_version >= '3.12' \\\n    --hash=sha256:bb\n"
        "Importlib_Resources==7.1.0 \\\n    --hash=sha256:cc\n"
        "etils==1.14.0\n"
    )
    py311 = check_drift.pins(lock, applies=lambda m: Marker(m).evaluate({"python_full_version": "3.11.7"}))
    assert py311 == {"jax": "0.10.2", "importlib-resources": "7.1.0", "etils": "1.14.0"}
    installed = check_drift.pins("jax==0.10.2\netils==1.15.0\nnew-thing==1.0\n")
    assert check_drift.moved(py311, installed) == [
        "etils: 1.14.0 -> 1.15.0",
        "importlib-resources: 7.1.0 -> no longer installed",
        "new-thing: not in the lock -> 1.0",
    ]


@pytest.mark.drift
def test_the_package_imports_without_side_effects_on_tensorflow():
    code = "import sys, soft_prune_jax; print('tensorflow' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"  # TensorFlow loads only when data is read
