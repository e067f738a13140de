// runner results page: draws the overview from window.RUNNER_PAGE (inline in index.html) and
// browses per-sample records, which page/records/<stage-id>.js files hand to runnerRecords()
// when a <script> tag loads them (browsers refuse fetch() of file:// URLs, but run scripts).
(function () {
  'use strict';
  var D = window.RUNNER_PAGE;
  var FOLD_AT = 600;   // characters shown of a long text until it is unfolded
  var PAGE_SIZE = 50;  // samples drawn at a time

  // ---- small DOM helpers (text always goes through textContent: records are untrusted) ----
  function el(tag, attrs, children) {
    var e = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        if (k === 'text') e.textContent = attrs[k];
        else if (k === 'cls') e.className = attrs[k];
        else e.setAttribute(k, attrs[k]);
      });
    }
    (children || []).forEach(function (c) {
      if (c !== null && c !== undefined) e.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
    });
    return e;
  }
  function $(sel) { return document.querySelector(sel); }
  function content(id) { return document.querySelector('#' + id + ' .content'); }
  function fmtValue(v) { return typeof v === 'string' ? v : JSON.stringify(v); }
  function fmtNum(x) {
    if (x === null || x === undefined) return '';
    if (Number.isInteger(x)) return String(x);
    return Math.abs(x) >= 1000 ? x.toFixed(0) : x.toPrecision(4).replace(/\.?0+$/, '');
  }
  function fmtDuration(s) {
    if (s === null || s === undefined) return '';
    if (s < 60) return s + 's';
    if (s < 3600) return Math.floor(s / 60) + 'm' + String(s % 60).padStart(2, '0') + 's';
    return Math.floor(s / 3600) + 'h' + String(Math.floor((s % 3600) / 60)).padStart(2, '0') + 'm';
  }
  function stateSpan(state) { return el('span', { cls: 'state-' + state, text: state }); }
  function firstLine(s) { return (s || '').split('\n').filter(function (l) { return l.trim(); })[0] || ''; }
  function folded(text) {
    if (text === '') return el('div', { cls: 'text muted', text: '(empty)' });
    var box = el('div', { cls: 'text' });
    if (text.length <= FOLD_AT) { box.textContent = text; return box; }
    var shown = el('span', { text: text.slice(0, FOLD_AT) + '…' });
    var btn = el('button', { cls: 'fold', type: 'button', text: ' show all (' + text.length + ' characters)' });
    var open = false;
    btn.addEventListener('click', function () {
      open = !open;
      shown.textContent = open ? text : text.slice(0, FOLD_AT) + '…';
      btn.textContent = open ? ' fold' : ' show all (' + text.length + ' characters)';
    });
    box.appendChild(shown);
    box.appendChild(btn);
    return box;
  }

  var stageById = {};
  D.stages.forEach(function (s) { stageById[s.id] = s; });
  var runById = {};
  D.runs.forEach(function (r) { runById[r.run_id] = r; });

  // ---- overview ----
  function drawSummaryLine() {
    var counts = {};
    D.runs.forEach(function (r) { counts[r.status] = (counts[r.status] || 0) + 1; });
    var parts = Object.keys(counts).sort().map(function (k) { return counts[k] + ' ' + k; });
    var when = new Date(D.generated_at * 1000).toISOString().replace('T', ' ').slice(0, 19) + ' UTC';
    $('#summary-line').textContent = D.runs.length + ' runs (' + parts.join(', ') + '), ' + D.stages.length +
      ' stages; page written ' + when;
  }

  function drawProblems() {
    if (!D.problems.length) return;
    var box = $('#problems');
    box.hidden = false;
    D.problems.forEach(function (p) { box.querySelector('ul').appendChild(el('li', { text: p })); });
  }

  function drawTables() {
    var box = content('tables');
    if (!D.tables.length) { box.appendChild(el('p', { cls: 'muted', text: 'No tables.' })); return; }
    D.tables.forEach(function (t) {
      box.appendChild(el('h3', { text: t.name }));
      var head = el('tr', null, [el('th', { text: t.row_header })].concat(t.columns.map(function (c) {
        return el('th', { cls: 'num', text: c });
      })));
      var body = t.rows.map(function (r) {
        return el('tr', null, [el('th', { text: r.label })].concat(r.cells.map(function (c) {
          var td = el('td', { cls: 'num' }, [c.bold ? el('strong', { text: c.text }) : c.text]);
          if (c.mean !== null) td.setAttribute('data-mean', String(c.mean));
          return td;
        })));
      });
      box.appendChild(el('table', { cls: 'result', 'data-table': t.name }, [
        el('caption', { text: t.caption }), el('thead', null, [head]), el('tbody', null, body)]));
      if (t.failed.length) {
        box.appendChild(el('p', { text: 'Failed runs (shown as —):' }));
        box.appendChild(el('ul', null, t.failed.map(function (f) { return el('li', { text: f }); })));
      }
      t.notes.forEach(function (n) { box.appendChild(el('p', { cls: 'muted', text: n })); });
      if (t.files.length) {
        box.appendChild(el('p', { cls: 'muted' }, ['files: '].concat(t.files.map(function (f) {
          return el('a', { href: f, text: f.split('/').pop() + ' ' });
        }))));
      }
    });
  }

  function drawFigures() {
    var box = content('figures');
    if (!D.figures.length) { box.appendChild(el('p', { cls: 'muted', text: 'No figures.' })); return; }
    D.figures.forEach(function (f) {
      var src = f.svg || f.png;
      var links = [f.svg, f.png].filter(Boolean).map(function (p) { return el('a', { href: p, text: p.split('.').pop() + ' ' }); });
      box.appendChild(el('figure', null, [
        src ? el('img', { src: src, alt: f.name }) : el('p', { cls: 'muted', text: 'not drawn' }),
        el('figcaption', null, [f.name + ' · '].concat(links))]));
    });
  }

  function drawRuns() {
    var keys = D.sweep.map(function (s) { return s.key; });
    var head = el('tr', null, ['run', 'status', 'seed'].concat(keys).concat(['error']).map(function (h) { return el('th', { text: h }); }));
    var rows = D.runs.map(function (r) {
      var err = r.error ? el('details', null, [el('summary', { text: firstLine(r.error) }), el('pre', { text: r.error })]) : '';
      return el('tr', { 'data-run': r.run_id }, [
        el('td', { text: r.run_id }), el('td', null, [stateSpan(r.status)]), el('td', { text: r.seed === null ? '' : String(r.seed) })
      ].concat(keys.map(function (k) { return el('td', { text: k in r.params ? fmtValue(r.params[k]) : '' }); }))
        .concat([el('td', null, [err])]));
    });
    content('runs').appendChild(el('table', { id: 'runs-table' }, [el('thead', null, [head]), el('tbody', null, rows)]));
  }

  function drawStages() {
    var head = el('tr', null, ['stage', 'kind', 'method', 'status', 'attempt', 'duration', 'compute', 'runs', 'records', 'details']
      .map(function (h) { return el('th', { text: h }); }));
    var rows = D.stages.map(function (s) {
      var st = s.status;
      var compute = Object.keys(s.compute).map(function (k) { return k.replace(/^compute_/, '') + ' ' + fmtNum(s.compute[k]); }).join(', ');
      if (s.progress && s.progress.tokens_per_sec) compute += (compute ? ', ' : '') + fmtNum(s.progress.tokens_per_sec) + ' tok/s';
      var details = [];
      var metricKeys = Object.keys(s.metrics);
      if (metricKeys.length) {
        details.push(el('details', null, [el('summary', { text: metricKeys.length + ' metrics' }),
          el('table', null, metricKeys.map(function (k) { return el('tr', null, [el('td', { text: k }), el('td', { cls: 'num', text: fmtNum(s.metrics[k]) })]); }))]));
      }
      if (st.reason) details.push(el('details', { cls: 'reason' }, [el('summary', { text: firstLine(st.reason) }), el('pre', { text: st.reason + (st.log_tail ? '\n\n' + st.log_tail : '') })]));
      if (s.progress && !s.progress.finished && st.state === 'running') {
        details.push(el('div', { text: s.progress.unit + ' ' + s.progress.done + '/' + s.progress.total }));
      }
      var rec = '';
      if (s.records) {
        rec = el('a', { href: '#samples', text: s.records.count + ' records' });
        rec.addEventListener('click', function () { browser.show(s.id); });
      }
      return el('tr', { 'data-stage': s.id }, [
        el('td', { title: s.id, text: s.name + ' · ' + s.id }), el('td', { text: s.kind }), el('td', { text: s.method || '' }),
        el('td', null, [stateSpan(st.state)]), el('td', { text: String(st.attempt) }), el('td', { text: fmtDuration(s.duration_secs) }),
        el('td', { text: compute }), el('td', { title: s.runs.join(' '), text: String(s.runs.length) }), el('td', null, [rec]),
        el('td', null, details)]);
    });
    content('stages').appendChild(el('table', { id: 'stages-table' }, [el('thead', null, [head]), el('tbody', null, rows)]));
  }

  function drawSweep() {
    var box = content('sweep');
    if (!D.sweep.length) { box.appendChild(el('p', { cls: 'muted', text: 'No swept parameters.' })); return; }
    box.appendChild(el('table', null, D.sweep.map(function (s) {
      return el('tr', null, [el('th', { text: s.key }), el('td', { text: s.values.map(fmtValue).join(', ') })]);
    })));
  }

  // ---- records, loaded one stage at a time ----
  var loaded = {};   // stage id -> samples
  var waiting = {};  // stage id -> [resolve, reject] pairs
  window.runnerRecords = function (stageId, samples) {
    samples.forEach(function (s, i) { s.i = i; s.stage = stageId; });
    loaded[stageId] = samples;
    (waiting[stageId] || []).forEach(function (w) { w[0](samples); });
    delete waiting[stageId];
  };
  function loadStage(id) {
    if (loaded[id]) return Promise.resolve(loaded[id]);
    return new Promise(function (resolve, reject) {
      if (waiting[id]) { waiting[id].push([resolve, reject]); return; }
      waiting[id] = [[resolve, reject]];
      var tag = document.createElement('script');
      tag.src = stageById[id].records.file;
      tag.onerror = function () {
        var ws = waiting[id] || [];
        delete waiting[id];
        ws.forEach(function (w) { w[1](new Error('could not load ' + tag.src)); });
      };
      document.head.appendChild(tag);
    });
  }

  // ---- the sample browser ----
  var browser = (function () {
    var f = {
      run: $('#f-run'), stage: $('#f-stage'), metric: $('#f-metric'), verdict: $('#f-verdict'),
      min: $('#f-score-min'), max: $('#f-score-max'), search: $('#f-search'), compare: $('#f-compare'), differ: $('#f-differ')
    };
    var recordStages = D.stages.filter(function (s) { return s.records; });
    var matches = [];   // samples, or [a, b] pairs when comparing
    var shown = 0;
    var generation = 0; // drops results of superseded loads

    function options(select, items, keep) {
      var old = keep ? select.value : '';
      select.textContent = '';
      items.forEach(function (it) { select.appendChild(el('option', { value: it[0], text: it[1] })); });
      if (items.some(function (it) { return it[0] === old; })) select.value = old;
    }
    function stagesOfRun(runId) {
      if (!runId) return recordStages;
      var ids = runById[runId].stages;
      return recordStages.filter(function (s) { return ids.indexOf(s.id) >= 0; });
    }
    function fillStages() {
      var items = stagesOfRun(f.run.value).map(function (s) {
        return [s.id, s.name + ' · ' + s.id + ' (' + s.records.count + ')'];
      });
      if (items.length > 1) items.unshift(['', 'all stages (' + items.length + ')']);
      options(f.stage, items, true);
    }
    function fillFilters(samples) {
      var metrics = {}, verdicts = {};
      samples.forEach(function (s) { if (s.m) metrics[s.m] = 1; if (s.v) verdicts[s.v] = 1; });
      options(f.metric, [['', 'all']].concat(Object.keys(metrics).sort().map(function (m) { return [m, m]; })), true);
      options(f.verdict, [['', 'all']].concat(Object.keys(verdicts).sort().map(function (v) { return [v, v]; })), true);
    }
    function selectedStages() {
      return f.stage.value ? [stageById[f.stage.value]] : stagesOfRun(f.run.value);
    }
    // The counterpart of a stage in another run: the stage of that run with the same name.
    function counterpart(stage, runId) {
      var ids = runById[runId].stages;
      for (var i = 0; i < ids.length; i++) {
        var s = stageById[ids[i]];
        if (s && s.name === stage.name && s.records) return s;
      }
      return null;
    }
    function keyOf(s) { return s.m + '\u0000' + s.d + '\u0000' + s.p; }

    function predicate() {
      var metric = f.metric.value, verdict = f.verdict.value;
      var min = f.min.value === '' ? null : Number(f.min.value), max = f.max.value === '' ? null : Number(f.max.value);
      var q = f.search.value.trim().toLowerCase();
      return function (s) {
        if (metric && s.m !== metric) return false;
        if (verdict && s.v !== verdict) return false;
        if (min !== null && !(typeof s.s === 'number' && s.s >= min)) return false;
        if (max !== null && !(typeof s.s === 'number' && s.s <= max)) return false;
        if (q) {
          if (s.h === undefined) s.h = (s.p + '\n' + s.r + '\n' + (s.raw || '') + '\n' + s.d).toLowerCase();
          if (s.h.indexOf(q) < 0) return false;
        }
        return true;
      };
    }

    function update() {
      var gen = ++generation;
      document.body.setAttribute('data-samples', 'loading');
      var stages = selectedStages();
      var compareRun = f.run.value && f.compare.value && f.compare.value !== f.run.value ? f.compare.value : '';
      var pairs = stages.map(function (s) { return [s, compareRun ? counterpart(s, compareRun) : null]; });
      var ids = [];
      pairs.forEach(function (p) { ids.push(p[0].id); if (p[1]) ids.push(p[1].id); });
      $('#sample-count').textContent = 'loading ' + ids.length + ' stage(s)…';
      Promise.all(ids.map(loadStage)).then(function () {
        if (gen !== generation) return;
        var all = [];
        pairs.forEach(function (p) { all = all.concat(loaded[p[0].id]); if (p[1]) all = all.concat(loaded[p[1].id]); });
        fillFilters(all);
        var keep = predicate();
        matches = [];
        var total = 0;
        pairs.forEach(function (p) {
          var left = loaded[p[0].id];
          if (!compareRun) {
            total += left.length;
            left.forEach(function (s) { if (keep(s)) matches.push(s); });
            return;
          }
          var right = {};
          if (p[1]) loaded[p[1].id].forEach(function (s) { right[keyOf(s)] = s; });
          left.forEach(function (a) {
            var b = right[keyOf(a)] || null;
            total += 1;
            if (f.differ.checked && (!b || a.v === b.v)) return;
            if (keep(a) || (b && keep(b))) matches.push([a, b]);
          });
        });
        $('#sample-count').textContent = matches.length + ' of ' + total + (compareRun ? ' prompts' : ' records') +
          (compareRun ? ' (' + f.run.value + ' left, ' + compareRun + ' right)' : '');
        $('#sample-list').textContent = '';
        shown = 0;
        more();
        if (window.runnerPage && window.runnerPage.firstReadyMs === undefined) window.runnerPage.firstReadyMs = performance.now();
        document.body.setAttribute('data-samples', 'ready');
        writeHash();
      }, function (err) {
        if (gen !== generation) return;
        $('#sample-count').textContent = String(err.message || err);
        document.body.setAttribute('data-samples', 'error');
      });
    }

    function more() {
      var list = $('#sample-list');
      var end = Math.min(matches.length, shown + PAGE_SIZE);
      for (; shown < end; shown++) {
        var m = matches[shown];
        list.appendChild(Array.isArray(m) ? drawPair(m[0], m[1]) : drawSample(m, true));
      }
      $('#sample-more').hidden = shown >= matches.length;
      $('#sample-more').textContent = 'show more (' + (matches.length - shown) + ' left)';
    }

    function drawSample(s, withPrompt) {
      var st = stageById[s.stage];
      var meta = [st.name + ' · ' + s.stage + ' #' + s.i];
      if (s.m) meta.push(s.m);
      if (s.d) meta.push(s.d);
      var head = el('div', { cls: 'meta' }, [meta.join(' · ') + ' ',
        s.v ? el('span', { cls: 'badge v-' + s.v, text: s.v }) : null,
        typeof s.s === 'number' ? el('span', { cls: 'badge', text: 'score ' + fmtNum(s.s) }) : null]);
      var box = el('div', { cls: 'sample', 'data-verdict': s.v || '' }, [head]);
      if (withPrompt && s.p) { box.appendChild(el('div', { cls: 'label', text: 'prompt' })); box.appendChild(folded(s.p)); }
      var turns = Array.isArray(s.x.turns) ? s.x.turns : [];
      turns.forEach(function (t, k) {
        box.appendChild(el('div', { cls: 'label', text: 'turn ' + (k + 1) }));
        box.appendChild(folded(String(t.response || '')));
      });
      var judged = s.raw !== undefined && s.raw !== s.r;
      box.appendChild(el('div', { cls: 'label', text: judged ? 'response as the judge saw it (stripped)' : (turns.length ? 'final response' : 'response') }));
      box.appendChild(folded(s.r));
      if (judged) { box.appendChild(el('div', { cls: 'label', text: 'raw response' })); box.appendChild(folded(s.raw)); }
      var rest = Object.keys(s.x).filter(function (k) { return k !== 'turns'; });
      if (rest.length) {
        var shownFields = {};
        rest.forEach(function (k) { shownFields[k] = s.x[k]; });
        box.appendChild(el('details', null, [el('summary', { text: 'fields: ' + rest.join(', ') }), el('pre', { text: JSON.stringify(shownFields, null, 1) })]));
      }
      return box;
    }

    function drawPair(a, b) {
      var box = el('div', { cls: 'sample' });
      if (a.p) { box.appendChild(el('div', { cls: 'label', text: 'prompt' })); box.appendChild(folded(a.p)); }
      box.appendChild(el('div', { cls: 'pair' }, [drawSample(a, false),
        b ? drawSample(b, false) : el('div', { cls: 'sample muted', text: 'no record for this prompt in the other run' })]));
      return box;
    }

    // Filters in the URL hash (#samples?stage=ID&q=text&...), so a link or a screenshot can open a view.
    var hashKeys = { run: 'run', stage: 'stage', metric: 'metric', verdict: 'verdict', min: 'min', max: 'max', q: 'search', compare: 'compare' };
    function readHash() {
      var h = location.hash, at = h.indexOf('?');
      var out = {};
      if (at < 0) return out;
      h.slice(at + 1).split('&').forEach(function (kv) {
        var i = kv.indexOf('=');
        if (i > 0) out[decodeURIComponent(kv.slice(0, i))] = decodeURIComponent(kv.slice(i + 1).replace(/\+/g, ' '));
      });
      return out;
    }
    function writeHash() {
      var parts = [];
      Object.keys(hashKeys).forEach(function (k) {
        var v = f[hashKeys[k]].value;
        if (v) parts.push(k + '=' + encodeURIComponent(v));
      });
      if (f.differ.checked) parts.push('differ=1');
      var h = parts.length ? '#samples?' + parts.join('&') : '';
      if (location.hash.indexOf('#samples?') !== 0 && !parts.length) return;
      try {
        history.replaceState(null, '', h || location.href.split('#')[0]);
      } catch (e) {
        // Some browsers refuse history changes on file:// pages; the filters work without it.
      }
    }

    function init() {
      if (!recordStages.length) {
        $('#sample-controls').hidden = true;
        $('#sample-count').textContent = 'No eval or generate stage has written records yet.';
        document.body.setAttribute('data-samples', 'ready');
        return;
      }
      var runs = [['', 'all runs']].concat(D.runs.map(function (r) { return [r.run_id, r.run_id]; }));
      options(f.run, runs);
      options(f.compare, [['', '—']].concat(D.runs.map(function (r) { return [r.run_id, r.run_id]; })));
      applyHash();
      f.run.addEventListener('change', function () { fillStages(); update(); });
      [f.stage, f.metric, f.verdict, f.compare, f.differ].forEach(function (x) { x.addEventListener('change', update); });
      var timer = null;
      [f.search, f.min, f.max].forEach(function (x) {
        x.addEventListener('input', function () { clearTimeout(timer); timer = setTimeout(update, 200); });
      });
      $('#sample-controls').addEventListener('submit', function (e) { e.preventDefault(); update(); });
      $('#sample-more').addEventListener('click', more);
      // A link to another view of the samples on this page (a changed hash) applies its filters.
      window.addEventListener('hashchange', function () {
        if (location.hash.indexOf('#samples?') === 0) { applyHash(); update(); }
      });
      update();
      if (location.hash.indexOf('#samples') === 0) document.getElementById('samples').scrollIntoView();
    }

    function applyHash() {
      var h = readHash();
      f.run.value = h.run && runById[h.run] ? h.run : '';
      fillStages();
      // One stage at first (the first that has records), unless the link asks for more.
      var first = stagesOfRun(f.run.value)[0];
      f.stage.value = h.stage !== undefined && (h.stage === '' || stageById[h.stage]) ? h.stage : (first ? first.id : '');
      options(f.metric, h.metric ? [[h.metric, h.metric]] : [['', 'all']]);
      options(f.verdict, h.verdict ? [[h.verdict, h.verdict]] : [['', 'all']]);
      f.min.value = h.min || ''; f.max.value = h.max || ''; f.search.value = h.q || '';
      f.compare.value = h.compare && runById[h.compare] ? h.compare : '';
      f.differ.checked = h.differ === '1';
    }

    return {
      init: init,
      update: update,
      show: function (stageId) {
        f.run.value = '';
        fillStages();
        f.stage.value = stageId;
        update();
      }
    };
  })();

  drawSummaryLine();
  drawProblems();
  drawTables();
  drawFigures();
  drawRuns();
  drawStages();
  drawSweep();
  $('#spec-text').textContent = D.spec_toml;
  browser.init();
  // For tests and scripts: filters can be set and re-applied through this; drawnMs is when the
  // overview was drawn (milliseconds after navigation), firstReadyMs when the first samples were.
  window.runnerPage = { update: browser.update, show: browser.show, loaded: loaded, drawnMs: performance.now() };
})();
