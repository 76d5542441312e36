#!/bin/sh
# A Python 3.11 base image built from Debian's own packages, for machines that reach Debian's
# package mirror but no image registry (docker.io, quay.io): debootstrap a minimal bookworm with
# python3 and venv, trim what a server never reads, and import the folder as an image.
#
#   sh docker/base-image.sh [ENGINE] [TAG]      # ENGINE: podman (default) or docker; root only
#   podman build --format docker -f docker/Dockerfile.cpu \
#       --build-arg BASE_IMAGE=localhost/clarivis-base:bookworm -t clarivis:cpu .
#
# Where a registry is reachable, python:3.11-slim-bookworm (the Dockerfiles' default) does the
# same job and this script is not needed. Needs: debootstrap (apt-get install debootstrap).
set -eu

ENGINE=${1:-podman}
TAG=${2:-localhost/clarivis-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

ROOTFS=$(mktemp -d)
trap 'rm -rf "$ROOTFS"' EXIT
# minbase: dpkg, apt and the essential set (~ 80 MB); python3-venv brings ensurepip's pip wheel;
# ca-certificates lets pip reach an https index; passwd gives useradd (the non-root user).
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,passwd \
    bookworm "$ROOTFS" "$MIRROR"
# What a server never reads: package caches and lists (apt-get update refetches them), docs,
# man pages and translations (~ 140 MB of the 275 MB).
rm -rf "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/usr/share/doc/* \
    "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/* "$ROOTFS"/usr/share/info/* \
    "$ROOTFS"/var/log/* "$ROOTFS"/tmp/*
tar -C "$ROOTFS" --numeric-owner -c . | "$ENGINE" import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' - "$TAG"
"$ENGINE" image inspect --format '{{.Size}}' "$TAG" | awk -v t="$TAG" '{printf "%s: %.0f MB\n", t, $1 / 1e6}'
