#!/usr/bin/env bash
# Build the mboxii-dlr image with buildah, on a machine without Docker or an image registry:
# the base is the local Debian image of build-base.sh unless BASE_IMAGE names another.
#
#   sudo deploy/container/build-image.sh                     # -> localhost/mboxii-dlr:latest
#   IMAGE=localhost/mboxii-dlr:1.2 sudo -E deploy/container/build-image.sh
#
# Environment:
#   IMAGE          the tag to build (default localhost/mboxii-dlr:latest)
#   BASE_IMAGE     the base (default: build or reuse localhost/mboxii-dlr-base:bookworm)
#   PIP_CERT       a CA bundle on this machine for pip to trust during the build (behind a
#                  TLS-inspecting proxy); it is mounted read-only, never stored in the image
#   PIP_INDEX_URL  a package index mirror for the build
# Prints the new image id. The image it replaces under the same tag is removed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

IMAGE=${IMAGE:-localhost/mboxii-dlr:latest}
if [ -z "${BASE_IMAGE:-}" ]; then
    BASE_IMAGE=$("$here/build-base.sh")
fi

args=(--format docker --build-arg "BASE_IMAGE=$BASE_IMAGE" --tag "$IMAGE" --file "$root/Dockerfile")
if [ -n "${PIP_CERT:-}" ]; then
    # Over the base's own bundle: both supported bases have one, so the mount leaves no
    # empty mount point behind in the image.
    cert=/etc/ssl/certs/ca-certificates.crt
    args+=(--volume "$PIP_CERT:$cert:ro" --build-arg "PIP_CERT=$cert")
fi
if [ -n "${PIP_INDEX_URL:-}" ]; then
    args+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")
fi

previous=$(buildah inspect --type image --format '{{.FromImageID}}' "$IMAGE" 2>/dev/null || true)
buildah bud --quiet "${args[@]}" "$root" >&2
current=$(buildah inspect --type image --format '{{.FromImageID}}' "$IMAGE")
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
    buildah rmi "$previous" >/dev/null 2>&1 || true
fi
echo "$current"
