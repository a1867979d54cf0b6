// A Node.js service instrumented with the real OpenTelemetry JS SDK and
// @opentelemetry/instrumentation-runtime-node that blocks its event loop with a 1.5 s busy
// loop, then idles so it can recover. Exports OTLP/HTTP protobuf every 200 ms.
// It blocks once, and prints the largest p99 it reported (for the test's log).
// usage: node busy.mjs URL SERVICE IDLE_AFTER_MS
import { MeterProvider, PeriodicExportingMetricReader } from '@opentelemetry/sdk-metrics';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { registerInstrumentations } from '@opentelemetry/instrumentation';
import { RuntimeNodeInstrumentation } from '@opentelemetry/instrumentation-runtime-node';
import { OTLPMetricExporter } from '@opentelemetry/exporter-metrics-otlp-proto';

const [url, service, idleAfter] = process.argv.slice(2);
const exporter = new OTLPMetricExporter({ url });
let reportedMax = 0;
const orig = exporter.export.bind(exporter);
exporter.export = (metrics, cb) => {
  for (const sm of metrics.scopeMetrics) {
    for (const m of sm.metrics) {
      if (m.descriptor.name === 'nodejs.eventloop.delay.p99') {
        for (const d of m.dataPoints) reportedMax = Math.max(reportedMax, d.value);
      }
    }
  }
  return orig(metrics, cb);
};
const reader = new PeriodicExportingMetricReader({ exporter, exportIntervalMillis: 200 });
const provider = new MeterProvider({
  resource: resourceFromAttributes({ 'service.name': service }),
  readers: [reader],
});
registerInstrumentations({
  instrumentations: [new RuntimeNodeInstrumentation({ monitoringPrecision: 10 })],
  meterProvider: provider,
});
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
await sleep(1000);
console.log('busy start');
const end = Date.now() + 1500;
let x = 0;
while (Date.now() < end) { x += Math.sqrt(x + 1); }
console.log('busy end', x > 0);
await sleep(2000);
console.log('reported p99 max', reportedMax);
await sleep(Number(idleAfter) || 6000);
await provider.forceFlush();
await provider.shutdown();
console.log('done');
