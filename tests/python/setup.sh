#!/usr/bin/env bash
# Creates the Python virtual environment of the emulator's SDK test: python3 -m venv, then the
# pinned packages of requirements.txt from the Python package registry. The Rust test
# tests/tests/emulator_python_sdk.rs runs this when the environment is missing or was made from
# another requirements.txt; run it by hand to prepare a machine. Fails (non-zero) when anything
# cannot be installed.
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
rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --disable-pip-version-check --no-input --quiet -r "$requirements"
"$venv/bin/python" -c "import azure.mgmt.network, azure.core, pytest; print('azure-mgmt-network', azure.mgmt.network.VERSION)"
# The marker the Rust test compares with requirements.txt: written last, so a half-made
# environment is made again.
cp "$requirements" "$venv/.difftracker-requirements"
