#!/bin/sh
# Installs the Debian packages the build and the tests need, only the missing ones.
# python3-torch and python3-sentencepiece (for /usr/bin/python3) are the peers of the PyTorch
# cross-checks and the benchmarks.
# Usage: scripts/deps.sh [extra-package ...]
set -e
PKGS="build-essential pkg-config libopenblas-openmp-dev libcjson-dev libhdf5-dev libsentencepiece-dev libopenmpi-dev openmpi-bin python3-torch python3-sentencepiece $*"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "deps: installing$missing"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >/dev/null
$SUDO apt-get install -y -q $missing >/dev/null
