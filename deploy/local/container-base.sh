#!/usr/bin/env bash
# container-base.sh: a local stand-in for deploy/Containerfile's runtime base
# (gcr.io/distroless/cc-debian12, which cannot be pulled here: no image registry is
# reachable), made from Debian itself: a `debootstrap --variant=minbase` bookworm rootfs
# with ca-certificates (glibc, libgcc and CA certificates, as distroless cc has; unlike it,
# also a shell), imported into podman as localhost/sendmill-base:bookworm. Cached: when
# the image exists nothing is done. Prints the image's name. The image test
# (tests/tests/deploy.rs) builds the Containerfile on it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

image=localhost/sendmill-base:bookworm
if podman image exists "$image"; then
  echo "$image"
  exit 0
fi
command -v debootstrap >/dev/null || die "debootstrap is missing (deploy/local/install-packages.sh installs it)"
dir=$SENDMILL_LOCAL_DIR/container-base
rm -rf "$dir"
mkdir -p "$dir"
log "container base: debootstrap bookworm (minbase + ca-certificates) into $dir/rootfs"
debootstrap --variant=minbase --include=ca-certificates bookworm "$dir/rootfs" \
  http://deb.debian.org/debian >"$dir/debootstrap.log" 2>&1 \
  || die "debootstrap failed (see $dir/debootstrap.log)"
# Apt's lists and caches are not part of a runtime base.
rm -rf "$dir/rootfs/var/lib/apt/lists/"* "$dir/rootfs/var/cache/apt/"*
tar -C "$dir/rootfs" -c . | podman import - "$image" >/dev/null
rm -rf "$dir/rootfs"
echo "$image"
