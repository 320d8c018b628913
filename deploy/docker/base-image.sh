#!/usr/bin/env bash
# Makes the image deploy/docker/Dockerfile starts FROM, debian:bookworm-slim,
# from Debian's packages when no container registry is reachable (as on the
# machines this project is built on), and imports it into podman under that
# name so that `podman build --pull=never` uses it unchanged. Does nothing
# when podman already has the image. Needs root, podman and mmdebstrap
# (deploy/scripts/setup.sh installs them).
#
# Where a registry is reachable, `podman pull debian:bookworm-slim` does the
# same job. The image made here is minbase with merged /usr and the apt
# settings Debian's slim images ship (no caches, no translations): ~78 MB.
set -euo pipefail
base="${BASE:-debian:bookworm-slim}"
podman image exists "$base" && exit 0

work="$(mktemp -d "${TMPDIR:-/var/tmp}/isoflow-base.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cat >"$work/docker-clean" <<'CONF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
Acquire::GzipIndexes "true";
CONF
# The archive this machine's apt uses, so that the image reaches it too.
sources=/etc/apt/sources.list.d/debian.sources
main="$(awk '/^URIs:/{print $2}' "$sources" | grep -v security | head -n 1)"
security="$(awk '/^URIs:/{print $2}' "$sources" | grep security | head -n 1)"
echo "base-image: making $base from ${main:?no Debian archive in $sources} with mmdebstrap"
start=$SECONDS
# "$1" in the last hook is mmdebstrap's (the new root), not this script's.
# shellcheck disable=SC2016
mmdebstrap --quiet --variant=minbase --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --customize-hook="copy-in $work/docker-clean /etc/apt/apt.conf.d/" \
  --customize-hook='rm -f "$1"/var/cache/apt/*.bin' \
  bookworm "$work/rootfs.tar" \
  "deb $main bookworm main" "deb $main bookworm-updates main" "deb ${security:?} bookworm-security main" \
  >"$work/mmdebstrap.log" 2>&1 || { tail -40 "$work/mmdebstrap.log" >&2; exit 1; }
podman import --quiet --change 'CMD ["bash"]' "$work/rootfs.tar" "$base" >/dev/null
echo "base-image: $base made in $((SECONDS - start)) s"
