#!/usr/bin/env bash
# Builds the isoflow image with podman and prints how long it took.
#
#   deploy/docker/build.sh [--tag NAME]                               # compiles the release binary
#   deploy/docker/build.sh --prebuilt PATH/TO/isoflow [--tag NAME]    # copies one built outside
#
# The default tag is localhost/isoflow:latest. The base image,
# debian:bookworm-slim, is made from Debian's packages if podman does not
# have it (deploy/docker/base-image.sh), so this works without a registry.
# Needs root and what deploy/scripts/setup.sh installs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
tag=localhost/isoflow:latest
prebuilt=""
while (($#)); do
  case "$1" in
    --prebuilt) prebuilt="${2:?--prebuilt needs the path of an isoflow binary}"; shift 2 ;;
    --tag) tag="${2:?--tag needs a name}"; shift 2 ;;
    *) echo "build.sh: unknown argument $1 (--prebuilt PATH, --tag NAME)" >&2; exit 2 ;;
  esac
done

bash "$root/deploy/docker/base-image.sh"
start=$SECONDS
if [[ -n $prebuilt ]]; then
  [[ -x $prebuilt ]] || { echo "build.sh: $prebuilt is not an executable" >&2; exit 2; }
  prebuilt="$(realpath "$prebuilt")"
  # A context of two files: the binary and the image's configuration, not
  # the workspace (whose target folder holds gigabytes).
  context="$(mktemp -d "${TMPDIR:-/var/tmp}/isoflow-image.XXXXXX")"
  trap 'rm -rf "$context"' EXIT
  mkdir -p "$context/deploy/docker"
  cp "$root/deploy/docker/isoflow.toml" "$context/deploy/docker/"
  ln "$prebuilt" "$context/isoflow" 2>/dev/null || cp "$prebuilt" "$context/isoflow"
  podman build --pull=never --target prebuilt -f "$root/deploy/docker/Dockerfile" -t "$tag" "$context"
  what="from $prebuilt"
else
  # The builder downloads Rust and crates over HTTPS, trusting what this
  # machine trusts: its CA bundle holds the Mozilla roots, and the CA of a
  # TLS-inspecting proxy where one is in the way (as on the machines this
  # project is built on). Mounted for the builder's download steps only.
  secret=()
  bundle=/etc/ssl/certs/ca-certificates.crt
  [[ -s $bundle ]] && secret=(--secret "id=ca-certificates,src=$bundle")
  podman build --pull=never --target release "${secret[@]}" -f "$root/deploy/docker/Dockerfile" -t "$tag" "$root"
  what="with the release build"
fi
size="$(podman image inspect --format '{{.Size}}' "$tag")"
echo "build.sh: $tag built $what in $((SECONDS - start)) s, $((size / 1000000)) MB"
