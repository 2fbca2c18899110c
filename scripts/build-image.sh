#!/usr/bin/env bash
# Build the container image: docker when a daemon answers, else podman.
#
#   scripts/build-image.sh [extra build arguments...]
#
# Environment:
#   IMAGE             tag to build (default localhost/tenant-worker:dev)
#   PYTHON_IMAGE      base image; when unset, python:3.12-slim is used if it is present or can be pulled,
#                     else a Debian base made with debootstrap (scripts/build-base-image.sh)
#   CONTAINER_ENGINE  docker or podman (default: docker if `docker info` answers, else podman)
#   CA_BUNDLE         CA bundle handed to pip as the `cacert` build secret (default: the system bundle)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
image="${IMAGE:-localhost/tenant-worker:dev}"
default_base="python:3.12-slim"
local_base="localhost/python-base:bookworm"

# shellcheck source=scripts/lib/container-engine.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/container-engine.sh"
container_engine || exit $?

cmd=("$engine")
build_flags=()
if [[ "$engine" == podman ]]; then
    # crun fails on some cgroup layouts (ours); runc works everywhere podman does.
    if command -v runc >/dev/null 2>&1; then
        cmd+=(--runtime runc)
    fi
    # HEALTHCHECK exists only in the docker image format.
    build_flags+=(--format docker)
else
    export DOCKER_BUILDKIT=1
fi

base="${PYTHON_IMAGE:-}"
if [[ -z "$base" ]]; then
    if "$engine" image inspect "$default_base" >/dev/null 2>&1; then
        base="$default_base"
    elif timeout 120 "${cmd[@]}" pull --quiet "$default_base" >/dev/null 2>&1; then
        base="$default_base"
    else
        echo "build-image: cannot pull $default_base (no registry?); using the Debian base $local_base" >&2
        CONTAINER_ENGINE="$engine" "$root/scripts/build-base-image.sh" "$local_base"
        base="$local_base"
    fi
fi

ca_bundle="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
if [[ -s "$ca_bundle" ]]; then
    build_flags+=(--secret "id=cacert,src=$ca_bundle")
fi

version="$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$root/pyproject.toml" | head -n 1)"
revision="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git -C "$root" status --porcelain -- Dockerfile entrypoint.sh config worker pyproject.toml \
        constraints.txt 2>/dev/null)" ]]; then
    revision="$revision-dirty"
fi

echo "build-image: $engine build -t $image (base $base)" >&2
"${cmd[@]}" build \
    --network host \
    "${build_flags[@]}" \
    --build-arg "PYTHON_IMAGE=$base" \
    --build-arg "VERSION=${version:-0.0.0}" \
    --build-arg "REVISION=$revision" \
    --build-arg "CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --tag "$image" \
    "$@" \
    "$root"

size="$("$engine" image inspect --format '{{.Size}}' "$image")"
echo "build-image: built $image ($((size / 1000000)) MB)" >&2
