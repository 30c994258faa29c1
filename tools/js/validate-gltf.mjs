// Validate a glTF or GLB file with the Khronos glTF validator; print its report as JSON.
// Usage: node validate-gltf.mjs FILE      (exit 0 when the file could be read, 2 otherwise)
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(import.meta.url);
const validator = require("gltf-validator");

const file = process.argv[2];
if (!file) {
  console.error("usage: node validate-gltf.mjs FILE");
  process.exit(2);
}
try {
  const bytes = new Uint8Array(await readFile(file));
  const report = await validator.validateBytes(bytes, {
    uri: path.basename(file),
    maxIssues: 100,
    // a .gltf may name its buffers and images beside it
    externalResourceFunction: (uri) => readFile(path.resolve(path.dirname(file), decodeURIComponent(uri)))
      .then((data) => new Uint8Array(data)),
  });
  console.log(JSON.stringify(report, null, 1));
} catch (error) {
  console.error(`cannot validate ${file}: ${error}`);
  process.exit(2);
}
