// What it measures: how Node's perf_hooks.monitorEventLoopDelay (the baseline loopwatch is
// compared with) reads injected event-loop blocks of known length.
// For each injected block B (ms) it enables the monitor (default 10 ms resolution), lets the
// loop idle, busy-blocks the loop for exactly B ms, idles again, and prints one JSON line
// {"injected_ms":B,"max_ms":..,"p99_ms":..,"mean_ms":..}.
// Run: node benches/node/eventloop-delay.js [resolution_ms] [repeats]
// Used by the probe-accuracy benchmark (see BENCHMARKS.md), which runs it in the same session
// as loopwatch's own readings.
'use strict';
const { monitorEventLoopDelay } = require('node:perf_hooks');

const resolution = Number(process.argv[2] || 10);
const repeats = Number(process.argv[3] || 5);
const blocks = [1, 5, 20, 100, 500, 2000];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function busy(ms) {
  const end = process.hrtime.bigint() + BigInt(Math.round(ms * 1e6));
  while (process.hrtime.bigint() < end) { /* block the loop */ }
}

(async () => {
  for (const b of blocks) {
    for (let i = 0; i < repeats; i++) {
      const h = monitorEventLoopDelay({ resolution });
      h.enable();
      await sleep(100);
      h.reset();
      await sleep(3 * resolution);
      busy(b);
      await sleep(3 * resolution);
      h.disable();
      console.log(JSON.stringify({
        injected_ms: b,
        resolution_ms: resolution,
        max_ms: h.max / 1e6,
        p99_ms: h.percentile(99) / 1e6,
        mean_ms: h.mean / 1e6,
      }));
    }
  }
})();
