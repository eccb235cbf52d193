#!/usr/bin/env bash
# Installs, with apt, the Debian 12 packages spoad needs to build, test and run its demo,
# skipping the ones already there. Sourced or run by scripts/demo, scripts/test, scripts/bench.
set -euo pipefail

SPOAD_PACKAGES=(
  g++ meson ninja-build pkg-config git
  libuv1-dev libyaml-cpp-dev nlohmann-json3-dev libspdlog-dev libgtest-dev
  libcurl4-openssl-dev libssl-dev libcli11-dev zlib1g-dev libmicrohttpd-dev
  libhiredis-dev redis-server     # the ip-checker's shared store (Redis) and its tests
  haproxy socat curl python3 wrk procps
  prometheus                      # promtool and a Prometheus server for the metrics tests
  clang libclang-rt-14-dev llvm   # scripts/fuzz (libFuzzer) and scripts/sanitize (llvm-symbolizer)
  make xz-utils                   # scripts/haproxy: HAProxy 3.x built from its source tarball
)

missing=()
for p in "${SPOAD_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "==> installing: ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts the haproxy and redis-server services on install; spoad's demo and tests run
# their own.
