#!/usr/bin/env bash
# Installs everything Isoflow's build and tests need on a fresh Debian 12 machine.
# Idempotent: a warm machine skips what it already has. Run as root (or with sudo).
#
#   - Debian packages: protoc, libclang (bindgen), etcd, libnode's runtime deps,
#     openssl (cluster.sh makes its certificates with it), curl (the platform example),
#     python3-venv (deploy/helm/check.sh puts helm and kubernetes-validate in a venv)
#   - libnode108 + libnode-dev (V8 10.2) extracted into .deps/libnode, because the
#     package conflicts with the preinstalled nodejs and must not be apt-installed
#   - a Python venv in .deps/python with client/python/requirements-dev.txt (grpcio,
#     grpcio-tools, protobuf, googleapis-common-protos, pytest) for the Python client's
#     tests: Debian 12 has no googleapis-common-protos and its grpc-tools is too old
#   - the container image's tools (deploy/docker): podman with runc, and mmdebstrap,
#     which makes the debian:bookworm-slim base where no registry is reachable;
#     podman's settings for this kind of machine, where none are set already
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
deps="$root/.deps"
libnode_dir="$deps/libnode"

# Installs the packages of a list that are missing; "$1" is extra apt options.
install_missing() {
  local options="$1" missing=() p
  shift
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    echo "setup: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086 # options are words
    apt-get install -y -qq $options "${missing[@]}" >/dev/null
  fi
}
install_missing "" protobuf-compiler libclang-dev etcd-server etcd-client libuv1 libc-ares2 python3-pip python3-venv \
  openssl curl
# The container image's. runc is named so that it, not crun, satisfies
# podman's "crun | runc": crun refuses a hybrid cgroup layout like this
# machine's. Recommends (buildah, slirp4netns, dbus-user-session, ...) are
# for rootless use, which nothing here needs.
install_missing --no-install-recommends podman runc conmon containernetworking-plugins \
  golang-github-containers-common iptables mmdebstrap
# The console's browser tests: Debian's headless Chromium and its WebDriver
# (nothing downloads a browser of its own); a font so screenshots have text.
install_missing --no-install-recommends chromium chromium-driver fonts-dejavu-core

if [[ ! -f "$libnode_dir/usr/lib/x86_64-linux-gnu/libnode.so.108" || ! -f "$libnode_dir/usr/include/node/v8.h" ]]; then
  echo "setup: extracting libnode108 + libnode-dev into $libnode_dir"
  tmp="$(mktemp -d)"
  (cd "$tmp" && apt-get download libnode108 libnode-dev >/dev/null 2>&1 || { apt-get update -qq && apt-get download libnode108 libnode-dev; })
  rm -rf "$libnode_dir"
  mkdir -p "$libnode_dir"
  for d in "$tmp"/*.deb; do dpkg -x "$d" "$libnode_dir"; done
  rm -rf "$tmp"
fi
# libnode-dev ships the unversioned symlink pointing at libnode.so.108; make sure it resolves.
lib="$libnode_dir/usr/lib/x86_64-linux-gnu"
[[ -e "$lib/libnode.so" ]] || ln -sf libnode.so.108 "$lib/libnode.so"

# podman: runc rather than crun (above), and default ulimits below this
# kind of machine's hard limits, which podman's own defaults (nofile 1048576)
# exceed: every container would fail to start ("error setting rlimit").
# nproc 4096 and nofile 20000 are what worked here (an nproc equal to the
# shell's hard limit did not). Only what no containers.conf sets already is
# written, in a drop-in of ours.
dropin=/etc/containers/containers.conf.d/50-isoflow.conf
set_in_conf() {
  grep -qsE "^[[:space:]]*$1[[:space:]]*=" /etc/containers/containers.conf /etc/containers/containers.conf.d/*.conf
}
conf=""
if ! set_in_conf default_ulimits; then
  nofile="$(ulimit -Hn)"
  [[ $nofile != unlimited && $nofile -lt 20000 ]] || nofile=20000
  conf+=$'[containers]\n'"default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=4096:4096\"]"$'\n'
fi
set_in_conf runtime || conf+=$'[engine]\nruntime = "runc"\n'
if [[ -n $conf ]]; then
  echo "setup: podman settings in $dropin"
  mkdir -p "$(dirname "$dropin")"
  printf '# Written by isoflow deploy/scripts/setup.sh.\n%s' "$conf" >>"$dropin"
fi

# The Python client's test dependencies, pinned; installed again only when the
# pins change or the venv no longer imports them.
venv="$deps/python"
requirements="$root/client/python/requirements-dev.txt"
if ! cmp -s "$requirements" "$venv/requirements-dev.txt" \
  || ! "$venv/bin/python" -c 'import grpc, grpc_tools, google.rpc.status_pb2, pytest' 2>/dev/null; then
  echo "setup: installing the Python client's test dependencies into $venv"
  rm -rf "$venv"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$venv/requirements-dev.txt"
fi
echo "setup: ok (libnode in $libnode_dir, Python venv in $venv)"
