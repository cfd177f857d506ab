"""Every script and launcher imports names the package still has.

scripts/ and launch/ are run by hand, not by the suite, so a rename inside soft_prune_jax would leave
them broken until someone runs them (a folder rename once broke five scripts this way). Each file's
``from soft_prune_jax... import name`` / ``import soft_prune_jax...`` lines are read from its source
and resolved here, in this process: no script is run.
"""

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted(p for folder in ("scripts", "launch") for p in (ROOT / folder).glob("*.py"))


def package_imports(source: str) -> list[tuple[str, str | None]]:
    """(module, imported name or None) of every import of soft_prune_jax in ``source``."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("soft_prune_jax"):
            out += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            out += [(alias.name, None) for alias in node.names if alias.name.startswith("soft_prune_jax")]
    return out


def unresolved(module: str, name: str | None) -> str | None:
    """Why ``from module import name`` (or ``import module``) fails, else None."""
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        return f"import {module}: {e}"
    if name is None or hasattr(mod, name):
        return None
    try:  # a submodule: from soft_prune_jax.pipeline import model_path
        importlib.import_module(f"{module}.{name}")
    except ImportError:
        return f"{module} has no {name!r}"
    return None


def test_the_files_are_found():
    names = {p.name for p in FILES}
    assert {"train.py", "benchmark.py", "random_cut.py", "latency_model_error.py"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_package_imports_resolve(path):
    problems = [why for module, name in package_imports(path.read_text()) for why in [unresolved(module, name)] if why]
    assert not problems, f"{path.relative_to(ROOT)}: {problems}"


def test_a_renamed_module_is_caught():
    source = "from soft_prune_jax.pipeline import traced\nfrom soft_prune_jax.measure import timing\n"
    found = [unresolved(m, n) for m, n in package_imports(source)]
    assert found[0] is not None and "traced" in found[0]
    assert found[1] is None
