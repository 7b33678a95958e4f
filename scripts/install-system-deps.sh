#!/usr/bin/env bash
# Debian packages the tests use: dciodvfy (dicom3tools), a real Orthanc PACS with DICOMweb;
# storescu (dcmtk); the Docker engine, compose and debootstrap for tests/docker (the test
# starts dockerd itself when it is not running).
set -euo pipefail
PKGS="dicom3tools orthanc orthanc-dicomweb docker-compose postgresql chromium dcmtk docker.io debootstrap"
# The Python-backend stub of the tests' tritonserver (nvidia-pytriton) links libpython3.11.
PKGS="$PKGS libpython3.11"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
# npm fetches the OHIF viewer of the browser test (scripts/install-ohif.sh); NodeSource's
# nodejs package bundles it, Debian's is the separate npm package.
command -v npm >/dev/null 2>&1 || missing="$missing npm"
[ -z "$missing" ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
# Orthanc's package tries to start a system service; policy-rc.d may refuse, which is fine:
# the tests start their own Orthanc on loopback.
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
