// loopwatch-agent status page: polls /v1/status, keeps a short history per service and
// draws one SVG line per service in each chart. No dependencies.
'use strict';
(function () {
  var params = new URLSearchParams(location.search);
  var INTERVAL = Math.max(100, Number(params.get('interval')) || 1000);
  var KEEP = 120;
  var COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf'];
  var NS = 'http://www.w3.org/2000/svg';
  var history = {}; // id -> {color, points: [{t, lag, utilization, pressure}]}
  var order = [];

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    for (var k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function svg(tag, attrs) {
    var e = document.createElementNS(NS, tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    return e;
  }
  function fmt(v, digits) { return v === null || v === undefined ? '–' : Number(v).toFixed(digits); }
  function idOf(s) { return s.service + (s.instance ? ' / ' + s.instance : ''); }

  function render(body) {
    var now = Date.now() / 1000;
    var tbody = document.querySelector('#services tbody');
    tbody.textContent = '';
    body.services.forEach(function (s) {
      var id = idOf(s);
      if (!history[id]) {
        history[id] = { color: COLORS[order.length % COLORS.length], points: [] };
        order.push(id);
      }
      var h = history[id];
      h.points.push({ t: now, lag: s.lag_seconds, utilization: s.utilization, pressure: s.pressure });
      if (h.points.length > KEEP) h.points.shift();
      var state = s.state;
      var reasons = s.reasons.slice();
      if (body.draining) { state = state === 'ok' ? 'draining' : state; reasons.unshift('draining'); }
      var tr = el('tr', { 'class': 'service', 'data-service': s.service, 'data-instance': s.instance, 'data-state': state });
      tr.appendChild(el('td', { 'class': 'name' }, s.service));
      tr.appendChild(el('td', {}, s.instance));
      tr.appendChild(el('td', {}, s.runtime));
      tr.appendChild(el('td', { 'class': 'state state-' + state }, state));
      var rtd = el('td', { 'class': 'reasons' });
      reasons.forEach(function (r) { rtd.appendChild(el('div', { 'class': 'reason' }, r)); });
      tr.appendChild(rtd);
      tr.appendChild(el('td', { 'class': 'num' }, s.lag_seconds === null ? '–' : fmt(s.lag_seconds * 1000, 1)));
      tr.appendChild(el('td', { 'class': 'num' }, fmt(s.utilization, 2)));
      tr.appendChild(el('td', { 'class': 'num' }, fmt(s.pressure, 2)));
      tr.appendChild(el('td', { 'class': 'num' }, fmt(s.last_seen_age_seconds, 1)));
      tbody.appendChild(tr);
    });
    var legend = document.getElementById('legend');
    legend.textContent = '';
    order.forEach(function (id) {
      var span = el('span', {});
      var i = el('i', {});
      i.style.background = history[id].color;
      span.appendChild(i);
      span.appendChild(document.createTextNode(id));
      legend.appendChild(span);
    });
    ['lag', 'utilization', 'pressure'].forEach(function (m) { chart(m, now); });
    document.getElementById('meta').textContent =
      body.services.length + ' service(s)' + (body.draining ? ', agent draining' : '') +
      ', updated ' + new Date().toLocaleTimeString();
  }

  function chart(metric, now) {
    var root = document.getElementById('chart-' + metric);
    var W = 420, H = 180, L = 40, B = 16, span = KEEP * INTERVAL / 1000;
    root.textContent = '';
    var max = metric === 'utilization' ? 1 : 0;
    order.forEach(function (id) {
      history[id].points.forEach(function (p) { if (p[metric] !== null && p[metric] > max) max = p[metric]; });
    });
    if (max <= 0) max = metric === 'lag' ? 0.1 : 1;
    root.appendChild(svg('line', { x1: L, y1: H - B, x2: W, y2: H - B, stroke: '#999' }));
    root.appendChild(svg('line', { x1: L, y1: 0, x2: L, y2: H - B, stroke: '#999' }));
    var top = svg('text', { x: 2, y: 10 }); top.textContent = max.toPrecision(3); root.appendChild(top);
    var zero = svg('text', { x: 2, y: H - B }); zero.textContent = '0'; root.appendChild(zero);
    var ago = svg('text', { x: L, y: H - 2 }); ago.textContent = '-' + Math.round(span) + ' s'; root.appendChild(ago);
    order.forEach(function (id) {
      var h = history[id];
      var pts = h.points.filter(function (p) { return p[metric] !== null && p[metric] !== undefined; })
        .map(function (p) {
          var x = L + (W - L) * (1 - Math.min(1, (now - p.t) / span));
          var y = (H - B) * (1 - p[metric] / max);
          return x.toFixed(1) + ',' + y.toFixed(1);
        });
      if (pts.length === 1) pts.push(pts[0]);
      if (!pts.length) return;
      root.appendChild(svg('polyline', {
        'class': 'series', 'data-service': id, points: pts.join(' '),
        fill: 'none', stroke: h.color, 'stroke-width': 1.5,
      }));
    });
  }

  function poll() {
    fetch('v1/status', { cache: 'no-store' })
      .then(function (r) { if (!r.ok) throw new Error('HTTP ' + r.status); return r.json(); })
      .then(function (body) { document.getElementById('error').textContent = ''; render(body); })
      .catch(function (e) { document.getElementById('error').textContent = 'cannot load /v1/status: ' + e; })
      .then(function () { setTimeout(poll, INTERVAL); });
  }
  poll();
})();
