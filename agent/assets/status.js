// loopwatch-agent status page. Every poll reads /v1/status (the services and their routes)
// and /v1/history of each service (the samples and episodes the agent kept), so the page
// tells the last minutes on first load. `?interval=MS` sets the poll period, `?minutes=N`
// the charts' span (1-15). No dependencies, no requests beyond the agent.
'use strict';
(function () {
  var params = new URLSearchParams(location.search);
  var INTERVAL = Math.max(100, Number(params.get('interval')) || 1000);
  var MINUTES = Math.min(15, Math.max(1, Number(params.get('minutes')) || 5));
  var MAX_SERVICES = 20, MAX_INCIDENTS = 20, MAX_ROUTES = 50;
  var COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf'];
  var NS = 'http://www.w3.org/2000/svg';
  var CHARTS = [
    { id: 'chart-lag', metric: 'lag_seconds', min: 0.1 },
    { id: 'chart-errors', metric: 'error_ratio', min: 0.1, cap: 1 },
    { id: 'chart-utilization', metric: 'utilization', min: 1 },
    { id: 'chart-pressure', metric: 'pressure', min: 1 },
  ];
  var colors = {}; // instance id -> color, stable for the page's life

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    for (var k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function svg(tag, attrs, text) {
    var e = document.createElementNS(NS, tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function fmt(v, digits) { return v === null || v === undefined ? '–' : Number(v).toFixed(digits); }
  function ms(v) { return v === null || v === undefined ? '–' : fmt(v * 1000, v < 0.01 ? 2 : 1); }
  function pct(v) { return v === null || v === undefined ? '–' : fmt(v * 100, 1) + ' %'; }
  function idOf(service, instance) { return service + (instance ? ' / ' + instance : ''); }
  function color(id) {
    if (!colors[id]) colors[id] = COLORS[Object.keys(colors).length % COLORS.length];
    return colors[id];
  }
  function duration(s) {
    if (s < 1) return Math.round(s * 1000) + ' ms';
    if (s < 120) return s.toFixed(1) + ' s';
    return Math.round(s / 60) + ' min';
  }
  // Names each cell after its column, for the phone layout's labelled cards.
  function label(tableId) {
    var heads = Array.prototype.map.call(document.querySelectorAll('#' + tableId + ' thead th'),
      function (th) { return th.textContent; });
    document.querySelectorAll('#' + tableId + ' tbody tr').forEach(function (tr) {
      Array.prototype.forEach.call(tr.children, function (td, i) {
        if (heads[i] && !td.hasAttribute('colspan')) td.setAttribute('data-label', heads[i]);
      });
    });
  }
  function clock(t) { return new Date(t * 1000).toLocaleTimeString(); }

  function renderServices(body) {
    var tbody = document.querySelector('#services tbody');
    tbody.textContent = '';
    body.services.forEach(function (s) {
      var state = s.state;
      var reasons = s.reasons.slice();
      if (body.draining) { state = state === 'ok' ? 'draining' : state; reasons.unshift('draining'); }
      var tr = el('tr', { 'class': 'service', 'data-service': s.service, 'data-instance': s.instance, 'data-state': state });
      tr.appendChild(el('td', { 'class': 'name' }, s.service));
      tr.appendChild(el('td', {}, s.instance));
      tr.appendChild(el('td', { 'class': 'wide' }, s.runtime));
      tr.appendChild(el('td', { 'class': 'state state-' + state }, state));
      var rtd = el('td', { 'class': 'reasons' });
      reasons.concat(s.warnings || []).forEach(function (r) { rtd.appendChild(el('div', { 'class': 'reason' }, r)); });
      tr.appendChild(rtd);
      tr.appendChild(el('td', { 'class': 'num' }, s.lag_seconds === null ? '–' : fmt(s.lag_seconds * 1000, 1)));
      tr.appendChild(el('td', { 'class': 'num wide' }, fmt(s.utilization, 2)));
      tr.appendChild(el('td', { 'class': 'num' }, fmt(s.pressure, 2)));
      tr.appendChild(el('td', { 'class': 'num wide' }, fmt(s.last_seen_age_seconds, 1)));
      tbody.appendChild(tr);
    });
    label('services');
  }

  // Stacks the services captured while their event loop stalled, newest first: what blocked.
  function renderStalls(body) {
    var reports = [];
    body.services.forEach(function (s) {
      (s.last_stalls || []).forEach(function (r) { reports.push({ s: s, r: r }); });
    });
    reports.sort(function (a, b) { return (b.r.time_unix_nano || 0) - (a.r.time_unix_nano || 0); });
    var root = document.getElementById('stalls');
    root.textContent = '';
    if (!reports.length) { root.appendChild(el('p', { 'class': 'empty' }, 'no stall stacks reported')); return; }
    reports.slice(0, 10).forEach(function (x, i) {
      var r = x.r;
      var d = el('details', { 'class': 'stall', 'data-service': x.s.service, 'data-event': r.event });
      if (i === 0) d.setAttribute('open', '');
      // Name the first frame of the service's own code: past libc, std and the runtime.
      var frames = r.frames || [];
      var own = frames.filter(function (f) {
        return !/^(_|<?(std|core|alloc|tokio|futures_util|libc)::|clock_|nanosleep|syscall|epoll|read$|write$)/.test(f.function);
      })[0] || frames[0];
      var top = own ? own.function : 'no frames';
      var what = [clock((r.time_unix_nano || 0) / 1e9), idOf(x.s.service, x.s.instance), r.event,
        r.duration_seconds === null || r.duration_seconds === undefined ? '' : duration(r.duration_seconds),
        'thread ' + (r.thread_name || r.thread_id || '?') + (r.worker === null || r.worker === undefined ? '' : ' (worker ' + r.worker + ')'),
        'in ' + top].filter(function (t) { return t; }).join(' · ');
      d.appendChild(el('summary', {}, what));
      var ol = el('ol', {});
      (r.frames || []).forEach(function (f) {
        var li = el('li', { 'class': 'frame' }, f.function);
        if (f.location) li.appendChild(el('span', { 'class': 'loc' }, '  ' + f.location));
        ol.appendChild(li);
      });
      if (r.truncated) ol.appendChild(el('li', { 'class': 'loc' }, '… truncated'));
      d.appendChild(ol);
      root.appendChild(d);
    });
  }

  // Every instance's routes in one table, worst first: error ratio, then p99.
  function renderRoutes(body) {
    var rows = [];
    body.services.forEach(function (s) {
      (s.routes || []).forEach(function (r) { rows.push({ s: s, r: r }); });
    });
    rows.sort(function (a, b) {
      return (b.r.error_ratio - a.r.error_ratio) || ((b.r.p99_seconds || 0) - (a.r.p99_seconds || 0));
    });
    var tbody = document.querySelector('#routes tbody');
    tbody.textContent = '';
    if (!rows.length) {
      tbody.appendChild(el('tr', {}, '')).appendChild(el('td', { colspan: 7, 'class': 'empty' }, 'no HTTP server requests in the error window'));
    }
    rows.slice(0, MAX_ROUTES).forEach(function (x) {
      var r = x.r;
      var name = (r.method ? r.method + ' ' : '') + (r.route || '(no route)');
      var tr = el('tr', {
        'class': 'route' + (r.error_ratio > 0 ? ' bad' : ''), 'data-route': r.route,
        'data-service': x.s.service, 'data-error-ratio': r.error_ratio,
      });
      tr.appendChild(el('td', { 'class': 'name' }, name));
      tr.appendChild(el('td', { 'class': 'wide' }, idOf(x.s.service, x.s.instance)));
      tr.appendChild(el('td', { 'class': 'num' }, fmt(r.requests_per_second, 1)));
      tr.appendChild(el('td', { 'class': 'num ratio' }, pct(r.error_ratio)));
      tr.appendChild(el('td', { 'class': 'num wide' }, ms(r.p50_seconds)));
      tr.appendChild(el('td', { 'class': 'num' }, ms(r.p95_seconds)));
      tr.appendChild(el('td', { 'class': 'num' }, ms(r.p99_seconds)));
      tbody.appendChild(tr);
    });
    label('routes');
  }

  // Lines per instance, episodes as bands, state changes as markers at their start.
  // The span shown: the kept history up to MINUTES, at least a minute.
  function spanOf(lines, now) {
    var oldest = now;
    lines.forEach(function (l) { if (l.samples.length) oldest = Math.min(oldest, l.samples[0].time); });
    return Math.min(MINUTES * 60, Math.max(60, Math.ceil((now - oldest) / 60) * 60));
  }

  function chart(c, lines, episodes, now, span) {
    var root = document.getElementById(c.id);
    var W = 420, H = 180, L = 40, B = 16;
    var x = function (t) { return L + (W - L) * (1 - Math.min(1, Math.max(0, (now - t) / span))); };
    root.textContent = '';
    var max = 0;
    lines.forEach(function (l) {
      l.samples.forEach(function (p) { var v = p[c.metric]; if (v !== null && v > max) max = v; });
    });
    root.setAttribute('data-max', max);
    var top = Math.max(max, c.min);
    if (c.cap) top = Math.min(top, c.cap);
    episodes.forEach(function (e) {
      var x0 = x(e.start), x1 = x(e.end === null ? now : e.end);
      if (x1 <= L) return;
      var band = svg('rect', {
        'class': 'band band-' + e.kind, 'data-kind': e.kind, 'data-service': e.id,
        x: x0.toFixed(1), y: 0, width: Math.max(2, x1 - x0).toFixed(1), height: H - B,
      });
      band.appendChild(svg('title', {}, e.kind + ' ' + e.id + ': ' + (e.reasons.join('; ') || duration(e.duration_seconds))));
      root.appendChild(band);
    });
    root.appendChild(svg('line', { x1: L, y1: H - B, x2: W, y2: H - B, stroke: '#999' }));
    root.appendChild(svg('line', { x1: L, y1: 0, x2: L, y2: H - B, stroke: '#999' }));
    root.appendChild(svg('text', { x: 2, y: 10 }, top.toPrecision(3)));
    root.appendChild(svg('text', { x: 2, y: H - B }, '0'));
    root.appendChild(svg('text', { x: L, y: H - 2 }, '-' + span / 60 + ' min'));
    root.appendChild(svg('text', { x: W - 24, y: H - 2 }, 'now'));
    lines.forEach(function (l) {
      var pts = l.samples.filter(function (p) { return p[c.metric] !== null && now - p.time <= span; })
        .map(function (p) {
          var y = (H - B) * (1 - Math.min(1, p[c.metric] / top));
          return x(p.time).toFixed(1) + ',' + y.toFixed(1);
        });
      if (pts.length === 1) pts.push(pts[0]);
      if (!pts.length) return;
      root.appendChild(svg('polyline', {
        'class': 'series', 'data-service': l.id, points: pts.join(' '),
        fill: 'none', stroke: color(l.id), 'stroke-width': 1.5,
      }));
    });
  }

  function renderHistory(histories) {
    var lines = [], episodes = [], now = 0;
    histories.forEach(function (h) {
      now = Math.max(now, h.now);
      h.instances.forEach(function (i) {
        var id = idOf(h.service, i.instance);
        lines.push({ id: id, samples: i.samples });
        i.episodes.forEach(function (e) { e.id = id; episodes.push(e); });
      });
    });
    if (!now) now = Date.now() / 1000;
    var span = spanOf(lines, now);
    document.getElementById('span-minutes').textContent = span / 60;
    CHARTS.forEach(function (c) { chart(c, lines, episodes, now, span); });
    var legend = document.getElementById('legend');
    legend.textContent = '';
    lines.forEach(function (l) {
      var span = el('span', {});
      var i = el('i', {});
      i.style.background = color(l.id);
      span.appendChild(i);
      span.appendChild(document.createTextNode(l.id));
      legend.appendChild(span);
    });
    renderIncidents(episodes);
  }

  function renderIncidents(episodes) {
    episodes.sort(function (a, b) { return b.start - a.start; });
    var tbody = document.querySelector('#incidents tbody');
    tbody.textContent = '';
    if (!episodes.length) {
      tbody.appendChild(el('tr', {})).appendChild(el('td', { colspan: 5, 'class': 'empty' }, 'nothing happened in the kept history'));
    }
    episodes.slice(0, MAX_INCIDENTS).forEach(function (e) {
      var tr = el('tr', { 'class': 'incident', 'data-kind': e.kind, 'data-service': e.id, 'data-ongoing': e.ongoing });
      tr.appendChild(el('td', { 'class': 'when' }, clock(e.start)));
      tr.appendChild(el('td', {}, e.id));
      tr.appendChild(el('td', { 'class': 'kind-' + e.kind }, e.kind));
      var lasted = duration(e.duration_seconds) + (e.ongoing ? ' (ongoing)' : '');
      if (e.peak_seconds !== null) lasted += ', peak ' + duration(e.peak_seconds);
      tr.appendChild(el('td', { 'class': 'num' }, lasted));
      var why = el('td', { 'class': 'reasons' });
      e.reasons.forEach(function (r) { why.appendChild(el('div', { 'class': 'reason' }, r)); });
      tr.appendChild(why);
      tbody.appendChild(tr);
    });
    label('incidents');
  }

  function json(url) {
    return fetch(url, { cache: 'no-store' }).then(function (r) {
      if (!r.ok) throw new Error(url + ': HTTP ' + r.status);
      return r.json();
    });
  }

  function poll() {
    json('v1/status')
      .then(function (body) {
        renderServices(body);
        renderRoutes(body);
        renderStalls(body);
        var names = [];
        body.services.forEach(function (s) { if (names.indexOf(s.service) < 0) names.push(s.service); });
        document.getElementById('meta').textContent =
          body.services.length + ' service(s)' + (body.draining ? ', agent draining' : '') +
          ', updated ' + new Date().toLocaleTimeString();
        return Promise.all(names.slice(0, MAX_SERVICES).map(function (n) {
          return json('v1/history?service=' + encodeURIComponent(n)).catch(function () { return null; });
        }));
      })
      .then(function (histories) {
        renderHistory(histories.filter(function (h) { return h; }));
        document.getElementById('error').textContent = '';
      })
      .catch(function (e) { document.getElementById('error').textContent = 'cannot load: ' + e.message; })
      .then(function () { setTimeout(poll, INTERVAL); });
  }
  poll();
})();
