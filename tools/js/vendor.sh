#!/usr/bin/env bash
# Copy the pinned <model-viewer> bundle and its licences into the package, for eval-report.html.
# Run after changing the version in package.json: npm install --prefix tools/js && tools/js/vendor.sh
# (tests/test_report_viewer.py fails while the copy and the pinned package differ).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
modules="$here/node_modules"
dest="$here/../../src/prolificli/evaluation/viewer"
mkdir -p "$dest"
cp "$modules/@google/model-viewer/dist/model-viewer.min.js" "$dest/model-viewer.min.js"
# the bundle carries model-viewer (Apache-2.0), three.js (MIT), lit (BSD-3-Clause), gainmap-js (MIT)
cp "$modules/@google/model-viewer/LICENSE" "$dest/LICENSE.model-viewer"
cp "$modules/three/LICENSE" "$dest/LICENSE.three"
cp "$modules/lit/LICENSE" "$dest/LICENSE.lit"
cp "$modules/@monogrid/gainmap-js/LICENSE" "$dest/LICENSE.gainmap-js"
node -e '
const read = (p) => require(p + "/package.json").version;
const m = process.argv[1];
console.log(JSON.stringify({"@google/model-viewer": read(m + "/@google/model-viewer"), three: read(m + "/three"),
  lit: read(m + "/lit"), "@monogrid/gainmap-js": read(m + "/@monogrid/gainmap-js")}, null, 1));' "$modules" > "$dest/versions.json"
echo "vendored into $dest:"; cat "$dest/versions.json"
