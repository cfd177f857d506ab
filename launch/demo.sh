#!/usr/bin/env bash
# The Fashion-MNIST demo on a fresh machine: install, then train with masks -> prune -> fine-tune ->
# evaluate -> benchmark -> report, all from configs/fashion_mnist.py. Usage:
#   bash launch/demo.sh [WORKDIR]          (default workdirs/fashion_mnist; extra flags after it go to train.py)
# Re-running with the same WORKDIR resumes an interrupted run; a finished one is reported again.
# The first run creates .venv in the checkout with the locked versions of requirements/demo.txt; later
# runs reuse it (set SOFT_PRUNE_JAX_VENV to put it elsewhere). Your own Python is never modified.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR="${1:-workdirs/fashion_mnist}"
shift || true

if [ ! -d /usr/share/datasets/fashion-mnist ]; then  # offline copy of the data set (Debian package)
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q dataset-fashion-mnist
fi
VENV="${SOFT_PRUNE_JAX_VENV:-.venv}"
. launch/install.sh
install_locked "$VENV" requirements/demo.txt

"$VENV/bin/python" launch/train.py --config=configs/fashion_mnist.py --workdir="$WORKDIR" "$@"
echo
cat "$WORKDIR/report.md"
