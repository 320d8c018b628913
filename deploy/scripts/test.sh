#!/usr/bin/env bash
# The README's test command: installs what the tests need on a fresh Debian
# machine, then runs every test in the workspace against both JavaScript
# engines, the Helm chart's check and the container image's test.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
bash deploy/scripts/setup.sh
# The Helm chart's check gives the rendered configurations to the real
# node, and the image test puts the node in an image and drives it with
# isoflowctl, so both binaries are built first (the tests build them
# anyway). Both checks run before the Rust tests so that their summary
# stays the last word; a failure is reported at the end rather than hiding
# the tests' results.
cargo build -p isoflow-node --bin isoflow -p isoflow-client --bin isoflowctl
helm_check=0
ISOFLOW_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/isoflow" bash deploy/helm/check.sh --require-binary || helm_check=$?
image_test=0
bash deploy/docker/test-image.sh || image_test=$?
tests=0
if command -v cargo-nextest >/dev/null 2>&1; then
  # nextest does not run doc tests; they go first so that nextest's summary
  # is the last word.
  cargo test --workspace --doc
  cargo nextest run --workspace --no-fail-fast "$@" || tests=$?
else
  cargo test --workspace --no-fail-fast "$@" || tests=$?
fi
if ((helm_check)); then
  echo "test.sh: deploy/helm/check.sh failed (its output is above the Rust tests)" >&2
fi
if ((image_test)); then
  echo "test.sh: deploy/docker/test-image.sh failed (its output is above the Rust tests)" >&2
fi
for code in "$tests" "$helm_check" "$image_test"; do
  ((code == 0)) || exit "$code"
done
