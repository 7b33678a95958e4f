#!/usr/bin/env bash
# Build one of the images with BuildKit, the way the docker test (tests/docker/) does.
#   scripts/docker-build.sh cpu|gpu|orthanc TAG
# Environment:
#   BASE_IMAGE   base image (default: each Dockerfile's own, e.g. python:3.11-slim-bookworm;
#                where Docker Hub is out of reach: BASE_IMAGE=$(scripts/docker-base.sh))
#   CA_FILE      extra CA certificate(s), PEM, for pip/apt inside the build (a TLS-intercepting
#                proxy); default: $PIP_CERT, $REQUESTS_CA_BUNDLE or $SSL_CERT_FILE when set
#   PIP_CONF     a pip.conf with your package index / mirror (optional)
#   DOCKER       docker client (default: docker; needs BuildKit: Docker >= 20.10)
# CA_FILE and PIP_CONF reach the build as BuildKit secrets: no image layer keeps them.
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:?usage: $0 cpu|gpu|orthanc TAG}
tag=${2:?usage: $0 cpu|gpu|orthanc TAG}
case "$kind" in
  cpu) dockerfile=deploy/Dockerfile.cpu ;;
  gpu) dockerfile=deploy/Dockerfile.gpu ;;
  orthanc) dockerfile=deploy/orthanc/Dockerfile ;;
  *) echo "unknown image '$kind' (cpu, gpu or orthanc)" >&2; exit 2 ;;
esac
args=(--network host -f "$dockerfile" -t "$tag")
[ -n "${BASE_IMAGE:-}" ] && args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
ca=${CA_FILE:-${PIP_CERT:-${REQUESTS_CA_BUNDLE:-${SSL_CERT_FILE:-}}}}
[ -n "$ca" ] && args+=(--secret "id=ca,src=$ca")
[ -n "${PIP_CONF:-}" ] && args+=(--secret "id=pipconf,src=$PIP_CONF")
DOCKER_BUILDKIT=1 "${DOCKER:-docker}" build "${args[@]}" .
