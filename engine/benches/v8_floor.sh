#!/usr/bin/env bash
# Builds and runs engine/benches/v8_floor.cc against the libnode that
# deploy/scripts/setup.sh extracted.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
node="${ISOFLOW_LIBNODE_DIR:-$root/.deps/libnode}"
lib="$node/usr/lib/x86_64-linux-gnu"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
g++ -std=c++17 -O2 -pthread -I"$node/usr/include/node" "$root/engine/benches/v8_floor.cc" \
  -L"$lib" -lnode -Wl,-rpath,"$lib" -o "$out/v8_floor"
"$out/v8_floor" "$@"
