#!/usr/bin/env bash
# Build a Debian bookworm base image with debootstrap + `docker import` and print its tag.
#
# For machines that cannot pull from Docker Hub (CI here, air-gapped hospital build hosts):
# the result stands in for `python:3.11-slim-bookworm` (Debian's Python 3.11 with venv, CA
# certificates) and is the base of the test Orthanc image too. The tag carries a hash of
# this script, so the slow debootstrap runs once per machine and again only when this file
# changes:   BASE=$(bash scripts/docker-base.sh)
#   DEBIAN_MIRROR   Debian mirror (default http://deb.debian.org/debian)
#   DOCKER          docker client (default: docker)
set -euo pipefail
DOCKER=${DOCKER:-docker}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
hash=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-12)
tag="ct-triage-ci/bookworm-base:$hash"
if "$DOCKER" image inspect "$tag" >/dev/null 2>&1; then
  echo "$tag"
  exit 0
fi
root=$(mktemp -d /var/tmp/ct-triage-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "debootstrap bookworm into $root (once per machine)" >&2
debootstrap --variant=minbase \
  --include=python3,python3-venv,python-is-python3,ca-certificates \
  bookworm "$root" "$MIRROR" >&2
# What the official slim images also leave out: package caches and lists, docs.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
  "$root"/usr/share/doc/* "$root"/usr/share/man/*
printf 'deb %s bookworm main\ndeb %s bookworm-updates main\n' "$MIRROR" "$MIRROR" \
  >"$root/etc/apt/sources.list"
tar --numeric-owner -C "$root" -c . | "$DOCKER" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["bash"]' \
  - "$tag" >&2
echo "$tag"
