#!/usr/bin/env bash
# Makes sure headless Chromium and ChromeDriver are there for the browser tests
# (tests/tests/browser_status.rs, which runs this first). If both `chromium` and `chromedriver`
# are on PATH it does nothing; otherwise, as root, it installs Debian's chromium and
# chromium-driver packages (apt-get update, apt-get install). Not root and missing: it fails with
# a message saying what to install. Idempotent and safe to run concurrently (an exclusive flock;
# a runner that waited finds them there and does nothing).
#
#   DIFFTRACKER_BROWSER_LOCK  the lock file (default: ${TMPDIR:-/tmp}/difftracker-browser-setup.lock)
set -euo pipefail

have_browser() { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }

if have_browser; then
  exit 0
fi
lock="${DIFFTRACKER_BROWSER_LOCK:-${TMPDIR:-/tmp}/difftracker-browser-setup.lock}"
command -v flock >/dev/null 2>&1 || { echo "setup.sh: flock (util-linux) is needed to install Chromium safely" >&2; exit 1; }
exec 9>>"$lock"
flock 9
if have_browser; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "setup.sh: chromium and chromedriver are not installed and this is not root, so they cannot be installed here." >&2
  echo "setup.sh: install Debian's chromium and chromium-driver packages (as root: apt-get install -y chromium chromium-driver)." >&2
  exit 1
fi
command -v apt-get >/dev/null 2>&1 || { echo "setup.sh: Chromium is not installed and there is no apt-get to install it with" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
echo "setup.sh: installing Debian's chromium and chromium-driver" >&2
apt-get update -q >&2
apt-get install -y -q --no-install-recommends chromium chromium-driver fonts-dejavu-core >&2
have_browser || { echo "setup.sh: chromium-driver was installed but chromium or chromedriver is still not on PATH ($PATH)" >&2; exit 1; }
chromium --version >&2 || true
