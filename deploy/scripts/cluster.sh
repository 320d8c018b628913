#!/usr/bin/env bash
# A cluster on this machine: etcd, one coordinator and N workers (default 2),
# all on loopback, each with its own config file and log under
# target/cluster/. Runs the seed integration through it once, then keeps
# serving until Ctrl-C, which stops every process it started.
#
# TLS everywhere, with certificates made here by openssl (target/cluster/tls):
# etcd serves clients and peers over TLS only, requires client certificates
# and has authentication on (user `isoflow`, read and write under /isoflow/);
# the coordinator's listener speaks TLS only; workers connect with mutual
# TLS, each certificate naming its worker (CN = node id); isoflowctl checks
# the coordinator's certificate against the cluster's CA.
#
#   deploy/scripts/cluster.sh [workers]
#
# Talk to it with isoflowctl (printed at start), e.g.
#   target/debug/isoflowctl --server https://127.0.0.1:7710 \
#     --ca target/cluster/tls/ca.pem --token <token> runs
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
secret() { head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
etcd_port="$(free_port)"; peer_port="$(free_port)"; api_port="${ISOFLOW_API_PORT:-7710}"
token="local-api-token-$(secret)"
cluster_token="cluster-$(secret)"
erp_token="seed-demo-token"

# Two CAs: one for etcd and its clients, one for the cluster (the
# coordinator's server certificate, the workers' client certificates).
tls="$work/tls"
mkdir -p "$tls"
(umask 077
ca() { # name, common name
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj "/CN=$2" -keyout "$tls/$1-key.pem" -out "$tls/$1.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}
issue() { # ca, name, common name, extendedKeyUsage, subjectAltName (optional)
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature"
    echo "extendedKeyUsage=$4"
    if [[ -n "${5:-}" ]]; then echo "subjectAltName=$5"; fi
  } >"$tls/$2.ext"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$3" \
    -keyout "$tls/$2-key.pem" -out "$tls/$2.csr" 2>/dev/null
  openssl x509 -req -in "$tls/$2.csr" -CA "$tls/$1.pem" -CAkey "$tls/$1-key.pem" -CAcreateserial \
    -days 30 -extfile "$tls/$2.ext" -out "$tls/$2.pem" 2>/dev/null
}
ca etcd-ca "isoflow local etcd CA"
issue etcd-ca etcd-server etcd serverAuth,clientAuth "IP:127.0.0.1,DNS:localhost"
# etcd takes a client certificate's common name as the user of a request
# that carries no token: neither of these names an etcd user.
issue etcd-ca etcd-admin etcd-admin clientAuth
issue etcd-ca etcd-client isoflow-node clientAuth
ca ca "isoflow local cluster CA"
issue ca coordinator coordinator serverAuth "IP:127.0.0.1,DNS:localhost"
for i in $(seq "$workers"); do issue ca "worker-$i" "worker-$i" clientAuth; done
)

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

etcd --name isoflow --data-dir "$work/etcd" \
  --listen-client-urls "https://127.0.0.1:$etcd_port" --advertise-client-urls "https://127.0.0.1:$etcd_port" \
  --cert-file "$tls/etcd-server.pem" --key-file "$tls/etcd-server-key.pem" \
  --trusted-ca-file "$tls/etcd-ca.pem" --client-cert-auth \
  --listen-peer-urls "https://127.0.0.1:$peer_port" --initial-advertise-peer-urls "https://127.0.0.1:$peer_port" \
  --peer-cert-file "$tls/etcd-server.pem" --peer-key-file "$tls/etcd-server-key.pem" \
  --peer-trusted-ca-file "$tls/etcd-ca.pem" --peer-client-cert-auth \
  --initial-cluster "isoflow=https://127.0.0.1:$peer_port" --logger=zap --log-level=error >"$work/etcd.log" 2>&1 &
pids+=($!)

# Users before `auth enable` (which needs root): isoflow may read and write
# the cluster's keys (prefix /isoflow, the nodes' default) and nothing else.
etcdctl=(etcdctl --endpoints "https://127.0.0.1:$etcd_port" --cacert "$tls/etcd-ca.pem"
  --cert "$tls/etcd-admin.pem" --key "$tls/etcd-admin-key.pem")
for _ in $(seq 200); do "${etcdctl[@]}" endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
(umask 077; secret >"$work/etcd-password"; echo >>"$work/etcd-password")
secret | "${etcdctl[@]}" user add root --interactive=false >/dev/null
"${etcdctl[@]}" role add root >/dev/null
"${etcdctl[@]}" user grant-role root root >/dev/null
"${etcdctl[@]}" user add isoflow --interactive=false <"$work/etcd-password" >/dev/null
"${etcdctl[@]}" role add isoflow >/dev/null
"${etcdctl[@]}" role grant-permission isoflow readwrite --prefix=true /isoflow/ >/dev/null
"${etcdctl[@]}" user grant-role isoflow isoflow >/dev/null
"${etcdctl[@]}" auth enable >/dev/null

common() {
  cat <<TOML
[auth]
cluster_token = "$cluster_token"
[etcd]
endpoints = ["https://127.0.0.1:$etcd_port"]
ca = "$tls/etcd-ca.pem"
cert = "$tls/etcd-client.pem"
key = "$tls/etcd-client-key.pem"
user = "isoflow"
password_file = "$work/etcd-password"
TOML
}

cat >"$work/coordinator.toml" <<TOML
role = "coordinator"
node_id = "coordinator"
data_dir = "$work/coordinator-data"
[api]
listen = "127.0.0.1:$api_port"
[tls]
cert = "$tls/coordinator.pem"
key = "$tls/coordinator-key.pem"
client_ca = "$tls/ca.pem"
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
[worker.tls]
ca = "$tls/ca.pem"
cert = "$tls/worker-$i.pem"
key = "$tls/worker-$i-key.pem"
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
echo "cluster: etcd on https://127.0.0.1:$etcd_port, coordinator on https://127.0.0.1:$api_port, $workers workers (mutual TLS); logs in $work"

# The seed integration through the cluster, over TLS. The ERP token goes
# into the coordinator's vault (sealed with the key in $work/vault.key);
# workers ask for it per request. Plain http is allowed for the loopback
# demo's ERP only.
ctl=("$bin/isoflowctl" --server "https://127.0.0.1:$api_port" --ca "$tls/ca.pem" --token "$token")
printf '%s' "$erp_token" | "${ctl[@]}" credentials set erp-api --origin "$base" --allow-plain-http
"${ctl[@]}" deploy examples/integrations/seed.yaml
"${ctl[@]}" start orders-to-erp --wait \
  --input "{\"export_url\": \"$base/orders.xml\", \"target_url\": \"$base/erp/orders\"}"
echo
echo "serving; try: ${ctl[*]} runs      (Ctrl-C stops the cluster)"
wait "${pids[1]}"
