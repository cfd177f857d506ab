#!/usr/bin/env bash
# Writes the locks requirements/demo.txt (the package + its data extra: what launch/demo.sh installs) and
# requirements/test.txt (+ the test extra: what .ci/run installs) from the ranges in pyproject.toml:
# exact versions with their hashes, for every platform and Python >= 3.11 (uv's universal resolution).
#   bash scripts/lock.sh              keep today's pins where the ranges still allow them (after editing
#                                     pyproject.toml: adds or moves only what the edit requires)
#   bash scripts/lock.sh --upgrade    move every pin to the newest version the ranges allow (run
#                                     scripts/check_drift.py first to see what that brings)
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9  # the resolver that wrote the committed locks
if command -v uv >/dev/null && [ "$(uv --version | cut -d' ' -f2)" = "$UV_VERSION" ]; then
  uv=uv
else
  tools=$(mktemp -d)
  trap 'rm -rf "$tools"' EXIT
  python3 -m venv "$tools" && "$tools/bin/python" -m pip install -q "uv==$UV_VERSION"
  uv="$tools/bin/uv"
fi
for lock in demo:data test:test; do
  "$uv" pip compile pyproject.toml --extra "${lock#*:}" --universal --python-version 3.11 --generate-hashes \
    --quiet "$@" -o "requirements/${lock%%:*}.txt"
done
echo "wrote requirements/demo.txt and requirements/test.txt; commit them with the pyproject.toml they come from"
