/* HemaFed runs page: every recorded run with its settings and final figures (polled). */
(function () {
  'use strict';
  var HF = window.HF, fmt = HF.fmt, esc = HF.esc, enc = HF.enc;
  var last = null;

  var COLUMNS = [
    { label: 'run', cell: function (r) { return { html: '<a href="/?run=' + esc(enc(r.id)) + '">' + esc(r.id) + '</a>' }; } },
    { label: 'status', cell: function (r) { return { html: '<span class="pill st-' + esc(r.status) + '">' + esc(r.status) + '</span>' }; } },
    { label: 'started', cell: function (r) { return fmt.date(r.started_at); } },
    { label: 'duration', num: true, cell: function (r) {
      return fmt.secs((r.finished_at || Date.now() / 1000) - r.started_at);
    } },
    { label: 'dataset', cell: function (r) { return r.dataset || '–'; } },
    { label: 'split', cell: function (r) { return r.split || '–'; } },
    { label: 'model', cell: function (r) { return r.model || '–'; } },
    { label: 'strategy', cell: function (r) { return r.strategy || '–'; } },
    { label: 'hospitals', num: true, cell: function (r) { return r.clients; } },
    { label: 'rounds', num: true, cell: function (r) { return r.rounds_completed + ' / ' + r.rounds_total; } },
    { label: 'image', num: true, cell: function (r) { var c = r.config || {}; return c.image_size ? c.image_size + ' px' : '–'; } },
    { label: 'epochs', num: true, cell: function (r) { return fmt.num((r.config || {}).local_epochs); } },
    { label: 'lr', num: true, cell: function (r) { var v = (r.config || {}).learning_rate; return HF.isNum(v) ? String(v) : '–'; } },
    { label: 'best round', num: true, cell: function (r) { return r.best_round != null ? 'R' + r.best_round : '–'; } },
    { label: 'test accuracy', num: true, cell: function (r) { return fmt.pct(r.test_accuracy); } },
    { label: 'macro F1', num: true, cell: function (r) { return fmt.num((r.test_results || {}).macro_f1); } },
    { label: 'note', cell: function (r) { return r.message || ''; } }
  ];

  function render(runs) {
    var el = document.getElementById('table-runs');
    el.innerHTML = '<thead><tr>' + COLUMNS.map(function (c) {
      return '<th class="' + (c.num ? 'num' : '') + '">' + esc(c.label) + '</th>';
    }).join('') + '</tr></thead><tbody>' + (runs.length ? runs.map(function (r) {
      return '<tr data-run-id="' + esc(r.id) + '">' + COLUMNS.map(function (c) {
        var v = c.cell(r);
        return '<td class="' + (c.num ? 'num' : '') + (c.label === 'note' ? ' note' : '') + '">' +
          (v && v.html != null ? v.html : esc(v == null ? '–' : v)) + '</td>';
      }).join('') + '</tr>';
    }).join('') : '<tr><td class="muted" colspan="' + COLUMNS.length + '">no runs recorded yet: start one with <code>make up</code></td></tr>') +
      '</tbody>';
    el.setAttribute('data-rows', String(runs.length));
    document.getElementById('runs-count').textContent = runs.length + (runs.length === 1 ? ' run' : ' runs');
  }

  HF.downloads(document.getElementById('dl-runs'), [{ label: 'CSV', href: '/api/runs.csv' }, { label: 'JSON', href: '/api/runs' }]);
  HF.poll(function () {
    return HF.getJSON('/api/runs').then(function (runs) {
      var key = JSON.stringify(runs);
      if (key !== last || runs.some(function (r) { return r.status === 'running'; })) { render(runs); last = key; }
    });
  }, function () { return 5000; });
})();
