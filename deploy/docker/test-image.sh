#!/usr/bin/env bash
# The container image, tested as a user runs it: builds the image from the
# debug binary the tests use (deploy/docker/build.sh --prebuilt
# ${CARGO_TARGET_DIR:-target}/debug/isoflow), checks what the Helm chart
# relies on (user, paths, command, ports, volume) and that the image's own
# configuration refuses to serve an open API, then starts it with podman and
# runs the seed integration through it with the host's isoflowctl:
#
#   - the shop and ERP (examples/seed/endpoints.py) listen on the host's
#     loopback; the container shares the host's network (--network host),
#     its API listens on 127.0.0.1 only, and its egress policy allows the
#     endpoints' one port (docs/security.md: loopback is refused otherwise);
#   - the ERP token goes into the node's vault (`credentials set`), the run
#     must end SUCCEEDED, and the ERP must have received the summary that
#     the export's XML gives when computed here, independently of the
#     integration's JavaScript;
#   - every process in the container (the node and its sandbox processes)
#     must run as uid 10001 on the host, and the sandbox must report its
#     namespaces and seccomp; `podman stop` must end the node cleanly;
#   - under a seccomp profile that refuses user namespaces (as Docker's
#     default does), a code step must still run and the node must say which
#     sandbox layers are missing.
#
# Network: loopback only. Needs root and what deploy/scripts/setup.sh
# installs. Removes its container, volume and image when it ends.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"
bin="$target/debug/isoflow"
ctl="$target/debug/isoflowctl"
for f in "$bin" "$ctl"; do
  [[ -x $f ]] || { echo "test-image: $f is missing: build first (cargo build --workspace --tests)" >&2; exit 2; }
done
command -v podman >/dev/null || { echo "test-image: no podman: run deploy/scripts/setup.sh" >&2; exit 2; }

started=$SECONDS
name="isoflow-test-$$"
image="localhost/isoflow:test-$$"
work="$(mktemp -d "${TMPDIR:-/var/tmp}/isoflow-image-test.XXXXXX")"
endpoints=""
cleanup() {
  podman rm -f -v --time 5 "$name" "$name-no-userns" >/dev/null 2>&1 || true
  podman volume rm -f "$name-data" >/dev/null 2>&1 || true
  # With its untagged stages: a build from the base again takes ~20 s, and
  # each run's binary layer (hundreds of MB) is not left behind.
  podman rmi -f "$image" >/dev/null 2>&1 || true
  [[ -z $endpoints ]] || kill "$endpoints" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "test-image: FAILED: $*" >&2
  if podman container exists "$name" 2>/dev/null; then
    echo "--- the container's log:" >&2
    podman logs "$name" 2>&1 | tail -n 40 >&2 || true
  fi
  exit 1
}

# 1. The image, from the binary the Rust tests use. build.sh's last line
# says how long the build took.
bash deploy/docker/build.sh --prebuilt "$bin" --tag "$image" >"$work/build.log" 2>&1 ||
  { tail -40 "$work/build.log" >&2; fail "the image did not build"; }
tail -n 1 "$work/build.log"

# 2. What the Helm chart relies on.
inspect() { podman image inspect --format "$1" "$image"; }
[[ $(inspect '{{.Config.User}}') == "10001:10001" ]] || fail "the image's user is $(inspect '{{.Config.User}}'), not 10001:10001"
[[ $(inspect '{{json .Config.Entrypoint}}') == '["isoflow"]' ]] || fail "entrypoint $(inspect '{{json .Config.Entrypoint}}')"
[[ $(inspect '{{json .Config.Cmd}}') == '["serve","--config","/etc/isoflow/isoflow.toml"]' ]] ||
  fail "command $(inspect '{{json .Config.Cmd}}')"
for port in 7700/tcp 7701/tcp; do
  inspect '{{json .Config.ExposedPorts}}' | grep -q "\"$port\"" || fail "port $port is not exposed"
done
inspect '{{json .Config.Volumes}}' | grep -q '"/var/lib/isoflow"' || fail "/var/lib/isoflow is not a volume"
listing="$(podman run --rm --network none --entrypoint /bin/sh "$image" -c \
  'id -u; id -g; stat -c "%u %a %n" /var/lib/isoflow /etc/isoflow/isoflow.toml /usr/local/bin/isoflow')"
expected=$'10001\n10001\n10001 750 /var/lib/isoflow\n0 644 /etc/isoflow/isoflow.toml\n0 755 /usr/local/bin/isoflow'
[[ $listing == "$expected" ]] || fail "ownership and modes in the image: got"$'\n'"$listing"$'\n'"expected"$'\n'"$expected"

