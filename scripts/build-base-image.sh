#!/usr/bin/env bash
# Build a local stand-in for python:3.12-slim from Debian's packages, for machines that reach no image
# registry (our CI): debootstrap a minimal bookworm with python3 and python3-venv and import it.
#
#   scripts/build-base-image.sh [IMAGE]      default IMAGE: localhost/python-base:bookworm
#
# Needs root, debootstrap and podman (or a docker daemon). Does nothing when IMAGE already exists,
# unless REBUILD_BASE=1.
set -euo pipefail

image="${1:-localhost/python-base:bookworm}"
suite="${BASE_SUITE:-bookworm}"

# shellcheck source=scripts/lib/container-engine.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/container-engine.sh"
container_engine || exit $?

if [[ "${REBUILD_BASE:-0}" != 1 ]] && "$engine" image inspect "$image" >/dev/null 2>&1; then
    echo "base image $image already exists"
    exit 0
fi

mirror="${DEBIAN_MIRROR:-}"
if [[ -z "$mirror" ]]; then
    # The machine's own Debian mirror (deb822 or one-line format), else the public one.
    mirror="$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\/debian\)[[:space:]]*$/\1/p' \
        /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1 || true)"
fi
if [[ -z "$mirror" ]]; then
    mirror="$(sed -n 's/^deb[[:space:]]\{1,\}\(http[^[:space:]]*\/debian\)[[:space:]].*/\1/p' \
        /etc/apt/sources.list 2>/dev/null | head -n 1 || true)"
fi
mirror="${mirror:-http://deb.debian.org/debian}"

rootfs="$(mktemp -d "${TMPDIR:-/tmp}/python-base.XXXXXX")"
trap 'rm -rf "$rootfs"' EXIT

echo "debootstrap $suite from $mirror into $rootfs"
debootstrap --variant=minbase --include=python3,python3-venv "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
    tail -n 30 "$rootfs.log" >&2
    rm -f "$rootfs.log"
    exit 1
}
rm -f "$rootfs.log"
# Same trimming as the official slim images: no apt lists, docs or man pages.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*

tar -C "$rootfs" -c . | "$engine" import --change 'CMD ["python3"]' - "$image"
echo "imported $image"
