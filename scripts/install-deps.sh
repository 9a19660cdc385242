#!/usr/bin/env bash
# Installs every Debian package bosun needs to build, test, benchmark and run
# its demo. Idempotent: packages already present are skipped, and apt is not
# touched at all when nothing is missing.
set -euo pipefail

packages=(
  build-essential cmake pkg-config git
  libboost-dev libboost-filesystem-dev libboost-system-dev
  libnats-dev nats-server
  libssl-dev
  nlohmann-json3-dev
  libspdlog-dev libfmt-dev
  liblmdb-dev lmdb-utils
  libgtest-dev libgmock-dev googletest
  libbenchmark-dev
  libcli11-dev
  prometheus-cpp-dev
  clang-format
  clang libclang-rt-14-dev
  python3
  ansible-core
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
