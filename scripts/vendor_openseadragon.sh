#!/usr/bin/env bash
# Re-vendor OpenSeadragon (BSD-3-Clause) from the npm registry into the viewer's static files: the minified
# build, its button images and its licence. The viewer loads nothing from a CDN.
set -euo pipefail
VERSION=${1:-6.1.1}
DEST="$(cd "$(dirname "$0")/.." && pwd)/src/wsinuclei/viewer/static/openseadragon"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && npm pack --silent "openseadragon@$VERSION" >/dev/null 2>&1 && tar xzf "openseadragon-$VERSION.tgz")
rm -rf "$DEST" && mkdir -p "$DEST"
cp "$WORK/package/build/openseadragon/openseadragon.min.js" "$DEST/"
cp -r "$WORK/package/build/openseadragon/images" "$DEST/"
cp "$WORK/package/LICENSE.txt" "$DEST/"
printf 'openseadragon %s from the npm registry (npm pack openseadragon@%s), sha256 of the package: %s\n' \
  "$VERSION" "$VERSION" "$(sha256sum "$WORK/openseadragon-$VERSION.tgz" | cut -d' ' -f1)" > "$DEST/VERSION"
echo "vendored openseadragon $VERSION into $DEST"
