"""Would a user who installs today get a working soft_prune_jax? Catches dependency drift before users do.

Installs the newest versions that pyproject.toml's ranges allow (``pip install -e ".[test]"``, no lock)
into a fresh virtual environment, says which packages moved away from the lock (requirements/test.txt),
then runs the drift subset of the tests there (``pytest -m drift``: the package imports, every import is
declared, Fashion-MNIST is prepared offline, one short training run that prunes and evaluates).

    python3 scripts/check_drift.py            # ~5 min on 2 cores; exit status 0 when the subset passes

Run it before refreshing the locks (``bash scripts/lock.sh --upgrade``), before a release, and whenever
a fresh install is reported broken. When it fails, the packages listed as moved are the suspects: keep the
lock, and narrow that package's range in pyproject.toml (or declare what it stopped bringing in).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCK = os.path.join(REPO, "requirements", "test.txt")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)(?:\s*;\s*([^\\]+?))?\s*\\?\s*$")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(text: str, *, applies=lambda marker: True) -> dict[str, str]:
    """{normalised name: version} of ``name==version`` lines (a lock or ``pip freeze``); of several pins of
    one name under environment markers, the one whose marker ``applies``."""
    found = {}
    for line in text.splitlines():
        match = _PIN.match(line.strip())
        if match and (match.group(3) is None or applies(match.group(3))):
            found[_normalise(match.group(1))] = match.group(2)
    return found


def this_environment(marker: str) -> bool:
    from packaging.markers import Marker

    return Marker(marker).evaluate()


def moved(lock: dict[str, str], installed: dict[str, str]) -> list[str]:
    """One line per package whose installed version is not the locked one, or that only one side has."""
    lines = []
    for name in sorted(set(lock) | set(installed)):
        old, new = lock.get(name), installed.get(name)
        if old != new:
            lines.append(f"{name}: {old or 'not in the lock'} -> {new or 'no longer installed'}")
    return lines


def _run(*args: str, **kwargs) -> int:
    print("+", " ".join(args), flush=True)
    return subprocess.run(args, cwd=REPO, **kwargs).returncode


def main() -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    with tempfile.TemporaryDirectory(prefix="soft_prune_jax-drift-") as tmp:
        venv = os.path.join(tmp, "venv")
        python = os.path.join(venv, "bin", "python")
        newest = ("install", "-q", "--upgrade", "--upgrade-strategy", "eager", "-e", ".[test]")
        if _run(sys.executable, "-m", "venv", venv) or _run(python, "-m", "pip", *newest):
            print("drift check: the newest versions allowed by pyproject.toml do not even install")
            return 1
        freeze = subprocess.run(
            [python, "-m", "pip", "freeze", "--all", "--exclude-editable"], capture_output=True, text=True, check=True
        ).stdout
        installed = {name: version for name, version in pins(freeze).items() if name != "pip"}  # pip: the venv's
        with open(LOCK) as f:
            changes = moved(pins(f.read(), applies=this_environment), installed)
        print(f"{len(changes)} package(s) differ from {os.path.relpath(LOCK, REPO)}:")
        print("\n".join(f"  {line}" for line in changes) or "  none")
        env = dict(os.environ, PATH=os.path.join(venv, "bin") + os.pathsep + os.environ.get("PATH", ""))
        status = _run(python, "-m", "pytest", "-q", "-m", "drift", "-p", "no:cacheprovider", env=env)
        if status:
            print("drift check FAILED with the newest versions; suspects, the packages that moved:")
            print("\n".join(f"  {line}" for line in changes) or "  none (the failure is not a version change)")
        else:
            print("drift check passed: the newest allowed versions work; `bash scripts/lock.sh --upgrade` to take them")
        return status


if __name__ == "__main__":
    sys.exit(main())
