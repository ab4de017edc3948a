#!/bin/sh
# What the fuzz targets need beyond the Rust toolchain: a C++ compiler, for
# libfuzzer-sys builds libFuzzer from source. Installs it (as root, with
# apt-get) when missing. `make fuzz` calls this; `make test` does not need it.
set -eu
if command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "tests/fuzz/install.sh: a C++ compiler is missing; run as root or apt-get install g++" >&2
    exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++
