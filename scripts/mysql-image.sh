#!/usr/bin/env bash
# Builds the clone-capable MySQL image from Debian's `sid` packages, unless it is already present.
#
#   scripts/mysql-image.sh [--rebuild]
#
# The image is tagged `clone-relay-mysql:<mysql version>` and `clone-relay-mysql:local` (the
# harness default). The Debian mirror is taken from this machine's apt configuration.
set -euo pipefail

repo=clone-relay-mysql
alias_tag="$repo:local"
rebuild=${1:-}

present() { docker image inspect "$alias_tag" >/dev/null 2>&1; }

command -v docker >/dev/null || { echo "mysql-image: docker is not installed" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "mysql-image: the Docker engine is not reachable" >&2; exit 1; }

# Several test binaries may ask for the image at once: build it once.
exec 9>/var/tmp/clone-relay-mysql-image.lock
flock 9
if present && [ "$rebuild" != "--rebuild" ]; then
  exit 0
fi

if ! command -v debootstrap >/dev/null; then
  echo "mysql-image: installing debootstrap" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >&2
fi

# The first non-security Debian archive URI in the apt configuration (deb822 or one-line form).
mirror_from_apt() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk '
      /^[[:space:]]*$/ { if (uri != "" && suites !~ /security/) { print uri; exit } uri=""; suites="" ; next }
      /^URIs:/ { uri=$2 }
      /^Suites:/ { suites=$0 }
      END { if (uri != "" && suites !~ /security/) print uri }
    ' "$f"
  done
  { cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true; } |
    awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; break } }'
}
mirror=${CLONE_RELAY_DEBIAN_MIRROR:-$(mirror_from_apt | head -n 1 || true)}
[ -n "$mirror" ] || { echo "mysql-image: no Debian mirror found in the apt configuration" >&2; exit 1; }

work=$(mktemp -d /var/tmp/clone-relay-rootfs.XXXXXX)
trap 'rm -rf "$work"' EXIT
root="$work/root"

echo "mysql-image: debootstrap sid (mysql-server-core) into $root" >&2
debootstrap --variant=minbase \
  --include=mysql-server-core,mysql-client-core,iproute2,iptables,procps \
  sid "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
  tail -n 30 "$work/debootstrap.log" >&2
  exit 1
}

version=$(dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${Version}' mysql-server-core)
version=${version%%-*}
version=${version#*:}
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc "$root"/usr/share/man

echo "mysql-image: importing $repo:$version" >&2
tar -C "$root" -c . | docker import --change "LABEL org.clone-relay.mysql-version=$version" - "$repo:$version-base" >/dev/null

# A data directory initialised once, in the image: each server the harness starts copies it
# rather than initialising its own (seconds each), and makes its own UUID, certificates and RSA
# keys at its first start.
echo "mysql-image: initialising the template data directory" >&2
init="clone-relay-mysql-init-$$"
docker run --name "$init" --entrypoint sh "$repo:$version-base" -c '
  set -eu
  mkdir -p /var/run/mysqld
  mysqld --no-defaults --initialize-insecure --user=root --datadir=/var/lib/clone-relay-template \
    > /tmp/initialize.log 2>&1 || { cat /tmp/initialize.log >&2; exit 1; }
  # Each server makes its own UUID, certificates and RSA keys at its first start.
  rm -f /var/lib/clone-relay-template/auto.cnf /var/lib/clone-relay-template/*.pem \
    /tmp/initialize.log' >&2 || {
  docker rm -f "$init" >/dev/null 2>&1
  exit 1
}
docker commit --change 'CMD ["sh"]' "$init" "$repo:$version" >/dev/null
docker rm "$init" >/dev/null
docker rmi "$repo:$version-base" >/dev/null
docker tag "$repo:$version" "$alias_tag"
echo "mysql-image: built $repo:$version (tagged $alias_tag)" >&2
