#!/usr/bin/env bash
# A cluster on this machine: etcd, one coordinator and N workers (default 2),
# all on loopback, each with its own config file and log under
# target/cluster/. Runs the seed integration through it once, then keeps
# serving until Ctrl-C, which stops every process it started.
#
#   deploy/scripts/cluster.sh [workers]
#
# Talk to it with isoflowctl (printed at start), e.g.
#   target/debug/isoflowctl --server http://127.0.0.1:7710 --token <token> runs
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
workers="${1:-2}"

bash deploy/scripts/setup.sh
cargo build --workspace --tests

target="${CARGO_TARGET_DIR:-$root/target}"
bin="$target/debug"
work="$target/cluster"
rm -rf "$work"
mkdir -p "$work"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
etcd_port="$(free_port)"; peer_port="$(free_port)"; api_port="${ISOFLOW_API_PORT:-7710}"
token="local-api-token-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
cluster_token="cluster-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
erp_token="seed-demo-token"

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

etcd --name isoflow --data-dir "$work/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-cluster "isoflow=http://127.0.0.1:$peer_port" --logger=zap --log-level=error >"$work/etcd.log" 2>&1 &
pids+=($!)

common() {
  cat <<TOML
[auth]
cluster_token = "$cluster_token"
[etcd]
endpoints = ["http://127.0.0.1:$etcd_port"]
TOML
}

cat >"$work/coordinator.toml" <<TOML
role = "coordinator"
node_id = "coordinator"
data_dir = "$work/coordinator-data"
[api]
listen = "127.0.0.1:$api_port"
$(common)
[vault.key]
id = "cluster-demo"
file = "$work/vault.key"
[[auth.tokens]]
tenant = "local"
token = "$token"
TOML
(umask 077; head -c 32 /dev/urandom | base64 >"$work/vault.key")
"$bin/isoflow" serve --config "$work/coordinator.toml" 2>"$work/coordinator.log" &
pids+=($!)

# The seed's shop and ERP, on loopback: the workers' erp-api credential may
# be sent to this origin only.
python3 examples/seed/endpoints.py "$erp_token" "$work/erp-received.json" >"$work/port" &
pids+=($!)
for _ in $(seq 200); do [[ -s "$work/port" ]] && break; sleep 0.05; done
base="http://127.0.0.1:$(cat "$work/port")"

for i in $(seq "$workers"); do
  cat >"$work/worker-$i.toml" <<TOML
role = "worker"
node_id = "worker-$i"
$(common)
# The demo's shop and ERP listen on loopback, which http steps may not reach
# unless allowed: that one port only (etcd listens on loopback too).
[egress]
allow = ["127.0.0.1:$(cat "$work/port")"]
TOML
  "$bin/isoflow" serve --config "$work/worker-$i.toml" 2>"$work/worker-$i.log" &
  pids+=($!)
done

wait_for() { # file, text
  for _ in $(seq 600); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "cluster.sh: $1 never said \"$2\"" >&2; tail -20 "$1" >&2; exit 2
}
wait_for "$work/coordinator.log" "listening on"
for i in $(seq "$workers"); do wait_for "$work/worker-$i.log" "connected"; done
echo "cluster: etcd on $etcd_port, coordinator on 127.0.0.1:$api_port, $workers workers; logs in $work"

# The seed integration through the cluster. The ERP token goes into the
# coordinator's vault (sealed with the key in $work/vault.key); workers ask
# for it per request. Plain http is allowed for the loopback demo only.
ctl=("$bin/isoflowctl" --server "http://127.0.0.1:$api_port" --token "$token")
printf '%s' "$erp_token" | "${ctl[@]}" credentials set erp-api --origin "$base" --allow-plain-http
"${ctl[@]}" deploy examples/integrations/seed.yaml
"${ctl[@]}" start orders-to-erp --wait \
  --input "{\"export_url\": \"$base/orders.xml\", \"target_url\": \"$base/erp/orders\"}"
echo
echo "serving; try: ${ctl[*]} runs      (Ctrl-C stops the cluster)"
wait "${pids[1]}"
