/* HemaFed live dashboard: polls the JSON API and redraws the charts and tables in place.
 * Run: ?run=<id>, else the newest run (switches to a newer run when one starts).
 * Test hooks: every chart has data-points; <body> gets data-run-id, data-run-status and data-updates. */
(function () {
  'use strict';
  var HF = window.HF, C = HF.charts, fmt = HF.fmt, esc = HF.esc, enc = HF.enc;

  var STATUS_INFO = {
    ok: { name: 'answered', color: '#2e8b57' },
    timeout: { name: 'timed out', color: '#e0a100' },
    error: { name: 'error', color: '#c0392b' },
    rejected: { name: 'rejected', color: '#8e44ad' },
    unreachable: { name: 'unreachable / dropped', color: '#7f4f24' },
    not_selected: { name: 'not selected', color: '#d5d9de' }
  };
  var GLOBAL_COLOR = '#1f2933', MEAN_COLOR = '#5b6b7a';

  var params = new URLSearchParams(location.search);
  var pinned = params.get('run');
  var st = { runId: pinned, run: null, rounds: [], samples: [], keys: {}, updates: 0 };

  function $(id) { return document.getElementById(id); }
  function show(id, on) { var e = $(id); if (e) e.hidden = !on; }

  function interval() {
    if (!st.run) return 3000;
    return st.run.status === 'running' ? 3000 : 10000;
  }

  function changed(name, value) {
    var key = JSON.stringify(value);
    if (st.keys[name] === key) return false;
    st.keys[name] = key;
    return true;
  }

  function tick() {
    var pick = pinned ? Promise.resolve(pinned) : HF.getJSON('/api/runs').then(function (runs) {
      return runs.length ? runs[0].id : null;
    });
    return pick.then(function (id) {
      if (!id) { showState('no-run'); return null; }
      if (id !== st.runId) { st.runId = id; st.keys = {}; }
      return HF.getJSON('/api/runs/' + enc(id)).catch(function (err) {
        if (err.status === 404) { showState('missing-run', id); return null; }
        throw err;
      });
    }).then(function (run) {
      if (!run) return;
      var base = '/api/runs/' + enc(run.id);
      return Promise.all([HF.getJSON(base + '/rounds'), HF.getJSON(base + '/resources?limit=20000')]).then(function (r) {
        st.run = run; st.rounds = r[0]; st.samples = r[1];
        showState('run');
        render();
      });
    });
  }

  function showState(which, id) {
    show('no-run', which === 'no-run');
    show('missing-run', which === 'missing-run');
    show('summary', which === 'run');
    show('panels', which === 'run');
    if (which === 'missing-run') $('missing-id').textContent = id;
    document.body.setAttribute('data-state', which);
  }

  // ------------------------------------------------------------------ helpers over the data

  function hospitalIds() {
    var set = {};
    var hd = (st.run.config || {}).hospital_data || {};
    Object.keys(hd).forEach(function (h) { set[h] = 1; });
    st.rounds.forEach(function (r) { Object.keys(r.hospitals || {}).forEach(function (h) { set[h] = 1; }); });
    return Object.keys(set).sort(HF.naturalCompare);
  }

  function roundSeconds() {
    var out = [];
    st.rounds.forEach(function (r) { if (HF.isNum(r.duration_seconds)) out.push(r.duration_seconds); });
    return out;
  }

  function bestRound() {
    var best = null;
    st.rounds.forEach(function (r) {
      var v = (r.global || {}).val_accuracy_median;
      if (HF.isNum(v) && (!best || v > best.acc)) best = { round: r.round, acc: v };
    });
    if (st.run.best_round != null) {
      var rr = st.rounds.filter(function (r) { return r.round === st.run.best_round; })[0];
      if (rr) best = { round: rr.round, acc: (rr.global || {}).val_accuracy_median };
    }
    return best;
  }

  function stat(label, value, sub) {
    return '<div class="stat"><div class="stat-label">' + esc(label) + '</div><div class="stat-value">' + esc(value) +
      '</div>' + (sub ? '<div class="stat-sub">' + esc(sub) + '</div>' : '') + '</div>';
  }

  function table(el, columns, rows) {
    el.innerHTML = '<thead><tr>' + columns.map(function (c) {
      return '<th class="' + (c.num ? 'num' : '') + '">' + esc(c.label) + '</th>';
    }).join('') + '</tr></thead><tbody>' + (rows.length ? rows.map(function (row) {
      return '<tr>' + columns.map(function (c, i) {
        var v = row[i];
        var html = v && v.html != null ? v.html : esc(v == null ? '–' : v);
        return '<td class="' + (c.num ? 'num' : '') + '">' + html + '</td>';
      }).join('') + '</tr>';
    }).join('') : '<tr><td class="muted" colspan="' + columns.length + '">no rows yet</td></tr>') + '</tbody>';
    el.setAttribute('data-rows', String(rows.length));
  }

  // ------------------------------------------------------------------ rendering

  function render() {
    var run = st.run;
    st.updates++;
    document.body.setAttribute('data-run-id', run.id);
    document.body.setAttribute('data-run-status', run.status);
    document.body.setAttribute('data-updates', String(st.updates));
    document.title = 'HemaFed · ' + run.id + ' · ' + run.status;
    renderSummary();
    var colors = HF.colorMap(hospitalIds());
    if (changed('rounds', [st.rounds, run.config && run.config.hospital_data, run.best_round])) {
      renderAccuracy(colors);
      renderLoss(colors);
      renderTimeline();
      renderRoundsTable();
      renderPrivacy();
      renderData(colors);
    }
    renderResources();
    if (changed('test', run.test_results)) renderTest();
    if (!st.downloadsDone || st.downloadsDone !== run.id) renderDownloads();
  }

  function renderDownloads() {
    var base = '/api/runs/' + enc(st.run.id);
    HF.downloads($('dl-rounds'), [{ label: 'CSV', href: base + '/rounds.csv' }, { label: 'JSON', href: base + '/rounds' }]);
    HF.downloads($('dl-resources'), [{ label: 'CSV', href: base + '/resources.csv' },
                                     { label: 'JSON', href: base + '/resources' }]);
    HF.downloads($('dl-hospitals'), [{ label: 'CSV', href: base + '/hospitals.csv' }, { label: 'JSON', href: base }]);
    HF.downloads($('dl-per-class'), [{ label: 'CSV', href: base + '/per_class.csv' }, { label: 'JSON', href: base }]);
    HF.downloads($('dl-confusion'), [{ label: 'CSV', href: base + '/confusion.csv' }, { label: 'JSON', href: base }]);
    st.downloadsDone = st.run.id;
  }

  function renderSummary() {
    var run = st.run, cfg = run.config || {};
    $('run-id').textContent = run.id;
    var badge = $('run-status');
    badge.textContent = run.status;
    badge.className = 'badge st-' + run.status;
    var done = run.rounds_completed || st.rounds.length, total = run.rounds_total || 0;
    $('run-round').textContent = 'round ' + done + ' of ' + total;
    $('run-progress').style.width = (total ? Math.min(100, 100 * done / total) : 0).toFixed(1) + '%';
    var now = Date.now() / 1000;
    var end = run.finished_at || now;
    var elapsed = end - run.started_at;
    var secs = roundSeconds();
    var eta = '';
    if (run.status === 'running' && done > 0 && done < total) {
      var per = secs.length ? secs.reduce(function (a, b) { return a + b; }, 0) / secs.length : elapsed / done;
      eta = 'ETA ' + fmt.secs(per * (total - done));
    } else if (run.status === 'running' && done >= total) {
      eta = 'testing the best model…';
    } else if (run.status !== 'running') {
      eta = 'took ' + fmt.secs(elapsed);
    }
    $('run-eta').textContent = eta;

    var last = st.rounds.length ? st.rounds[st.rounds.length - 1].global || {} : {};
    var best = bestRound();
    var test = run.test_results || {};
    $('run-stats').innerHTML = [
      stat('val accuracy (median)', fmt.pct(last.val_accuracy_median), 'mean ' + fmt.pct(last.val_accuracy_mean)),
      stat('best round', best ? 'R' + best.round : '–', best ? 'median ' + fmt.pct(best.acc) : ''),
      stat('test accuracy', fmt.pct(HF.isNum(run.test_accuracy) ? run.test_accuracy : test.accuracy),
           HF.isNum(test.macro_f1) ? 'macro F1 ' + fmt.num(test.macro_f1) : (run.status === 'running' ? 'after the last round' : '')),
      stat('elapsed', fmt.secs(elapsed), 'started ' + fmt.date(run.started_at)),
      stat('mean round time', secs.length ? fmt.secs(secs.reduce(function (a, b) { return a + b; }, 0) / secs.length) : '–',
           secs.length ? secs.length + ' rounds' : '')
    ].join('');

    var settings = [
      ['dataset', run.dataset || cfg.dataset], ['split', run.split || cfg.split], ['model', run.model || cfg.model],
      ['strategy', run.strategy || cfg.strategy && cfg.strategy.name], ['hospitals', run.clients],
      ['image size', cfg.image_size && cfg.image_size + ' px'], ['local epochs', cfg.local_epochs],
      ['batch', cfg.batch_size], ['learning rate', cfg.learning_rate], ['optimizer', cfg.optimizer],
      ['classes', (cfg.classes || []).length || null]
    ];
    if (HF.isNum(cfg.dp_noise_multiplier) && cfg.dp_noise_multiplier > 0) {
      settings.push(['DP-SGD', 'z=' + cfg.dp_noise_multiplier + ', C=' + cfg.dp_clip_norm]);
    }
    $('run-settings').innerHTML = settings.filter(function (s) { return s[1] != null && s[1] !== ''; }).map(function (s) {
      return '<span class="setting"><b>' + esc(s[0]) + '</b> ' + esc(typeof s[1] === 'object' ? JSON.stringify(s[1]) : s[1]) + '</span>';
    }).join('');
    var msg = $('run-message');
    msg.hidden = !run.message;
    msg.textContent = run.message || '';
    msg.className = 'message' + (run.status === 'failed' ? ' bad' : '');
  }

  function hospitalSeries(colors, key, opts) {
    return hospitalIds().map(function (h) {
      return Object.assign({
        name: h, color: colors[h], width: 1.4, opacity: 0.85,
        points: st.rounds.map(function (r) {
          var m = (r.hospitals || {})[h];
          return [r.round, m && HF.isNum(m[key]) ? m[key] : null];
        })
      }, opts || {});
    });
  }

  function renderAccuracy(colors) {
    var g = function (k) { return st.rounds.map(function (r) { return [r.round, (r.global || {})[k]]; }); };
    C.line($('chart-accuracy'), {
      title: 'validation accuracy per round', xInteger: true, xName: 'round', xTitle: 'round', yMin: 0, yMax: 1,
      yFormat: function (v) { return Math.round(v * 100) + ' %'; }, height: 260,
      emptyText: 'waiting for the first round…',
      series: [
        { name: 'global median', color: GLOBAL_COLOR, width: 3, points: g('val_accuracy_median') },
        { name: 'global mean', color: MEAN_COLOR, width: 2.2, dash: true, points: g('val_accuracy_mean') }
      ].concat(hospitalSeries(colors, 'val_accuracy'))
    });
  }

  function renderLoss(colors) {
    var series = [{ name: 'global val loss', color: GLOBAL_COLOR, width: 3,
                    points: st.rounds.map(function (r) { return [r.round, (r.global || {}).val_loss]; }) }]
      .concat(hospitalSeries(colors, 'val_loss'))
      .concat(hospitalSeries(colors, 'train_loss', { dash: true, opacity: 0.6 }).map(function (s) {
        s.name = s.name + ' (train)';
        return s;
      }));
    C.line($('chart-loss'), {
      title: 'loss per round', xInteger: true, xName: 'round', xTitle: 'round', height: 260,
      yFormat: function (v) { return +v.toFixed(3) + ''; }, emptyText: 'waiting for the first round…',
      series: series, legend: false
    });
    var leg = C.legend([{ name: 'global val loss', color: GLOBAL_COLOR, width: 3 }].concat(
      hospitalIds().map(function (h) { return { name: h, color: colors[h] }; })));
    $('chart-loss').appendChild(leg);
  }

  function renderTimeline() {
    var hospitals = hospitalIds();
    var durations = {};
    st.rounds.forEach(function (r) { durations[r.round] = r.duration_seconds; });
    var byRound = {};
    st.rounds.forEach(function (r) { byRound[r.round] = r; });
    var seen = {};
    C.timeline($('chart-timeline'), {
      rounds: st.rounds.map(function (r) { return r.round; }),
      hospitals: hospitals,
      durations: durations,
      emptyText: 'waiting for the first round…',
      cell: function (rnd, h) {
        var r = byRound[rnd], m = (r.hospitals || {})[h];
        var report = r.report || {};
        var part = (report.participation || {})[h];
        if (!m && !part) return null;
        var status = m ? m.status : String(part);
        if (!STATUS_INFO[status]) status = status === 'dropped' ? 'unreachable' : status;
        seen[status] = 1;
        var out = ((report.outliers || {})[h]) || null;
        var title = h + ' · round ' + rnd + ': ' + ((STATUS_INFO[status] || {}).name || status);
        if (m) {
          if (HF.isNum(m.fit_seconds)) title += '\nfit ' + fmt.secs(m.fit_seconds);
          if (HF.isNum(m.val_accuracy)) title += '\nval accuracy ' + fmt.pct(m.val_accuracy);
          if (m.num_examples) title += '\n' + fmt.num(m.num_examples) + ' examples';
          if (m.request_bytes) title += '\nsent ' + fmt.bytes(m.request_bytes);
          if (m.update_bytes) title += '\nupdate ' + fmt.bytes(m.update_bytes);
          if (m.message) title += '\n' + m.message;
        }
        if (out && out.flagged) title += '\nflagged as an outlier (norm ' + fmt.num(out.norm) + ', cosine ' + fmt.num(out.cosine) + ')';
        return { status: status, flagged: !!(out && out.flagged), title: title,
                 label: m && HF.isNum(m.fit_seconds) ? m.fit_seconds.toFixed(m.fit_seconds < 10 ? 1 : 0) + 's' : '' };
      },
      legend: Object.keys(STATUS_INFO).map(function (k) {
        return { name: STATUS_INFO[k].name, color: STATUS_INFO[k].color, box: true };
      }).concat([{ name: 'outline: flagged outlier', color: '#c0392b', box: true }])
    });
  }

  function renderRoundsTable() {
    var anyEps = st.rounds.some(function (r) { return r.report && 'dp_epsilon' in r.report; });
    var cols = [{ label: 'round', num: true }, { label: 'val acc median', num: true }, { label: 'val acc mean', num: true },
                { label: 'val loss', num: true }, { label: 'answered', num: true }, { label: 'failed', num: false },
                { label: 'duration', num: true }];
    if (anyEps) cols.push({ label: 'ε spent', num: true });
    var rows = st.rounds.slice().reverse().map(function (r) {
      var g = r.global || {}, hs = r.hospitals || {};
      var ids = Object.keys(hs);
      var ok = ids.filter(function (h) { return hs[h].status === 'ok'; }).length;
      var selected = ids.filter(function (h) { return hs[h].status !== 'not_selected'; }).length;
      var bad = ids.filter(function (h) { return hs[h].status !== 'ok' && hs[h].status !== 'not_selected'; })
        .map(function (h) { return h + ' (' + hs[h].status + ')'; }).join(', ');
      var row = [r.round, fmt.pct(g.val_accuracy_median), fmt.pct(g.val_accuracy_mean), fmt.num(g.val_loss),
                 ok + ' / ' + selected, bad || '–', fmt.secs(r.duration_seconds)];
      if (anyEps) row.push(r.report && r.report.dp_epsilon != null ? fmt.num(r.report.dp_epsilon, 2) : '∞');
      return row;
    });
    table($('table-rounds'), cols, rows);
  }

  function renderPrivacy() {
    var cfg = st.run.config || {};
    var eps = st.rounds.filter(function (r) { return r.report && 'dp_epsilon' in r.report; });
    var dpOn = eps.length > 0 || (HF.isNum(cfg.dp_noise_multiplier) && cfg.dp_noise_multiplier > 0) ||
      /dp/i.test(String(st.run.strategy || ''));
    var fig = $('privacy-figure');
    $('card-privacy').classList.toggle('off', !dpOn);
    if (!dpOn) {
      fig.textContent = 'off';
      C.empty($('chart-privacy'), 'differential privacy is not enabled for this run');
      return;
    }
    if (!eps.length) {
      fig.textContent = '–';
      C.empty($('chart-privacy'), 'no privacy accounting reported yet');
      return;
    }
    var last = eps[eps.length - 1].report;
    fig.innerHTML = 'ε = ' + (last.dp_epsilon == null ? '∞' : esc(fmt.num(last.dp_epsilon, 2))) +
      '<span class="sub">at δ = ' + esc(last.dp_delta != null ? last.dp_delta : cfg.dp_delta) + ' after round ' +
      esc(eps[eps.length - 1].round) + '</span>';
    C.line($('chart-privacy'), {
      title: 'privacy budget', xInteger: true, xName: 'round', xTitle: 'round', height: 170, legend: false,
      emptyText: 'ε is infinite (no noise)',
      series: [{ name: 'ε', color: '#8e44ad', width: 2.5,
                 points: eps.map(function (r) { return [r.round, r.report.dp_epsilon]; }) }]
    });
  }

  function renderData(colors) {
    var cfg = st.run.config || {};
    var hd = cfg.hospital_data || {};
    var hospitals = Object.keys(hd).sort(HF.naturalCompare);
    var classes = (cfg.classes || []).slice();
    hospitals.forEach(function (h) {
      Object.keys((hd[h] || {}).classes || {}).forEach(function (c) { if (classes.indexOf(c) < 0) classes.push(c); });
    });
    var ccolor = {};
    classes.forEach(function (c, i) { ccolor[c] = HF.color(i); });
    C.stackedBars($('chart-classes'), {
      title: 'examples per class and hospital', emptyText: 'no hospital data reported',
      valueFormat: function (v) { return fmt.num(v); },
      rows: hospitals.map(function (h) {
        var counts = (hd[h] || {}).classes || {};
        return { label: h, segments: classes.map(function (c) { return { name: c, value: counts[c] || 0, color: ccolor[c] }; }) };
      }),
      legend: classes.map(function (c) { return { name: c, color: ccolor[c] }; })
    });
    var lastRound = st.rounds.length ? st.rounds[st.rounds.length - 1] : null;
    var cols = [{ label: 'hospital' }, { label: 'train', num: true }, { label: 'validation', num: true },
                { label: 'skipped files', num: true }, { label: 'last state' }]
      .concat(classes.map(function (c) { return { label: c, num: true }; }));
    table($('table-hospitals'), cols, hospitals.map(function (h) {
      var d = hd[h] || {}, counts = d.classes || {};
      var last = lastRound && (lastRound.hospitals || {})[h];
      var state = last ? last.status : '–';
      return [{ html: '<i class="dot" style="background:' + esc(colors[h]) + '"></i>' + esc(h) }, fmt.num(d.num_train),
              fmt.num(d.num_val), fmt.num(d.skipped_files),
              { html: '<span class="pill st-' + esc(state) + '">' + esc(state) + '</span>' }]
        .concat(classes.map(function (c) { return fmt.num(counts[c] || 0); }));
    }));
  }

  function renderResources() {
    var run = st.run;
    var t0 = run.started_at;
    var by = {};
    st.samples.forEach(function (s) { (by[s.service] = by[s.service] || []).push(s); });
    var services = Object.keys(by).sort(function (a, b) {
      var rank = function (s) { return s === 'aggregator' ? 0 : s === 'metrics' ? 1 : 2; };
      return rank(a) - rank(b) || HF.naturalCompare(a, b);
    });
    var colors = {};
    var hcolors = HF.colorMap(hospitalIds());
    services.forEach(function (s, i) { colors[s] = hcolors[s] || (s === 'aggregator' ? GLOBAL_COLOR : s === 'metrics' ? '#95a5a6' : HF.color(i + 6)); });
    var mk = function (key, scale) {
      return services.map(function (s) {
        return { name: s, color: colors[s], width: s === 'aggregator' ? 2 : 1.4, dots: false,
                 points: by[s].map(function (x) { return [x.t - t0, HF.isNum(x[key]) ? x[key] * (scale || 1) : null]; }) };
      });
    };
    var common = { xFormat: fmt.clock, xName: 't', xTitle: 'time since the run started (min:s)', height: 200,
                   emptyText: 'waiting for resource samples…' };
    C.line($('chart-cpu'), Object.assign({ title: 'CPU % per service', series: mk('cpu_percent'), yMin: 0,
                                           yFormat: function (v) { return Math.round(v) + ' %'; } }, common));
    C.line($('chart-ram'), Object.assign({ title: 'memory per service', series: mk('rss_bytes', 1 / 1048576), yMin: 0,
                                           yFormat: function (v) { return Math.round(v) + ' MiB'; } }, common));
    var gpu = services.filter(function (s) { return by[s].some(function (x) { return HF.isNum(x.gpu_util); }); });
    $('card-gpu').classList.toggle('off', !gpu.length);
    if (gpu.length) {
      C.line($('chart-gpu'), Object.assign({ title: 'GPU utilisation', yMin: 0, yMax: 100,
                                             series: mk('gpu_util').filter(function (s) { return gpu.indexOf(s.name) >= 0; }),
                                             yFormat: function (v) { return Math.round(v) + ' %'; } }, common));
    } else {
      C.empty($('chart-gpu'), 'no GPU reported by any service');
    }
    table($('table-resources'), [{ label: 'service' }, { label: 'last sample' }, { label: 'CPU', num: true },
                                 { label: 'memory', num: true }, { label: 'GPU', num: true }, { label: 'GPU memory', num: true },
                                 { label: 'samples', num: true }],
          services.map(function (s) {
            var x = by[s][by[s].length - 1];
            return [{ html: '<i class="dot" style="background:' + esc(colors[s]) + '"></i>' + esc(s) },
                    fmt.clock(x.t - t0), HF.isNum(x.cpu_percent) ? x.cpu_percent.toFixed(0) + ' %' : '–',
                    fmt.bytes(x.rss_bytes), HF.isNum(x.gpu_util) ? x.gpu_util.toFixed(0) + ' %' : '–',
                    fmt.bytes(x.gpu_mem_bytes), by[s].length];
          }));
  }

  function renderTest() {
    var t = st.run.test_results;
    show('card-test', !!t);
    if (!t) return;
    var skip = { per_class: 1, confusion_matrix: 1, classes: 1, run_id: 1 };
    var tiles = [];
    var order = ['accuracy', 'macro_f1', 'macro_precision', 'macro_recall'];
    var keys = Object.keys(t).filter(function (k) { return !skip[k]; });
    keys.sort(function (a, b) {
      var ia = order.indexOf(a), ib = order.indexOf(b);
      return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib);
    });
    var value = function (k, v) {
      if (!HF.isNum(v)) return String(v);
      if (/seconds$/.test(k)) return fmt.secs(v);
      if (/bytes/.test(k)) return fmt.bytes(v);
      if (Number.isInteger(v) && !/accuracy|auc|f1|precision|recall|specificity/i.test(k)) return fmt.num(v);
      if (/accuracy|f1|precision|recall|specificity/i.test(k) && v >= 0 && v <= 1) return fmt.pct(v);
      return fmt.num(v);
    };
    keys.forEach(function (k) {
      var v = t[k];
      if (HF.isNum(v) || (typeof v === 'string' && v.length <= 24) || typeof v === 'boolean') {
        tiles.push(stat(fmt.label(k), value(k, v)));
      } else if (v && typeof v === 'object' && !Array.isArray(v)) {
        Object.keys(v).forEach(function (sub) {
          if (HF.isNum(v[sub])) tiles.push(stat(fmt.label(k) + ' · ' + fmt.label(sub), value(k, v[sub])));
        });
      }
    });
    $('test-stats').innerHTML = tiles.join('');
    $('test-hint').textContent = (st.run.best_round != null ? 'best round R' + st.run.best_round + ' · ' : '') +
      (HF.isNum(t.num_examples) ? fmt.num(t.num_examples) + ' held-out test images' : 'held-out test set');
    var per = t.per_class || {};
    var classes = Array.isArray(t.classes) && t.classes.length ? t.classes.slice() : Object.keys(per);
    Object.keys(per).forEach(function (c) { if (classes.indexOf(c) < 0) classes.push(c); });
    var metrics = [];
    classes.forEach(function (c) {
      Object.keys(per[c] || {}).forEach(function (m) { if (metrics.indexOf(m) < 0) metrics.push(m); });
    });
    table($('table-per-class'), [{ label: 'class' }].concat(metrics.map(function (m) { return { label: fmt.label(m), num: true }; })),
          classes.filter(function (c) { return per[c]; }).map(function (c) {
            return [c].concat(metrics.map(function (m) {
              var v = per[c][m];
              return HF.isNum(v) ? (Number.isInteger(v) && m === 'support' ? fmt.num(v) : v.toFixed(3)) : (v == null ? '–' : String(v));
            }));
          }));
    C.confusion($('chart-confusion'), classes, Array.isArray(t.confusion_matrix) ? t.confusion_matrix : []);
  }

  HF.onResize(function () { st.keys = {}; if (st.run) render(); });
  HF.poll(tick, interval);
})();
