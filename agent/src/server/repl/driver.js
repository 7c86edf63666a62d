// rewind REPL driver for Node.js, started by rewind-agent (see mod.rs).
// Requests arrive as JSON lines on stdin; each cell's output goes to the
// real stdout/stderr (synchronous pipes on Linux), then an end marker on both.
"use strict";
const fs = require("fs");
const readline = require("readline");
const util = require("util");
const vm = require("vm");

const nonce = process.env.REWIND_REPL_NONCE;
const workdir = process.env.REWIND_REPL_WORKDIR || "/workspace";
delete process.env.REWIND_REPL_NONCE;
delete process.env.REWIND_REPL_WORKDIR;
globalThis.require = require;
process.on("SIGINT", () => {});

function run(code) {
  try {
    process.chdir(workdir);
    const value = vm.runInThisContext(code, { filename: "<cell>", breakOnSigint: true });
    if (value !== undefined) {
      console.log(util.inspect(value));
    }
    return "ok";
  } catch (err) {
    fs.writeSync(2, (err && err.stack ? err.stack : String(err)) + "\n");
    return "error";
  } finally {
    try {
      process.chdir("/");
    } catch (_) {}
  }
}

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const request = JSON.parse(line);
  const status = run(request.code);
  const marker = `\x1eREWIND-${nonce}-${request.id}-${status}\n`;
  fs.writeSync(1, marker);
  fs.writeSync(2, marker);
});
