// An express service as most Node services are instrumented: started with
// `node --require @opentelemetry/auto-instrumentations-node/register app.js` and configured
// by OTEL_* variables only. GET /block?ms=N busy-loops the event loop for N ms; GET
// /sleep?ms=N answers after N ms without blocking; GET /fail answers 500.
// Prints "listening PORT" once it serves.
const express = require('express');

const app = express();
app.get('/', (_req, res) => res.send('ok\n'));
app.get('/block', (req, res) => {
  const ms = Number(req.query.ms) || 1000;
  const end = Date.now() + ms;
  let x = 0;
  while (Date.now() < end) x += Math.sqrt(x + 1);
  res.send(`blocked ${ms} ms ${x > 0}\n`);
});
app.get('/sleep', (req, res) => {
  const ms = Number(req.query.ms) || 100;
  setTimeout(() => res.send(`slept ${ms} ms\n`), ms);
});
app.get('/fail', (_req, res) => res.status(500).send('failed on purpose\n'));
const server = app.listen(0, '127.0.0.1', () => {
  console.log(`listening ${server.address().port}`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