# 3. The image's own configuration listens on every interface of the
# container: with no API token it must refuse to start, not serve everyone.
if refused="$(podman run --rm --network none "$image" 2>&1)"; then
  fail "the image's configuration served without API tokens: $refused"
fi
grep -q "with no API tokens" <<<"$refused" || fail "the image refused to start, but not for want of tokens: $refused"

# 4. The seed's endpoints, on the host's loopback.
erp_token="seed-erp-token-$RANDOM$RANDOM"
python3 examples/seed/endpoints.py "$erp_token" "$work/erp-received.json" >"$work/port" &
endpoints=$!
for _ in $(seq 200); do
  [[ -s "$work/port" ]] && break
  kill -0 "$endpoints" 2>/dev/null || fail "the seed's endpoints did not start"
  sleep 0.05
done
erp_port="$(cat "$work/port")"
base="http://127.0.0.1:$erp_port"

# 5. The node in the container, with the image's configuration plus what
# this test needs, mounted where the image keeps it (as the Helm chart
# mounts its own): the endpoints' port allowed, and both listeners moved to
# loopback (ISOFLOW_LISTEN, ISOFLOW_HTTP_LISTEN), because the container
# shares the host's network. Tokens and the vault key come from the
# environment, the store lives in a named volume.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
api_port="$(free_port)"
http_port="$(free_port)"
cat deploy/docker/isoflow.toml - >"$work/isoflow.toml" <<TOML

# The seed's shop and ERP listen on the host's loopback: that one port only.
[egress]
allow = ["127.0.0.1:$erp_port"]
TOML
chmod 0644 "$work/isoflow.toml"
api_token="seed-api-token-$RANDOM$RANDOM$RANDOM"
ISOFLOW_VAULT_KEY="$(head -c 32 /dev/urandom | base64)"
export ISOFLOW_VAULT_KEY
podman volume create "$name-data" >/dev/null
# Locked down as the Helm chart runs it, a read-only root with a tmpfs at
# /tmp and no privilege gained through exec, but with podman's default
# capabilities: the node (uid 10001) holds none of them in effect, yet
# podman's seccomp profile allows chroot(2) only to a container that has
# CAP_SYS_CHROOT, and with --cap-drop all the sandbox loses its empty root
# ("namespaces: chroot: EPERM"; README, "Container image").
podman run -d --name "$name" --network host \
  --read-only --tmpfs /tmp --security-opt no-new-privileges \
  -v "$work/isoflow.toml:/etc/isoflow/isoflow.toml:ro" \
  -v "$name-data:/var/lib/isoflow" \
  -e ISOFLOW_LISTEN="127.0.0.1:$api_port" -e ISOFLOW_HTTP_LISTEN="127.0.0.1:$http_port" \
  -e ISOFLOW_API_TOKENS="seed=$api_token" \
  -e ISOFLOW_VAULT_KEY_ID=image-test -e ISOFLOW_VAULT_KEY \
  "$image" >/dev/null
unset ISOFLOW_VAULT_KEY

export ISOFLOW_SERVER="http://127.0.0.1:$api_port" ISOFLOW_TOKEN="$api_token"
ready=""
for _ in $(seq 300); do
  [[ $(podman inspect --format '{{.State.Running}}' "$name" 2>/dev/null) == true ]] || fail "the container stopped"
  if "$ctl" integrations >/dev/null 2>&1; then ready=1; break; fi
  sleep 0.1
done
[[ -n $ready ]] || fail "the node in the container did not answer on 127.0.0.1:$api_port in 30 s"
echo "test-image: the node in the container answers on 127.0.0.1:$api_port"

# 6. The seed, as a user runs it against a served node.
printf '%s' "$erp_token" | "$ctl" credentials set erp-api --origin "$base" --allow-plain-http >/dev/null ||
  fail "credentials set"
"$ctl" deploy examples/integrations/seed.yaml >/dev/null || fail "deploy"
run_id="$("$ctl" start orders-to-erp \
  --input "{\"export_url\": \"$base/orders.xml\", \"target_url\": \"$base/erp/orders\"}")" || fail "start"
"$ctl" watch "$run_id" >"$work/watch.txt" 2>&1 || { cat "$work/watch.txt" >&2; fail "run $run_id did not succeed"; }
"$ctl" show "$run_id" >"$work/show.txt" || fail "show $run_id"
grep -Eq '^status[[:space:]]+succeeded$' "$work/show.txt" ||
  { cat "$work/show.txt" >&2; fail "run $run_id is not SUCCEEDED"; }
output="$("$ctl" output "$run_id")" || fail "output $run_id"

# What the ERP must have received, computed from the export's XML here.
python3 - "$work/erp-received.json" "$output" <<'PY' || fail "the ERP did not receive the right summary"
import json, sys, xml.etree.ElementTree as ET
sys.path.insert(0, "examples/seed")
import endpoints

