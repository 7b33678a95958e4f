#!/usr/bin/env bash
# The OHIF viewer the browser test (tests/browser/test_ohif.py) serves: the prebuilt dist/ of
# the npm package @ohif/app, pinned, unpacked with `npm pack` (the release tarball only, none
# of its development dependencies) into a cache folder, once:
#
#   ${CT_TRIAGE_NPM_CACHE:-$HOME/.cache/ct-triage/npm}/ohif-app-<version>/package/dist
#
# The browser is the system's /usr/bin/chromium, driven by the playwright Python package of
# requirements-dev.txt (no browser download). Without npm this says so and exits 0 (the test
# then skips with that reason); a failed download fails.
set -euo pipefail
OHIF_VERSION="3.13.2"  # keep in step with tests/browser/ohif_server.py
CACHE="${CT_TRIAGE_NPM_CACHE:-$HOME/.cache/ct-triage/npm}"
FOLDER="$CACHE/ohif-app-$OHIF_VERSION"

if ! command -v npm >/dev/null 2>&1; then
    echo "install-ohif: npm is not installed; the OHIF browser test will be skipped" >&2
    exit 0
fi
[ -f "$FOLDER/.complete" ] && exit 0
mkdir -p "$CACHE"
tmp="$(mktemp -d "$CACHE/.fetch.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "@ohif/app@$OHIF_VERSION" >/dev/null)
tar -xzf "$tmp"/*.tgz -C "$tmp"
rm -f "$tmp"/*.tgz
[ -f "$tmp/package/dist/index.html" ] || { echo "install-ohif: no dist/index.html" >&2; exit 1; }
touch "$tmp/.complete"
rm -rf "$FOLDER"
mv "$tmp" "$FOLDER"
trap - EXIT
echo "install-ohif: @ohif/app@$OHIF_VERSION in $FOLDER"
