/* HemaFed pages: shared helpers (no framework, no network beyond this service's JSON API).
 * Records the page's uncaught errors in window.hemafedErrors (tests read it). */
(function () {
  'use strict';

  var errors = window.hemafedErrors = window.hemafedErrors || [];
  window.addEventListener('error', function (e) {
    var where = e.filename ? ' (' + e.filename + ':' + e.lineno + ')' : '';
    errors.push(String(e.message || 'error') + where);
  });
  window.addEventListener('unhandledrejection', function (e) {
    var r = e.reason;
    errors.push('unhandled rejection: ' + (r && (r.stack || r.message) || String(r)));
  });

  var HF = window.HF = {};

  /** GET a JSON resource of this service; rejects with err.status set on an HTTP error. */
  HF.getJSON = function (path) {
    return fetch(path, { cache: 'no-store', headers: { Accept: 'application/json' } }).catch(function (e) {
      var err = new Error(path + ': ' + (e && e.message || 'network error'));
      err.network = true;
      throw err;
    }).then(function (r) {
      if (!r.ok) {
        var err = new Error(path + ': HTTP ' + r.status);
        err.status = r.status;
        throw err;
      }
      return r.json();
    });
  };

  HF.esc = function (s) {
    return String(s == null ? '' : s).replace(/[&<>"']/g, function (c) {
      return { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c];
    });
  };

  HF.enc = encodeURIComponent;

  HF.isNum = function (v) { return typeof v === 'number' && isFinite(v); };

  HF.fmt = {
    pct: function (v, digits) {
      return HF.isNum(v) ? (v * 100).toFixed(digits == null ? 1 : digits) + ' %' : '–';
    },
    num: function (v, digits) {
      if (!HF.isNum(v)) return '–';
      if (Number.isInteger(v)) return v.toLocaleString('en-US');
      return v.toFixed(digits == null ? 3 : digits);
    },
    bytes: function (v) {
      if (!HF.isNum(v)) return '–';
      var units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
      var i = 0;
      while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
      return (i === 0 ? v.toFixed(0) : v.toFixed(v >= 100 ? 0 : 1)) + ' ' + units[i];
    },
    secs: function (v) {
      if (!HF.isNum(v)) return '–';
      if (v < 60) return v.toFixed(v < 10 ? 1 : 0) + ' s';
      var m = Math.floor(v / 60), s = Math.round(v % 60);
      if (m < 60) return m + ' min ' + (s < 10 ? '0' : '') + s + ' s';
      return Math.floor(m / 60) + ' h ' + (m % 60) + ' min';
    },
    clock: function (v) {  // seconds -> m:ss
      if (!HF.isNum(v)) return '–';
      var sign = v < 0 ? '-' : '';
      v = Math.abs(Math.round(v));
      return sign + Math.floor(v / 60) + ':' + ('0' + (v % 60)).slice(-2);
    },
    date: function (unix) {
      if (!HF.isNum(unix)) return '–';
      var d = new Date(unix * 1000);
      var p = function (n) { return ('0' + n).slice(-2); };
      return d.getFullYear() + '-' + p(d.getMonth() + 1) + '-' + p(d.getDate()) + ' ' + p(d.getHours()) + ':' +
        p(d.getMinutes());
    },
    label: function (key) {  // macro_f1 -> macro F1
      return String(key).replace(/_/g, ' ').replace(/\b(f1|auc|roc|dp|val)\b/gi, function (w) {
        return w.toUpperCase();
      });
    }
  };

  /** Categorical palette (colour-blind friendly first eight, then more). */
  var PALETTE = ['#4477aa', '#ee6677', '#228833', '#ccbb44', '#66ccee', '#aa3377', '#e08a2c', '#7a5195',
                 '#2f4b7c', '#a05195', '#3fa796', '#b9770e'];
  HF.color = function (i) { return PALETTE[((i % PALETTE.length) + PALETTE.length) % PALETTE.length]; };

  /** Stable colour per hospital id, by its position in the sorted id list. */
  HF.colorMap = function (ids) {
    var map = {};
    ids.slice().sort(HF.naturalCompare).forEach(function (id, i) { map[id] = HF.color(i); });
    return map;
  };

  HF.naturalCompare = function (a, b) {
    return String(a).localeCompare(String(b), 'en', { numeric: true });
  };

  /** <a> download links (CSV and JSON) for a table, into `el`. */
  HF.downloads = function (el, links) {
    if (!el) return;
    el.innerHTML = links.filter(function (l) { return l && l.href; }).map(function (l) {
      return '<a class="dl" href="' + HF.esc(l.href) + '"' + (l.download ? ' download="' + HF.esc(l.download) + '"' : '') +
        ' title="download ' + HF.esc(l.label) + '">' + HF.esc(l.label) + '</a>';
    }).join('');
  };

  /** Run `fn` (returning a promise) now and again `interval()` ms after each completion.
   * Network failures flip the live indicator; they are not page errors. */
  HF.poll = function (fn, interval) {
    var live = document.getElementById('live');
    function setLive(ok, text) {
      if (!live) return;
      live.className = 'live ' + (ok ? 'ok' : 'down');
      live.textContent = text;
    }
    function tick() {
      Promise.resolve().then(fn).then(function () {
        var d = new Date();
        setLive(true, 'live · updated ' + d.toLocaleTimeString('en-GB'));
      }, function (err) {
        if (err && (err.status || err.network)) {  // HTTP error or network down: retry
          setLive(false, 'no connection to the metrics service · retrying');
        } else {
          throw err;  // a bug: let it surface as a page error
        }
      }).then(function () {
        setTimeout(tick, interval());
      }, function (err) {
        setTimeout(tick, interval());
        throw err;
      });
    }
    tick();
  };

  /** Debounced redraw on window resize. */
  HF.onResize = function (fn) {
    var t = null;
    window.addEventListener('resize', function () {
      clearTimeout(t);
      t = setTimeout(fn, 150);
    });
  };
})();
