#!/usr/bin/env bash
# The README's test command: installs what the tests need on a fresh Debian
# machine, then runs every test in the workspace against both JavaScript
# engines.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
bash deploy/scripts/setup.sh
if command -v cargo-nextest >/dev/null 2>&1; then
  # nextest does not run doc tests; they go first so that nextest's summary
  # is the last word.
  cargo test --workspace --doc
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
