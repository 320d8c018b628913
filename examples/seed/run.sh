#!/usr/bin/env bash
# The seed integration end to end, on this machine and offline: starts a
# local shop export and ERP (endpoints.py), builds the binary, runs
# examples/integrations/seed.yaml against them, and says what the ERP got.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

bash deploy/scripts/setup.sh
# The test command's own build (debug, dev-dependencies included), so that
# RocksDB's C++, the longest part of it, is compiled once for both commands.
cargo build --workspace --tests

target="${CARGO_TARGET_DIR:-$root/target}"
work="$target/seed"
mkdir -p "$work"
rm -f "$work/port" "$work/erp-received.json"
token="seed-demo-token"

python3 examples/seed/endpoints.py "$token" "$work/erp-received.json" >"$work/port" &
endpoints=$!
trap 'kill "$endpoints" 2>/dev/null || true' EXIT
# The endpoints print their port once they listen.
for _ in $(seq 200); do
  [[ -s "$work/port" ]] && break
  kill -0 "$endpoints" 2>/dev/null || { echo "run.sh: the endpoints did not start" >&2; exit 2; }
  sleep 0.05
done
base="http://127.0.0.1:$(cat "$work/port")"

# The ERP's token, and the only origin it may be sent to.
ISOFLOW_CREDENTIAL_ERP_API="$token" ISOFLOW_CREDENTIAL_ERP_API_ORIGINS="$base" \
  "$target/debug/isoflow" run examples/integrations/seed.yaml \
  --data-dir "$target/seed-data" \
  --input "{\"export_url\": \"$base/orders.xml\", \"target_url\": \"$base/erp/orders\"}"

python3 -c '
import json, sys
print("the ERP received {count} orders worth {total} (export of {exportedAt})".format(**json.load(open(sys.argv[1]))))
' "$work/erp-received.json"
