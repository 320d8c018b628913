#!/usr/bin/env bash
# The README's test command: installs what the tests need on a fresh Debian
# machine, then runs every test in the workspace against both JavaScript
# engines, and the container image's test (deploy/docker/test-image.sh).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
bash deploy/scripts/setup.sh
# The tests' build, as examples/seed/run.sh does it: it makes the debug
# isoflow and isoflowctl the image test uses, and nextest then finds
# everything built.
cargo build --workspace --tests
# The image test goes before the Rust tests so that nextest's summary stays
# the last word; a failure of it does not stop them, and still fails the
# command (said again at the end).
image=0
bash deploy/docker/test-image.sh || image=$?
tests=0
if command -v cargo-nextest >/dev/null 2>&1; then
  # nextest does not run doc tests; they go first so that nextest's summary
  # is the last word.
  cargo test --workspace --doc
  cargo nextest run --workspace --no-fail-fast "$@" || tests=$?
else
  cargo test --workspace --no-fail-fast "$@" || tests=$?
fi
if ((image)); then
  echo "test.sh: the container image's test failed (deploy/docker/test-image.sh, above)" >&2
fi
exit $((tests ? tests : image))
