#!/usr/bin/env bash
# Build a plain Debian base image (python3 + python3-venv) with debootstrap and buildah,
# for machines that reach Debian's mirror but no image registry. Reuses the image if it
# exists; --force rebuilds it.
#
#   sudo deploy/container/build-base.sh            # -> localhost/mboxii-dlr-base:bookworm
#   BASE_IMAGE=localhost/my-base:12 SUITE=bookworm MIRROR=http://deb.debian.org/debian \
#       sudo -E deploy/container/build-base.sh
#
# Needs root, buildah and debootstrap. STORAGE_DRIVER and BUILDAH_ISOLATION are honoured
# (vfs and chroot work where overlay mounts and user namespaces do not).
set -euo pipefail

SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
BASE_IMAGE=${BASE_IMAGE:-localhost/mboxii-dlr-base:$SUITE}
force=false
[ "${1:-}" = "--force" ] && force=true

if ! $force && buildah inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
    echo "base image $BASE_IMAGE exists (use --force to rebuild)" >&2
    echo "$BASE_IMAGE"
    exit 0
fi
[ "$(id -u)" = 0 ] || { echo "build-base.sh: debootstrap needs root" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/mboxii-dlr-base.XXXXXX")
container=""
cleanup() {
    [ -n "$container" ] && buildah rm "$container" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

rootfs=$work/rootfs
echo "debootstrap $SUITE from $MIRROR ..." >&2
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }

# What a container runtime provides, or what only the build machine needed.
rm -rf "$rootfs"/dev/* "$rootfs"/proc/* "$rootfs"/sys/* "$rootfs"/run/* "$rootfs"/tmp/* \
    "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/var/log/*.log "$rootfs"/debootstrap
echo "deb $MIRROR $SUITE main" >"$rootfs/etc/apt/sources.list"

container=$(buildah from scratch)
buildah copy --quiet "$container" "$rootfs" / >/dev/null
buildah config \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 \
    --cmd /bin/bash \
    --label org.opencontainers.image.description="Debian $SUITE minbase with python3 and python3-venv" \
    "$container"
buildah commit --quiet --rm "$container" "$BASE_IMAGE" >/dev/null
container=""
echo "built base image $BASE_IMAGE" >&2
echo "$BASE_IMAGE"
