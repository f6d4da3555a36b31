#!/usr/bin/env bash
# Installs Debian's chromium (headless rendering of reports) when missing.
# Needs root; waits for another apt/dpkg run (the Slurm tests install too).
set -euo pipefail
command -v chromium >/dev/null && exit 0
[ "$(id -u)" -eq 0 ] || { echo "install-chromium: chromium is missing and this is not root: apt-get install chromium" >&2; exit 1; }
echo "install-chromium: installing chromium with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
lock=(-o DPkg::Lock::Timeout=900)
{ apt-get "${lock[@]}" update -q && apt-get "${lock[@]}" install -y -q --no-install-recommends chromium; } >&2 \
  || { echo "install-chromium: apt-get failed: cannot install chromium (no package mirror reachable?)" >&2; exit 1; }
command -v chromium >/dev/null || { echo "install-chromium: chromium installed but not on PATH" >&2; exit 1; }
