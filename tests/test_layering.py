"""The layering each subpackage's ``__init__`` states, as import-linter contracts (pyproject.toml,
``[tool.importlinter]``).

Checked here as well as by .ci/run's ``lint-imports``, so the README's test command checks it too. A
contract that matches nothing (a renamed module, a typo) would pass forever, so every contract is also
shown to break on one planted import that its statement forbids, in a copy of the package.
"""

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import importlinter.cli  # noqa: F401 (configures import-linter: its config readers and graph builder)
from importlinter.application.use_cases import lint_imports

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"

# Per contract: one import (a module file under soft_prune_jax/, a line appended to it) that breaks that
# contract and no other, so each contract is seen breaking on its own. Planted in the __init__s (the
# modules least likely to be renamed), except in the data package, whose layers are its modules.
PLANTED = {
    "Subpackages import only the layers below them": (
        "ops/__init__.py",
        "from soft_prune_jax.pipeline import runner",
    ),
    "methods imports method only": ("pruners/__init__.py", "from soft_prune_jax.compact import prune_model"),
    "training imports method, models, methods and host_memory only": (
        "training/__init__.py",
        "from soft_prune_jax.measure import flops",
    ),
    "measure never imports compact": ("measure/__init__.py", "from soft_prune_jax.compact import artifact"),
    "graph imports method only": ("graph/__init__.py", "from soft_prune_jax.ops import fast_conv"),
    "models imports ops only": ("models/__init__.py", "from soft_prune_jax.scp import masks"),
    "method imports nothing of the package outside method": (
        "scp/__init__.py",
        "from soft_prune_jax.ops import conv_geometry",
    ),
    "Only measure, training and the pipeline import host_memory": (
        "compact/__init__.py",
        "from soft_prune_jax import host_memory",
    ),
    "The data package: each module imports only those below it": (
        "training/data/spec.py",
        "from soft_prune_jax.training.data import iterators",
    ),
}

# Run in a fresh process whose soft_prune_jax is the copy (this process has imported the real one, and
# grimp finds a package through its import spec): plants each import in turn, prints the broken contracts.
_PLANT_EACH = """
import json, sys
from pathlib import Path
import importlinter.cli  # configures import-linter (its config readers and graph builder)
from importlinter.application.use_cases import create_report, lint_imports, read_user_options

# The copy as it is keeps every contract (lint_imports also registers the contract types create_report uses).
if not lint_imports(config_filename="pyproject.toml", cache_dir=None, no_logo=True):
    sys.exit("the copy breaks a contract before any import is planted (report above)")
options = read_user_options(config_filename="pyproject.toml")
broken = {}
for name, (path, line) in json.loads(sys.argv[1]).items():
    module = Path("soft_prune_jax") / path
    source = module.read_text()
    module.write_text(source + "\\n" + line + "\\n")
    report = create_report(options, cache_dir=None)
    broken[name] = sorted(c.name for c, check in report.get_contracts_and_checks() if not check.kept)
    module.write_text(source)
print(json.dumps(broken))
"""


def test_the_package_keeps_its_contracts(capsys):
    kept = lint_imports(config_filename=str(PYPROJECT), cache_dir=None, no_logo=True)
    assert kept, capsys.readouterr().out


def test_each_contract_breaks_on_an_import_its_statement_forbids(tmp_path):
    names = [c["name"] for c in tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]]
    assert sorted(names) == sorted(PLANTED), "a new contract needs an import in PLANTED that breaks it"
    shutil.copytree(ROOT / "soft_prune_jax", tmp_path / "soft_prune_jax", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PYPROJECT, tmp_path)
    run = subprocess.run(
        [sys.executable, "-c", _PLANT_EACH, json.dumps(PLANTED)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    broken = json.loads(run.stdout.splitlines()[-1])
    assert broken == {name: [name] for name in PLANTED}
