#!/usr/bin/env bash
# Copy the pinned <model-viewer> bundle and the splat viewer (Spark + three.js, bundled by esbuild
# from splat-viewer-entry.mjs) with their licences into the package, for eval-report.html.
# Run after changing a version in package.json: npm install --prefix tools/js && tools/js/vendor.sh
# (tests/test_report_viewer.py fails while the copies and the pinned packages differ).
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
# the splat viewer: Spark (MIT) and three.js (MIT) in one script with no imports
"$modules/.bin/esbuild" "$here/splat-viewer-entry.mjs" --bundle --minify --format=iife --legal-comments=none \
    --log-level=warning --outfile="$dest/splat-viewer.min.js"
cp "$modules/@sparkjsdev/spark/LICENSE" "$dest/LICENSE.spark"
node -e '
const fs = require("fs");
const read = (p) => JSON.parse(fs.readFileSync(p + "/package.json", "utf8")).version;
const m = process.argv[1];
console.log(JSON.stringify({"@google/model-viewer": read(m + "/@google/model-viewer"), three: read(m + "/three"),
  lit: read(m + "/lit"), "@monogrid/gainmap-js": read(m + "/@monogrid/gainmap-js"),
  "@sparkjsdev/spark": read(m + "/@sparkjsdev/spark")}, null, 1));' "$modules" > "$dest/versions.json"
echo "vendored into $dest:"; cat "$dest/versions.json"
