#!/usr/bin/env bash
# Makes sure kubectl is there for the API server's kubectl test (tests/tests/apiserver_kubectl.rs,
# which runs this first). If `kubectl` is on PATH it does nothing; otherwise, as root, it installs
# Debian's kubernetes-client package (apt-get update, apt-get install). Not root and no kubectl:
# it fails with a message saying what to install. Idempotent, and safe to run concurrently: the
# install happens under an exclusive lock (flock), and a runner that waited for it finds kubectl
# there and does nothing.
#
#   DIFFTRACKER_KUBECTL_LOCK  the lock file (default: ${TMPDIR:-/tmp}/difftracker-kubectl-setup.lock)
set -euo pipefail

have_kubectl() { command -v kubectl >/dev/null 2>&1; }

if have_kubectl; then
  exit 0
fi
lock="${DIFFTRACKER_KUBECTL_LOCK:-${TMPDIR:-/tmp}/difftracker-kubectl-setup.lock}"
command -v flock >/dev/null 2>&1 || { echo "setup.sh: flock (util-linux) is needed to install kubectl safely" >&2; exit 1; }
exec 9>>"$lock"
flock 9
# Another runner may have installed it while this one waited.
if have_kubectl; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "setup.sh: kubectl is not installed and this is not root, so it cannot be installed here." >&2
  echo "setup.sh: install Debian's kubernetes-client package (as root: apt-get install -y kubernetes-client) or put kubectl on PATH." >&2
  exit 1
fi
command -v apt-get >/dev/null 2>&1 || { echo "setup.sh: kubectl is not installed and there is no apt-get to install kubernetes-client with" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
echo "setup.sh: installing kubectl (Debian's kubernetes-client)" >&2
apt-get update -q >&2
apt-get install -y -q kubernetes-client >&2
have_kubectl || { echo "setup.sh: kubernetes-client was installed but kubectl is still not on PATH ($PATH)" >&2; exit 1; }
kubectl version --client >&2 || true
