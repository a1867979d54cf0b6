// Exports metrics to the agent with the real OpenTelemetry JS SDK, including the Node.js
// runtime instrumentation (nodejs.eventloop.*, v8js.*).
// usage: node export.mjs json|proto|grpc URL INSTANCE
import { MeterProvider, PeriodicExportingMetricReader } from '@opentelemetry/sdk-metrics';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { registerInstrumentations } from '@opentelemetry/instrumentation';
import { RuntimeNodeInstrumentation } from '@opentelemetry/instrumentation-runtime-node';

const [mode, url, instance] = process.argv.slice(2);
const mod = mode === 'json'
  ? await import('@opentelemetry/exporter-metrics-otlp-http')
  : mode === 'proto'
    ? await import('@opentelemetry/exporter-metrics-otlp-proto')
    : await import('@opentelemetry/exporter-metrics-otlp-grpc');
const exporter = new mod.OTLPMetricExporter({ url });
let ok = 0;
let failed = 0;
const orig = exporter.export.bind(exporter);
exporter.export = (metrics, cb) => orig(metrics, (res) => {
  if (res.code === 0) ok++; else { failed++; console.error('export failed:', res.error); }
  cb(res);
});
const reader = new PeriodicExportingMetricReader({ exporter, exportIntervalMillis: 200 });
const provider = new MeterProvider({
  resource: resourceFromAttributes({ 'service.name': 'node-peer', 'service.instance.id': instance }),
  readers: [reader],
});
registerInstrumentations({
  instrumentations: [new RuntimeNodeInstrumentation({ monitoringPrecision: 10 })],
  meterProvider: provider,
});
const meter = provider.getMeter('peer');
meter.createCounter('peer.jobs', { unit: '{job}' }).add(5, { 'job.kind': 'a' });
const h = meter.createHistogram('peer.duration', { unit: 's' });
h.record(0.2);
h.record(0.7);
await new Promise((r) => setTimeout(r, 700));
await provider.forceFlush();
await provider.shutdown();
console.log(JSON.stringify({ ok, failed }));
process.exit(ok > 0 && failed === 0 ? 0 : 1);
