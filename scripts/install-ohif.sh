#!/usr/bin/env bash
# The OHIF viewer and the browser driver the browser test (tests/browser/test_ohif.py) uses:
# the prebuilt dist/ of the npm package @ohif/app and playwright-core (no dependencies, no
# browser download: the test drives the system's /usr/bin/chromium). Both come from the npm
# registry with `npm pack` (the tarballs only, not @ohif/app's development dependencies) into
# a cache folder, once per pinned version:
#
#   ${CT_TRIAGE_NPM_CACHE:-$HOME/.cache/ct-triage/npm}/ohif-app-<version>/package/dist
#   ${CT_TRIAGE_NPM_CACHE:-$HOME/.cache/ct-triage/npm}/playwright-core-<version>/package
#
# Without npm it says so and exits 0 (the test then skips with that reason).
set -euo pipefail
OHIF_VERSION="3.13.2"
PLAYWRIGHT_VERSION="1.57.0"
CACHE="${CT_TRIAGE_NPM_CACHE:-$HOME/.cache/ct-triage/npm}"

if ! command -v npm >/dev/null 2>&1; then
    echo "install-ohif: npm is not installed; the OHIF browser test will be skipped" >&2
    exit 0
fi
mkdir -p "$CACHE"

fetch() {  # fetch NAME VERSION FOLDER: unpack the registry tarball of NAME@VERSION into FOLDER
    local name="$1" version="$2" folder="$CACHE/$3"
    [ -f "$folder/.complete" ] && return 0
    local tmp
    tmp="$(mktemp -d "$CACHE/.fetch.XXXXXX")"
    (cd "$tmp" && npm pack --silent "$name@$version" >/dev/null)
    tar -xzf "$tmp"/*.tgz -C "$tmp"
    rm -f "$tmp"/*.tgz
    touch "$tmp/.complete"
    rm -rf "$folder"
    mv "$tmp" "$folder"
    echo "install-ohif: $name@$version in $folder"
}

fetch @ohif/app "$OHIF_VERSION" "ohif-app-$OHIF_VERSION"
fetch playwright-core "$PLAYWRIGHT_VERSION" "playwright-core-$PLAYWRIGHT_VERSION"
