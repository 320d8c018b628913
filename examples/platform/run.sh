#!/usr/bin/env bash
# The platform around the runner, end to end, on this machine and offline:
# an `isoflow serve` node with an admin token, a vault, an HTTP listener
# and an SMTP server to alert through; a tenant created through the admin
# API; an OAuth2 credential that renews itself; an integration started by a
# signed webhook (sync and async) and by cron; a failed run that alerts by
# signed webhook and by email; the tenant's run history and logs.
#
# The outside world (an OAuth2 provider and its CRM API, an alert receiver,
# an SMTP sink) is examples/platform/peers.py on loopback.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

# The test suite runs this script with the binaries it already built.
if [[ -z "${ISOFLOW_EXAMPLE_PREBUILT:-}" ]]; then
  bash deploy/scripts/setup.sh
  cargo build --workspace --tests
fi

target="${CARGO_TARGET_DIR:-$root/target}"
isoflow="$target/debug/isoflow"
ctl="$target/debug/isoflowctl"
work="$target/platform"
rm -rf "$work"
mkdir -p "$work"
say() { printf '\n== %s\n' "$*"; }

python3 examples/platform/peers.py "$work" >"$work/ports" &
peers=$!
node=""
trap 'kill $peers $node 2>/dev/null || true' EXIT
for _ in $(seq 200); do
  [[ -s "$work/ports" ]] && break
  sleep 0.05
done
read -r peer_http smtp_port <"$work/ports"
crm="http://127.0.0.1:$peer_http"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
api_port=$(free_port)
http_port=$(free_port)
head -c 32 /dev/urandom | base64 >"$work/vault.key"
head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$work/admin-token"
chmod 600 "$work/vault.key" "$work/admin-token"
cat >"$work/node.toml" <<EOF
role = "all"
data_dir = "$work/data"
[api]
listen = "127.0.0.1:$api_port"
[http]
listen = "127.0.0.1:$http_port"
public_url = "http://127.0.0.1:$http_port"
[auth]
admin_token_file = "$work/admin-token"
[egress]
allow = ["127.0.0.1"]
[vault.key]
id = "demo"
file = "$work/vault.key"
[smtp]
host = "127.0.0.1"
port = $smtp_port
from = "Isoflow <alerts@isoflow.example>"
starttls = false
EOF

"$isoflow" serve --config "$work/node.toml" 2>"$work/node.log" &
node=$!
for _ in $(seq 400); do
  grep -q "listening on" "$work/node.log" 2>/dev/null && break
  kill -0 "$node" 2>/dev/null || { cat "$work/node.log" >&2; exit 2; }
  sleep 0.05
done
export ISOFLOW_SERVER="http://127.0.0.1:$api_port"

say "a tenant, created through the admin API, and its API token (shown once)"
"$ctl" admin --admin-token-file "$work/admin-token" tenants create acme --webhook-runs-per-minute 600
ISOFLOW_TOKEN=$("$ctl" admin --admin-token-file "$work/admin-token" tokens issue acme --label demo)
export ISOFLOW_TOKEN

say "credentials: the webhook's and alerts' signing keys, and an OAuth2 client for the CRM"
hook_key=$(head -c 18 /dev/urandom | base64)
export HOOK_KEY="$hook_key" ALERT_KEY="alert-$hook_key"
"$ctl" credentials set hook-key --origin https://webhook.invalid --secret-from env:HOOK_KEY
"$ctl" credentials set alert-key --origin https://webhook.invalid --secret-from env:ALERT_KEY
printf 'demo-client-secret' | "$ctl" credentials set-oauth2 crm --grant client-credentials \
  --token-url "$crm/token" --client-id isoflow-demo --origin "$crm/crm/" --allow-plain-http

say "the integration: a signed webhook, a cron trigger every 5 s, alerts by webhook and email"
sed "s#CRM_BASE#$crm#; s#ALERTS_URL#$crm/alerts#" examples/platform/crm-orders.yaml >"$work/crm-orders.yaml"
"$ctl" deploy "$work/crm-orders.yaml"

hook() { # trigger body -> signed POST to the webhook; prints the answer
  local trigger="$1" body="$2" t sig
  t=$(date +%s)
  sig=$(printf '%s' "$t.$body" | openssl dgst -sha256 -hmac "$HOOK_KEY" | awk '{print $NF}')
  curl -sS -D "$work/headers" "http://127.0.0.1:$http_port/hooks/acme/crm-orders/$trigger" \
    -H 'Content-Type: application/json' -H "X-Isoflow-Signature: t=$t,v1=$sig" -d "$body"
  echo
}

say "a signed webhook, sync: the answer is the run's output"
hook orders '{"from": "the demo"}'
grep -i '^x-isoflow-run-id' "$work/headers"

say "the same, async: 202 with the run's id and its Location"
hook orders-async '{"from": "the demo, async"}'
grep -i '^location' "$work/headers"

say "the CRM revokes its access tokens: the next run gets a 401, renews the token once, and goes on"
curl -sS -X POST "$crm/crm/revoke" >/dev/null
hook orders '{"from": "after the revocation"}'
"$ctl" credentials list

say "a run whose step fails: an alert by signed webhook and by email"
hook orders '{"reject": "the CRM sent a malformed batch"}'
for _ in $(seq 200); do
  [[ -s "$work/alerts.jsonl" && -s "$work/mail.txt" ]] && break
  sleep 0.05
done
echo "alert webhook received:"; cat "$work/alerts.jsonl"
echo "email received:"; cat "$work/mail.txt"

say "cron: waiting for a tick of every-5s"
for _ in $(seq 150); do
  "$ctl" runs --limit 50 | grep -q "cron" && break
  sleep 0.1
done
"$ctl" triggers list crm-orders

say "the tenant's history: its runs, and the logs of the last one that succeeded"
"$ctl" runs --limit 10
last=$("$ctl" runs --status succeeded --limit 1 2>/dev/null | awk 'NR == 2 {print $1}')
"$ctl" logs "$last"
