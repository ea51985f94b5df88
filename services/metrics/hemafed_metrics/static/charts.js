/* HemaFed pages: small SVG charts written for this dashboard (no library).
 * Every chart sets data-points="<number of data points drawn>" on its element after drawing
 * (tests wait on it) and shows a short placeholder text while it has no data. */
(function () {
  'use strict';
  var HF = window.HF;
  var NS = 'http://www.w3.org/2000/svg';
  var C = HF.charts = {};

  function svgEl(tag, attrs, text) {
    var e = document.createElementNS(NS, tag);
    for (var k in attrs) if (attrs[k] != null) e.setAttribute(k, attrs[k]);
    if (text != null) e.textContent = text;
    return e;
  }
  C.svgEl = svgEl;

  function niceStep(span, n) {
    var raw = span / Math.max(n, 1);
    var mag = Math.pow(10, Math.floor(Math.log10(raw)));
    var r = raw / mag;
    return (r < 1.5 ? 1 : r < 3 ? 2 : r < 7 ? 5 : 10) * mag;
  }

  function ticks(lo, hi, n) {
    if (!(hi > lo)) { hi = lo + 1; }
    var step = niceStep(hi - lo, n);
    var a = Math.floor(lo / step + 1e-9) * step, b = Math.ceil(hi / step - 1e-9) * step;
    var out = [];
    for (var v = a; v <= b + step / 2; v += step) out.push(+v.toPrecision(12));
    return { lo: a, hi: b, ticks: out };
  }
  C.ticks = ticks;

  function width(el) {
    var w = el.getBoundingClientRect().width;
    return Math.max(Math.round(w || 0), 280);
  }

  function empty(el, text) {
    el.innerHTML = '<div class="chart-empty">' + HF.esc(text || 'waiting for data…') + '</div>';
    el.setAttribute('data-points', '0');
  }
  C.empty = empty;

  function legend(items) {
    var d = document.createElement('div');
    d.className = 'legend';
    d.innerHTML = items.map(function (it) {
      var sw = it.dash ? 'dash' : (it.box ? 'box' : 'line');
      return '<span class="key"><i class="sw ' + sw + '" style="--c:' + HF.esc(it.color) + ';' +
        (it.width ? '--w:' + it.width + 'px' : '') + '"></i>' + HF.esc(it.name) + '</span>';
    }).join('');
    return d;
  }
  C.legend = legend;

  /**
   * Line chart. opts: series [{name, color, points: [[x, y|null], ...], width, dash, dots}],
   * xInteger (round numbers), xFormat, yFormat, yMin, yMax, height, xTitle, yTitle, legend (default true).
   */
  C.line = function (el, opts) {
    var series = (opts.series || []).filter(function (s) { return s.points && s.points.length; });
    var n = 0, xs = [], ys = [];
    series.forEach(function (s) {
      s.points.forEach(function (p) {
        if (HF.isNum(p[0]) && HF.isNum(p[1])) { n++; xs.push(p[0]); ys.push(p[1]); }
      });
    });
    if (!n) { empty(el, opts.emptyText); return 0; }
    var W = width(el), H = opts.height || 220;
    var m = { l: 52, r: 14, t: 10, b: 34 };
    var xmin = Math.min.apply(null, xs), xmax = Math.max.apply(null, xs);
    var ymin = opts.yMin != null ? Math.min(opts.yMin, Math.min.apply(null, ys)) : Math.min.apply(null, ys);
    var ymax = opts.yMax != null ? Math.max(opts.yMax, Math.max.apply(null, ys)) : Math.max.apply(null, ys);
    if (opts.yMin == null && ymin > 0 && ymin < 0.5 * ymax) ymin = 0;
    var yt = ticks(ymin, ymax === ymin ? ymin + (Math.abs(ymin) || 1) : ymax, 4);
    var xt;
    if (opts.xInteger) {
      if (xmax === xmin) { xmin -= 0.5; xmax += 0.5; }
      var step = Math.max(1, Math.ceil(niceStep(xmax - xmin, Math.floor((W - m.l - m.r) / 60))));
      var list = [];
      for (var v = Math.ceil(xmin); v <= xmax; v += step) list.push(v);
      xt = { lo: xmin, hi: xmax, ticks: list };
    } else {
      xt = ticks(xmin, xmax === xmin ? xmin + 1 : xmax, Math.max(2, Math.floor((W - m.l - m.r) / 80)));
      xt.lo = xmin; xt.hi = xmax === xmin ? xmin + 1 : xmax;
      xt.ticks = xt.ticks.filter(function (t) { return t >= xt.lo - 1e-9 && t <= xt.hi + 1e-9; });
    }
    var pw = W - m.l - m.r, ph = H - m.t - m.b;
    var X = function (x) { return m.l + (x - xt.lo) / (xt.hi - xt.lo) * pw; };
    var Y = function (y) { return m.t + ph - (y - yt.lo) / (yt.hi - yt.lo) * ph; };
    var xf = opts.xFormat || function (x) { return String(x); };
    var yf = opts.yFormat || function (y) { return String(y); };

    var svg = svgEl('svg', { width: W, height: H, viewBox: '0 0 ' + W + ' ' + H, role: 'img',
                             'aria-label': opts.title || 'line chart' });
    var grid = svgEl('g', { class: 'grid' });
    yt.ticks.forEach(function (t) {
      grid.appendChild(svgEl('line', { x1: m.l, x2: W - m.r, y1: Y(t), y2: Y(t) }));
      grid.appendChild(svgEl('text', { x: m.l - 6, y: Y(t) + 4, 'text-anchor': 'end', class: 'tick' }, yf(t)));
    });
    xt.ticks.forEach(function (t) {
      grid.appendChild(svgEl('text', { x: X(t), y: H - m.b + 16, 'text-anchor': 'middle', class: 'tick' }, xf(t)));
    });
    grid.appendChild(svgEl('line', { x1: m.l, x2: W - m.r, y1: m.t + ph, y2: m.t + ph, class: 'axis' }));
    if (opts.xTitle) {
      grid.appendChild(svgEl('text', { x: m.l + pw / 2, y: H - 3, 'text-anchor': 'middle', class: 'axis-title' },
                             opts.xTitle));
    }
    svg.appendChild(grid);

    series.forEach(function (s) {
      var g = svgEl('g', { class: 'series', 'data-name': s.name });
      var d = '', pen = false, pts = [];
      s.points.forEach(function (p) {
        if (HF.isNum(p[0]) && HF.isNum(p[1])) {
          d += (pen ? 'L' : 'M') + X(p[0]).toFixed(1) + ',' + Y(p[1]).toFixed(1);
          pen = true;
          pts.push(p);
        } else {
          pen = false;
        }
      });
      g.appendChild(svgEl('path', { d: d, fill: 'none', stroke: s.color, 'stroke-width': s.width || 1.5,
                                    'stroke-dasharray': s.dash ? '5 4' : null, 'stroke-linejoin': 'round',
                                    'stroke-linecap': 'round', opacity: s.opacity }));
      var dots = s.dots != null ? s.dots : pts.length <= 60;
      pts.forEach(function (p) {
        var c = svgEl('circle', { cx: X(p[0]).toFixed(1), cy: Y(p[1]).toFixed(1), r: dots ? (s.width > 2 ? 3.2 : 2.4) : 6,
                                  fill: dots ? s.color : 'transparent', class: 'pt' });
        c.appendChild(svgEl('title', {}, s.name + ' · ' + (opts.xName || 'x') + ' ' + xf(p[0]) + ': ' + yf(p[1])));
        g.appendChild(c);
      });
      svg.appendChild(g);
    });

    el.innerHTML = '';
    el.appendChild(svg);
    if (opts.legend !== false) {
      el.appendChild(legend(series.map(function (s) {
        return { name: s.name, color: s.color, dash: s.dash, width: Math.min(s.width || 1.5, 3) };
      })));
    }
    el.setAttribute('data-points', String(n));
    return n;
  };

  /**
   * Horizontal stacked bars. opts: rows [{label, segments: [{name, value, color}]}], valueFormat.
   * data-points = number of non-zero segments drawn.
   */
  C.stackedBars = function (el, opts) {
    var rows = opts.rows || [];
    var max = 0, n = 0;
    rows.forEach(function (r) {
      var t = 0;
      r.segments.forEach(function (s) { if (HF.isNum(s.value) && s.value > 0) { t += s.value; } });
      r.total = t;
      max = Math.max(max, t);
    });
    if (!rows.length || max <= 0) { empty(el, opts.emptyText); return 0; }
    var W = width(el), bh = 20, gap = 8, m = { l: 96, r: 64, t: 4, b: 4 };
    var H = m.t + m.b + rows.length * (bh + gap) - gap;
    var pw = W - m.l - m.r;
    var svg = svgEl('svg', { width: W, height: H, viewBox: '0 0 ' + W + ' ' + H, role: 'img',
                             'aria-label': opts.title || 'stacked bars' });
    rows.forEach(function (r, i) {
      var y = m.t + i * (bh + gap), x = m.l;
      svg.appendChild(svgEl('text', { x: m.l - 8, y: y + bh / 2 + 4, 'text-anchor': 'end', class: 'row-label' }, r.label));
      r.segments.forEach(function (s) {
        if (!(HF.isNum(s.value) && s.value > 0)) return;
        var w = s.value / max * pw;
        var rect = svgEl('rect', { x: x.toFixed(1), y: y, width: Math.max(w, 0.5).toFixed(1), height: bh, fill: s.color,
                                   class: 'seg' });
        rect.appendChild(svgEl('title', {}, r.label + ' · ' + s.name + ': ' + (opts.valueFormat || String)(s.value) +
                                           ' (' + (100 * s.value / r.total).toFixed(1) + ' %)'));
        svg.appendChild(rect);
        x += w;
        n++;
      });
      svg.appendChild(svgEl('text', { x: x + 6, y: y + bh / 2 + 4, class: 'row-total' },
                            (opts.valueFormat || String)(r.total)));
    });
    el.innerHTML = '';
    el.appendChild(svg);
    if (opts.legend) el.appendChild(legend(opts.legend.map(function (l) { return { name: l.name, color: l.color, box: true }; })));
    el.setAttribute('data-points', String(n));
    return n;
  };

  /**
   * Round timeline: one row per hospital, one column per round, each cell coloured by the
   * hospital's state in that round, labelled with its fit seconds when there is room.
   * opts: rounds [numbers], hospitals [ids], cell(round, hospital) -> {status, label, title, flagged} | null,
   * durations {round: seconds}. data-points = cells drawn.
   */
  C.timeline = function (el, opts) {
    var rounds = opts.rounds || [], hospitals = opts.hospitals || [];
    if (!rounds.length || !hospitals.length) { empty(el, opts.emptyText); return 0; }
    var W = width(el), m = { l: 96, r: 10, t: 22, b: 6 }, rh = 22, gap = 4;
    var H = m.t + m.b + (hospitals.length + 1) * (rh + gap);
    var cw = (W - m.l - m.r) / rounds.length;
    var svg = svgEl('svg', { width: W, height: H, viewBox: '0 0 ' + W + ' ' + H, role: 'img',
                             'aria-label': 'round timeline' });
    var every = Math.max(1, Math.ceil(34 / cw));
    rounds.forEach(function (r, j) {
      if (j % every === 0 || j === rounds.length - 1) {
        svg.appendChild(svgEl('text', { x: m.l + (j + 0.5) * cw, y: 14, 'text-anchor': 'middle', class: 'tick' }, 'R' + r));
      }
    });
    var n = 0;
    hospitals.forEach(function (h, i) {
      var y = m.t + i * (rh + gap);
      svg.appendChild(svgEl('text', { x: m.l - 8, y: y + rh / 2 + 4, 'text-anchor': 'end', class: 'row-label' }, h));
      rounds.forEach(function (r, j) {
        var c = opts.cell(r, h);
        if (!c) return;
        var x = m.l + j * cw + 1;
        var g = svgEl('g', { class: 'cell st-' + c.status });
        g.appendChild(svgEl('rect', { x: x.toFixed(1), y: y, width: Math.max(cw - 2, 1).toFixed(1), height: rh, rx: 3 }));
        if (c.flagged) {
          g.appendChild(svgEl('rect', { x: (x + 1).toFixed(1), y: y + 1, width: Math.max(cw - 4, 1).toFixed(1),
                                        height: rh - 2, rx: 3, class: 'flag' }));
        }
        if (c.label && cw >= 38) {
          g.appendChild(svgEl('text', { x: x + (cw - 2) / 2, y: y + rh / 2 + 4, 'text-anchor': 'middle' }, c.label));
        }
        g.appendChild(svgEl('title', {}, c.title || ''));
        svg.appendChild(g);
        n++;
      });
    });
    var y = m.t + hospitals.length * (rh + gap);
    svg.appendChild(svgEl('text', { x: m.l - 8, y: y + rh / 2 + 4, 'text-anchor': 'end', class: 'row-label muted' },
                          'round time'));
    rounds.forEach(function (r, j) {
      var d = opts.durations && opts.durations[r];
      if (!HF.isNum(d)) return;
      var t = svgEl('text', { x: m.l + (j + 0.5) * cw, y: y + rh / 2 + 4, 'text-anchor': 'middle', class: 'tick' },
                    cw >= 38 ? HF.fmt.secs(d) : '');
      t.appendChild(svgEl('title', {}, 'round ' + r + ': ' + HF.fmt.secs(d)));
      svg.appendChild(t);
    });
    el.innerHTML = '';
    el.appendChild(svg);
    if (opts.legend) el.appendChild(legend(opts.legend));
    el.setAttribute('data-points', String(n));
    return n;
  };

  /**
   * Confusion matrix as an HTML table shaded by row share (rows true, columns predicted).
   * data-points = cells drawn.
   */
  C.confusion = function (el, classes, matrix) {
    if (!matrix || !matrix.length) { empty(el, 'no confusion matrix yet'); return 0; }
    var n = 0;
    var head = '<tr><th class="corner">true \\ predicted</th>' + matrix[0].map(function (_, j) {
      return '<th class="col" title="' + HF.esc(classes[j] != null ? classes[j] : j) + '"><span>' +
        HF.esc(classes[j] != null ? classes[j] : j) + '</span></th>';
    }).join('') + '<th class="col"><span>total</span></th></tr>';
    var body = matrix.map(function (row, i) {
      var total = row.reduce(function (a, b) { return a + (HF.isNum(b) ? b : 0); }, 0);
      return '<tr><th class="row">' + HF.esc(classes[i] != null ? classes[i] : i) + '</th>' + row.map(function (v, j) {
        n++;
        var share = total > 0 && HF.isNum(v) ? v / total : 0;
        var cls = i === j ? 'diag' : 'off';
        var bg = i === j ? 'rgba(34,136,51,' + (0.08 + 0.8 * share).toFixed(3) + ')'
                         : 'rgba(204,51,17,' + (share > 0 ? 0.08 + 0.8 * share : 0).toFixed(3) + ')';
        return '<td class="' + cls + (share > 0.5 ? ' strong' : '') + '" style="background:' + bg + '" title="true ' +
          HF.esc(classes[i]) + ', predicted ' + HF.esc(classes[j]) + ': ' + HF.esc(v) + ' (' + (100 * share).toFixed(1) +
          ' % of the row)">' + HF.esc(v) + '</td>';
      }).join('') + '<td class="total">' + total + '</td></tr>';
    }).join('');
    el.innerHTML = '<table class="confusion">' + head + body + '</table>';
    el.setAttribute('data-points', String(n));
    return n;
  };
})();
