#!/usr/bin/env node
// Run the Khronos glTF-Validator (npm `gltf-validator`) on one .glb/.gltf file, or on stdin with "-" or
// no argument, and print its JSON report on stdout.
// Exit status: 0 = no errors, 1 = the asset has errors or is not glTF (report still printed),
// 2 = could not run (package missing, unreadable input).
// pipeline/assets/validation.py calls this with SHOP3D_NODE_MODULES naming the node_modules directory that
// holds gltf-validator (this script ships inside the Python package, away from any node_modules).
// By hand: `SHOP3D_NODE_MODULES=$PWD/node_modules node pipeline/assets/validate_gltf.mjs model.glb`.

import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";

const modules = process.env.SHOP3D_NODE_MODULES;
const require = createRequire(modules ? join(modules, "resolve-from-here.js") : import.meta.url);

function loadValidator() {
  try {
    return require("gltf-validator");
  } catch (error) {
    process.stderr.write(`gltf-validator not found (SHOP3D_NODE_MODULES=${modules ?? "unset"})\n`);
    process.exit(2);
  }
}

function readInput(path) {
  // fd 0 reads all of stdin synchronously, also when it is a pipe.
  return path === undefined || path === "-" ? readFileSync(0) : readFileSync(path);
}

const validator = loadValidator();
const path = process.argv[2];
let data;
try {
  data = readInput(path);
} catch (error) {
  process.stderr.write(`cannot read ${path ?? "stdin"}: ${error.message}\n`);
  process.exit(2);
}

validator
  .validateBytes(new Uint8Array(data), {
    uri: path && path !== "-" ? path : "stdin.glb",
    maxIssues: 0,           // report every issue, not the first hundred
    writeTimestamp: false,  // reproducible reports
  })
  .then((report) => {
    process.stdout.write(JSON.stringify(report) + "\n");
    process.exit(report.issues.numErrors > 0 ? 1 : 0);
  })
  .catch((error) => {
    // Not glTF at all (format undetectable): still a report, with one error, so callers see "invalid".
    const message = { code: "UNDETECTABLE_ASSET", severity: 0, message: String(error), pointer: "" };
    const issues = { numErrors: 1, numWarnings: 0, numInfos: 0, numHints: 0, messages: [message] };
    process.stdout.write(JSON.stringify({ issues }) + "\n");
    process.exit(1);
  });
