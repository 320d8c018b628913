#!/usr/bin/env bash
# The README's test command: installs what the tests need on a fresh Debian
# machine, then runs every test in the workspace against both JavaScript
# engines.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
bash deploy/scripts/setup.sh
# The Helm chart's check gives the rendered configurations to the real
# node, so the binary is built first (the tests build it anyway). It runs
# before the Rust tests so that their summary stays the last word; a
# failure is reported at the end rather than hiding the tests' results.
cargo build -p isoflow-node --bin isoflow
helm_check=0
ISOFLOW_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/isoflow" bash deploy/helm/check.sh --require-binary || helm_check=$?
if command -v cargo-nextest >/dev/null 2>&1; then
  # nextest does not run doc tests; they go first so that nextest's summary
  # is the last word.
  cargo test --workspace --doc
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
if ((helm_check)); then
  echo "test.sh: deploy/helm/check.sh failed (its output is above the Rust tests)" >&2
  exit "$helm_check"
fi
