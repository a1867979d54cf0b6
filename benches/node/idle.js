// What it measures: the idle cost of Node's perf_hooks.monitorEventLoopDelay, the baseline of
// the idle benchmark (issue 6, item 5). Keeps an idle HTTP server on 127.0.0.1 (nothing else
// wakes the loop) and, unless the resolution is 0, a monitorEventLoopDelay histogram enabled at
// that resolution. The benchmark reads the process's CPU from /proc while it idles.
// Run: node benches/node/idle.js [resolution_ms, default 10; 0 = no monitor]
// Prints one line, "ready <port>", once listening; runs until killed.
'use strict';
const http = require('node:http');
const { monitorEventLoopDelay } = require('node:perf_hooks');

const resolution = Number(process.argv[2] ?? 10);
if (!Number.isFinite(resolution) || resolution < 0) {
  console.error(`idle.js: resolution must be a number of ms >= 0, got ${process.argv[2]}`);
  process.exit(2);
}
if (resolution > 0) monitorEventLoopDelay({ resolution }).enable();
const server = http.createServer((req, res) => res.end('ok'));
server.listen(0, '127.0.0.1', () => console.log(`ready ${server.address().port}`));
