#!/usr/bin/env bash
# Build the local base image the container test uses, once per machine (podman's store persists).
#
# No image registry is reachable on the project's machines, so `python:3.11-slim` cannot be
# pulled; a Debian bookworm root with python3 + venv is bootstrapped from Debian's packages
# instead and imported as localhost/debian-python:bookworm. Needs root, podman, runc and
# debootstrap (`.ci/run` installs them with apt when missing). Does nothing when the image exists.
set -euo pipefail
IMAGE="${MULTIVERSE_TEST_BASE_IMAGE:-localhost/debian-python:bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
if podman image exists "$IMAGE"; then
    echo "base image $IMAGE: present"
    exit 0
fi
ROOTFS="$(mktemp -d /tmp/multiverse-rootfs.XXXXXX)"
trap 'rm -rf "$ROOTFS"' EXIT
echo "base image $IMAGE: bootstrapping Debian bookworm (python3, python3-venv) into $ROOTFS" >&2
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$ROOTFS" "$MIRROR" >&2
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
tar -C "$ROOTFS" -c . | podman import - "$IMAGE" >&2
echo "base image $IMAGE: built"
