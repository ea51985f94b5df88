/* HemaFed predict page: upload one image, show the top-3 classes from POST /api/predict.
 * document.body.dataset.state: idle | busy | done | error (tests wait on it). */
(function () {
  'use strict';

  var $ = function (id) { return document.getElementById(id); };
  var form = $('predict-form'), input = $('file'), submit = $('submit'), preview = $('preview');
  var previewUrl = null;
  var pending = 0;  // request counter: only the latest answer is shown

  function setState(state) { document.body.dataset.state = state; }

  function show(el, on) { el.hidden = !on; }

  function pct(p) { return (p * 100).toFixed(1) + ' %'; }

  /** FastAPI details are a string, or a list of {loc, msg} for validation errors. */
  function detailText(body, status) {
    var d = body && body.detail;
    if (typeof d === 'string') return d;
    if (Array.isArray(d)) {
      return d.map(function (e) { return (e.loc ? e.loc.join('.') + ': ' : '') + (e.msg || JSON.stringify(e)); })
        .join('; ');
    }
    return 'HTTP ' + status;
  }

  function showError(message) {
    $('error').textContent = message;
    show($('error'), true);
    show($('result'), false);
    setState('error');
  }

  function render(p) {
    var list = $('predictions');
    list.innerHTML = '';
    p.predictions.forEach(function (c) {
      var li = document.createElement('li');
      li.className = 'pred';
      li.dataset.label = c.label;
      li.dataset.probability = String(c.probability);
      var width = Math.max(0, Math.min(100, c.probability * 100));
      li.innerHTML = '<span class="label">' + HF.esc(c.label) + '</span>' +
        '<div class="bar"><div style="width:' + width.toFixed(1) + '%"></div></div>' +
        '<span class="prob">' + pct(c.probability) + '</span>';
      list.appendChild(li);
    });
    list.dataset.count = String(p.predictions.length);
    var top = p.predictions[0];
    $('top-class').textContent = top ? top.label + ' · ' + pct(top.probability) : '–';
    var run = $('result-run');
    run.textContent = p.run_id;
    run.href = '/?run=' + HF.enc(p.run_id);
    $('result-round').textContent = String(p.round);
    $('result-model').textContent = p.model || '–';
    $('result-size').textContent = p.image_size + ' × ' + p.image_size + ' px';
    show($('error'), false);
    show($('result'), true);
    setState('done');
  }

  function classify() {
    var file = input.files && input.files[0];
    if (!file) { showError('Choose an image file first.'); return; }
    var mine = ++pending;
    var body = new FormData();
    body.append('file', file, file.name);
    setState('busy');
    show($('busy'), true);
    submit.disabled = true;
    fetch('/api/predict', { method: 'POST', body: body, headers: { Accept: 'application/json' } })
      .then(function (r) {
        return r.json().catch(function () { return null; }).then(function (json) {
          if (mine !== pending) return;
          if (r.ok && json && Array.isArray(json.predictions)) render(json);
          else showError(detailText(json, r.status) + ' (HTTP ' + r.status + ')');
        });
      }, function (e) {
        if (mine === pending) showError('The metrics service cannot be reached: ' + (e && e.message || e));
      })
      .then(function () {
        if (mine === pending) { show($('busy'), false); submit.disabled = !input.files.length; }
      });
  }

  input.addEventListener('change', function () {
    var file = input.files && input.files[0];
    if (previewUrl) { URL.revokeObjectURL(previewUrl); previewUrl = null; }
    submit.disabled = !file;
    if (!file) { show(preview, false); return; }
    previewUrl = URL.createObjectURL(file);
    preview.src = previewUrl;
    show(preview, true);
    classify();  // a chosen file is classified at once; the button repeats it
  });

  form.addEventListener('submit', function (e) {
    e.preventDefault();
    classify();
  });
})();
