# Sourced by launch/demo.sh and .ci/run: `install_locked VENV LOCK` makes VENV a virtual environment that
# holds exactly the versions pinned (with hashes) in LOCK, plus this checkout installed in editable mode.
# A VENV already installed from the same lock and pyproject.toml is reused as it is; the caller's Python is
# never modified. The locks come from pyproject.toml's ranges: `bash scripts/lock.sh` (see the README).

install_locked() {
  local venv=$1 lock=$2
  local stamp="$venv/.soft_prune_jax-lock.sha256" want
  if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "soft_prune_jax needs Python >= 3.11 (flax 0.12 does); python3 is $(python3 -V 2>&1)" >&2
    return 1
  fi
  want=$(cat "$lock" pyproject.toml | sha256sum | cut -d' ' -f1)
  if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    echo "using the environment in $venv (installed from $lock)"
    return 0
  fi
  echo "installing $lock into $venv (a few minutes, once)"
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" || {
      echo "python3 -m venv failed: install Python's venv module (Debian/Ubuntu: apt-get install python3-venv)" >&2
      return 1
    }
  fi
  rm -f "$stamp"  # an interrupted install must not pass for a finished one
  # Exact versions, checked against their hashes; then the project itself without resolving anything
  # (its build backend, setuptools, comes from the lock too, hence --no-build-isolation).
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --require-hashes -r "$lock" &&
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . &&
    echo "$want" >"$stamp"
}