doc = ET.fromstring(endpoints.orders_xml(100))
open_orders = [o for o in doc.findall("order") if o.get("status") != "cancelled"]
cents = sum(round(float(l.get("price")) * 100) * int(l.get("qty")) for o in open_orders for l in o.findall("line"))
received = json.load(open(sys.argv[1]))
output = json.loads(sys.argv[2])
checks = {
    "count": (received["count"], len(open_orders)),
    "total": (round(received["total"] * 100), cents),
    "exportedAt": (received["exportedAt"], doc.get("exported")),
    "order ids": ([o["id"] for o in received["orders"]], [o.get("id") for o in open_orders]),
    "the run's output": ((output["orders"], round(output["total"] * 100), output["status"]), (len(open_orders), cents, 201)),
}
bad = {k: v for k, v in checks.items() if v[0] != v[1]}
for k, (got, want) in bad.items():
    print(f"test-image: {k}: got {got!r}, expected {want!r}", file=sys.stderr)
if bad:
    sys.exit(1)
print(f"test-image: the ERP received {len(open_orders)} orders worth {cents / 100:.2f}, as computed from the export")
PY

# 7. Who runs what: every process of the container as uid 10001 on the
# host, sandbox processes among them, and the sandbox's layers as the node
# logged them at start.
podman top "$name" huser pid args >"$work/top.txt" || fail "podman top"
sandboxes="$(grep -c 'sandbox-process' "$work/top.txt" || true)"
((sandboxes > 0)) || { cat "$work/top.txt" >&2; fail "no sandbox processes in the container"; }
if awk 'NR > 1 && $1 != "10001"' "$work/top.txt" | grep -q .; then
  cat "$work/top.txt" >&2
  fail "a process in the container runs as another uid than 10001"
fi
echo "test-image: the node and $sandboxes sandbox processes run as uid 10001"
layers="$(podman logs "$name" 2>&1 | grep 'sandbox processes start locked down' || true)"
for layer in seccomp=true network_namespace=true empty_root=true; do
  grep -q "$layer" <<<"$layers" || fail "the sandbox does not report $layer: ${layers:-no line about its layers}"
done
echo "test-image: sandbox layers: $(grep -o 'seccomp=.*threads=[a-z]*' <<<"$layers")"

# 8. A graceful stop: SIGTERM reaches the node (pid 1 in the container).
podman stop --time 30 "$name" >/dev/null
code="$(podman inspect --format '{{.State.ExitCode}}' "$name")"
[[ $code == 0 ]] || fail "the node exited with $code on podman stop"

# 9. A container runtime that refuses user namespaces, as Docker's default
# seccomp profile does without CAP_SYS_ADMIN: podman's own profile with
# `unshare` refused. Code steps must still run (seccomp, no capabilities),
# and the node must say which layers are missing.
python3 - /usr/share/containers/seccomp.json "$work/no-unshare.json" <<'PY'
import json, sys
profile = json.load(open(sys.argv[1]))
for rule in profile["syscalls"]:
    if rule.get("action") == "SCMP_ACT_ALLOW" and "unshare" in rule["names"]:
        rule["names"].remove("unshare")
profile["syscalls"].append({"names": ["unshare"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1})
json.dump(profile, open(sys.argv[2], "w"))
PY
printf '%s\n' 'export default function (input) { return { sum: input.a + input.b }; }' >"$work/step.js"
chmod 0644 "$work/step.js"
no_userns=(--network none --security-opt "seccomp=$work/no-unshare.json")
sum="$(podman run --rm "${no_userns[@]}" -v "$work/step.js:/step.js:ro" "$image" \
  eval /step.js --input '{"a": 2, "b": 40}')" || fail "a code step without user namespaces: $sum"
[[ $sum == '{"sum":42}' ]] || fail "a code step without user namespaces returned $sum"
podman run -d --name "$name-no-userns" "${no_userns[@]}" -e ISOFLOW_LISTEN=127.0.0.1:7700 "$image" >/dev/null
warned=""
for _ in $(seq 100); do
  warned="$(podman logs "$name-no-userns" 2>&1 | grep 'sandbox layer not available' || true)"
  [[ -n $warned ]] && break
  sleep 0.1
done
podman rm -f -v --time 5 "$name-no-userns" >/dev/null
grep -q 'namespaces: unshare with a user namespace: EPERM' <<<"$warned" ||
  fail "without user namespaces the node did not say the layer is missing: ${warned:-nothing said}"
echo "test-image: without user namespaces a code step still runs, and the node warns: ${warned#*WARN }"

echo "test-image: ok in $((SECONDS - started)) s (image $image, run $run_id)"
