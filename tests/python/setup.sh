#!/usr/bin/env bash
# Creates the Python virtual environment of the Python tests (the emulator's SDK test and the
# API server's client test): python3 -m venv, then the pinned packages of requirements.txt from
# the Python package registry. The Rust tests (tests/tests/python_support/) run this when the
# environment is missing or was made from another requirements.txt; run it by hand to prepare a
# machine. Fails (non-zero) when anything cannot be installed. Safe to run concurrently: it works
# under an exclusive lock (flock) and does nothing if the environment is already up to date.
#
#   DIFFTRACKER_PY_VENV  where to create it (default: <repo>/target/py-venv)
#   PYTHON               the interpreter to create it with (default: python3)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${DIFFTRACKER_PY_VENV:-$root/target/py-venv}"
python="${PYTHON:-python3}"
requirements="$here/requirements.txt"

command -v "$python" >/dev/null || { echo "setup.sh: $python not found (install Python 3 with its venv module)" >&2; exit 1; }
mkdir -p "$(dirname "$venv")"
if command -v flock >/dev/null 2>&1; then
  exec 9>>"$venv.lock"
  flock 9
fi
# Another run may have made it while this one waited.
if [ -x "$venv/bin/python" ] && cmp -s "$requirements" "$venv/.difftracker-requirements"; then
  exit 0
fi
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --disable-pip-version-check --no-input --quiet -r "$requirements"
"$venv/bin/python" -c "import azure.mgmt.network, azure.core, kubernetes, pytest; print('azure-mgmt-network', azure.mgmt.network.VERSION, 'kubernetes', kubernetes.__version__)"
# The marker the Rust tests compare with requirements.txt: written last, so a half-made
# environment is made again.
cp "$requirements" "$venv/.difftracker-requirements"
