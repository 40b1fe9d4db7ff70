#!/usr/bin/env bash
# Builds the relay's container image without a registry: the release binary, stripped, with
# exactly what it needs at run time (the dynamic loader and the C libraries it links, name
# resolution through /etc/hosts and DNS, a numeric non-root user, a writable /tmp), imported from
# a tar with `docker import`.
#
#   scripts/relay-image.sh [--rebuild]
#
# Tags `clone-relay:<version>` and `clone-relay:local`. The image carries the binary's SHA-256
# as a label; an image of the same binary is kept, so a second run only rebuilds the binary
# (a no-op when nothing changed). Prints the image's name and size.
set -euo pipefail
cd "$(dirname "$0")/.."

repo=clone-relay
uid=10001
rebuild=${1:-}

command -v docker >/dev/null || { echo "relay-image: docker is not installed" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "relay-image: the Docker engine is not reachable" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
[ -n "$version" ] || { echo "relay-image: no version in Cargo.toml" >&2; exit 1; }
tag="$repo:$version"

# Several test binaries may ask for the image at once: build it once.
exec 9>/var/tmp/clone-relay-image.lock
flock 9

target=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet -p clone-relay --bin clone-relay >&2
binary="$target/release/clone-relay"
digest=$(sha256sum "$binary" | cut -d' ' -f1)

present=$(docker image inspect --format '{{ index .Config.Labels "org.clone-relay.binary-sha256" }}' "$tag" 2>/dev/null || true)
if [ "$present" = "$digest" ] && [ "$rebuild" != "--rebuild" ]; then
  docker tag "$tag" "$repo:local"
  echo "$tag"
  exit 0
fi

work=$(mktemp -d /var/tmp/clone-relay-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$root/usr/local/bin" "$root/etc" "$root/tmp"
chmod 1777 "$root/tmp"
strip --strip-all -o "$root/usr/local/bin/clone-relay" "$binary"

# The loader and every library the binary links, at the paths it looks for them.
ldd "$binary" | awk '/=> \// { print $3 } $1 ~ /^\// { print $1 }' | while read -r lib; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done

cat >"$root/etc/passwd" <<EOF
root:x:0:0:root:/nonexistent:/sbin/nologin
relay:x:$uid:$uid:clone-relay:/nonexistent:/sbin/nologin
EOF
cat >"$root/etc/group" <<EOF
root:x:0:
relay:x:$uid:
EOF
# glibc resolves through files and DNS without loadable modules; a container engine replaces
# /etc/hosts and /etc/resolv.conf at run time.
echo "hosts: files dns" >"$root/etc/nsswitch.conf"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n' >"$root/etc/hosts"
: >"$root/etc/resolv.conf"

tar --numeric-owner --owner=0 --group=0 -C "$root" -c . |
  docker import \
    --change "USER $uid:$uid" \
    --change "ENV TMPDIR=/tmp" \
    --change 'ENTRYPOINT ["/usr/local/bin/clone-relay"]' \
    --change "LABEL org.clone-relay.binary-sha256=$digest" \
    --change "LABEL org.opencontainers.image.version=$version" \
    - "$tag" >/dev/null
docker tag "$tag" "$repo:local"
size=$(docker image inspect --format '{{ .Size }}' "$tag")
echo "relay-image: built $tag ($((size / 1024 / 1024)) MiB, user $uid)" >&2
echo "$tag"
