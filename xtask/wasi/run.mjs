#!/usr/bin/env node
// Cargo's runner for wasm32-wasip1 test binaries (`cargo xtask test` sets
// CARGO_TARGET_WASM32_WASIP1_RUNNER to this file): runs the module given
// first under Node.js's WASI preview 1, the ABI the filter runs on inside
// Envoy, with the rest of the arguments as libtest's, and exits with its
// exit code. A failing test panics, which aborts on this target: the
// module traps, and Node.js exits 1.

// The one warning Node.js gives, that its WASI is experimental, would
// precede every run.
process.removeAllListeners("warning");
const { readFile } = await import("node:fs/promises");
const { WASI } = await import("node:wasi");

const [, , module, ...args] = process.argv;
const wasi = new WASI({
  version: "preview1",
  args: [module, ...args],
  env: process.env,
  returnOnExit: true,
});
const compiled = await WebAssembly.compile(await readFile(module));
const instance = await WebAssembly.instantiate(compiled, wasi.getImportObject());
process.exit(wasi.start(instance));
