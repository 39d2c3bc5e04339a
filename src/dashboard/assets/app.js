// The Cohort dashboard: plain JavaScript over the JSON API (/api/...),
// no framework, no CDN. Pages: #/ (jobs), #/jobs/ID (one job, live while
// it runs), #/ledger (entries, and inclusion proofs checked here, in the
// browser, with WebCrypto SHA-256 and RFC 9162 hashing).
'use strict';

const app = document.getElementById('app');
let timer = null;

// --- small DOM helpers: text always goes in as text, never as HTML -------
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    // CSSOM, not a style attribute: the page's CSP allows no inline styles.
    else if (k === 'style') node.style.cssText = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}
const SVG = 'http://www.w3.org/2000/svg';
function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  for (const c of children.flat()) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}
const fmt = (x, digits = 4) => (x === null || x === undefined || Number.isNaN(x)) ? '–' : Number(x).toFixed(digits);
const bytes = (n) => {
  if (n === null || n === undefined) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
};
const when = (t) => t ? t.replace('T', ' ').replace(/\.\d+/, '').replace('Z', ' UTC') : '–';
const short = (h) => h ? h.slice(0, 16) + '…' : '–';
function badge(state) { return el('span', { class: 'badge ' + state }, state); }
function card(title, ...body) { return el('section', { class: 'card' }, title ? el('h2', {}, title) : null, ...body); }
function table(head, rows, attrs) {
  return el('div', { class: 'scroll' }, el('table', attrs || {},
    el('thead', {}, el('tr', {}, head.map(h => typeof h === 'string' ? el('th', {}, h) : h))),
    el('tbody', {}, rows)));
}

async function api(path) {
  const response = await fetch(path, { credentials: 'same-origin', headers: { Accept: 'application/json' } });
  if (response.status === 401) throw new Error('Not signed in: open the link with ?token=… that `cohort dashboard token` or `cohort demo --dashboard` printed.');
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || ('HTTP ' + response.status));
  return body;
}

function show(...nodes) { app.replaceChildren(...nodes.flat().filter(n => n !== null && n !== undefined && n !== false)); }
function fail(e) { show(el('p', { class: 'error', id: 'error' }, e.message)); }

// --- router --------------------------------------------------------------
function route() {
  clearTimeout(timer);
  const hash = location.hash || '#/';
  document.getElementById('nav-jobs').classList.toggle('active', !hash.startsWith('#/ledger'));
  document.getElementById('nav-ledger').classList.toggle('active', hash.startsWith('#/ledger'));
  let m;
  if ((m = hash.match(/^#\/jobs\/([^/]+)$/))) return jobPage(decodeURIComponent(m[1]));
  if ((m = hash.match(/^#\/ledger(?:\/(\d+))?$/))) return ledgerPage(m[1] === undefined ? null : Number(m[1]));
  return jobsPage();
}
window.addEventListener('hashchange', route);
window.addEventListener('DOMContentLoaded', async () => {
  try {
    const me = await api('/api/me');
    document.getElementById('whoami').textContent = `${me.role} · ${me.name}`;
  } catch (e) { /* the page itself reports it */ }
  route();
});

// --- jobs list -----------------------------------------------------------
async function jobsPage() {
  let jobs;
  try { jobs = await api('/api/jobs'); } catch (e) { return fail(e); }
  const rows = jobs.map(j => el('tr', { 'data-job-id': j.job_id },
    el('td', {}, el('a', { href: '#/jobs/' + encodeURIComponent(j.job_id) }, j.name), el('div', { class: 'muted mono' }, j.job_id)),
    el('td', {}, badge(j.state)),
    el('td', { class: 'num' }, `${j.rounds_completed}/${j.rounds_total}`),
    el('td', {}, j.mode),
    el('td', {}, j.aggregation + (j.dp_level ? ` + DP (${j.dp_level})` : '') + (j.valuation ? ' · valued' : '')),
    el('td', { class: 'hide-narrow' }, j.developer || '–'),
    el('td', { class: 'hide-narrow' }, when(j.created_at)),
    el('td', { class: 'hide-narrow' }, when(j.finished_at))));
  show(el('h1', {}, 'Jobs'),
    card(null, jobs.length === 0 ? el('p', { class: 'muted', id: 'no-jobs' }, 'No jobs you may see yet.')
      : table(['job', 'state', el('th', { class: 'num' }, 'rounds'), 'mode', 'protection',
        el('th', { class: 'hide-narrow' }, 'developer'), el('th', { class: 'hide-narrow' }, 'started'),
        el('th', { class: 'hide-narrow' }, 'finished')], rows, { id: 'jobs' })));
  if (jobs.some(j => j.state !== 'completed' && j.state !== 'failed')) timer = setTimeout(route, 3000);
}

// --- charts: one SVG, one circle per round per series ----------------------
// Each circle carries data-series, data-round and data-value (the JSON
// API's number), which the browser tests compare with the API.
function lineChart(id, series, opts = {}) {
  const W = 640, H = 240, L = 46, R = 12, T = 12, B = 30;
  const points = series.flatMap(s => s.points);
  const rounds = points.map(p => p[0]);
  const values = points.map(p => p[1]);
  const root = svg('svg', { class: 'chart', id, viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': opts.label || id });
  if (points.length === 0) {
    root.append(svg('text', { x: L, y: H / 2 }, 'no completed round yet'));
    return el('div', {}, root);
  }
  const x0 = Math.min(...rounds), x1 = Math.max(...rounds);
  let y0 = opts.min ?? Math.min(...values), y1 = opts.max ?? Math.max(...values);
  if (y1 - y0 < 1e-9) { y0 -= 0.5; y1 += 0.5; }
  const sx = r => L + (x1 === x0 ? (W - L - R) / 2 : (r - x0) / (x1 - x0) * (W - L - R));
  const sy = v => T + (1 - (v - y0) / (y1 - y0)) * (H - T - B);
  root.append(svg('line', { class: 'axis', x1: L, y1: H - B, x2: W - R, y2: H - B }));
  root.append(svg('line', { class: 'axis', x1: L, y1: T, x2: L, y2: H - B }));
  for (const v of [y0, (y0 + y1) / 2, y1]) {
    root.append(svg('text', { x: L - 4, y: sy(v) + 4, 'text-anchor': 'end' }, fmt(v, 3)));
  }
  const step = Math.max(1, Math.ceil((x1 - x0 + 1) / 10));
  for (let r = x0; r <= x1; r += step) {
    root.append(svg('text', { x: sx(r), y: H - B + 16, 'text-anchor': 'middle' }, r));
  }
  root.append(svg('text', { x: W - R, y: H - 4, 'text-anchor': 'end' }, 'round'));
  series.forEach((s, i) => {
    const colour = `var(--s${i + 1})`;
    if (s.points.length > 1) {
      root.append(svg('polyline', {
        fill: 'none', stroke: colour, 'stroke-width': 2,
        points: s.points.map(([r, v]) => `${sx(r)},${sy(v)}`).join(' '),
      }));
    }
    for (const [r, v] of s.points) {
      root.append(svg('circle', { cx: sx(r), cy: sy(v), r: 3.5, fill: colour, 'data-series': s.key, 'data-round': r, 'data-value': v },
        svg('title', {}, `${s.name}, round ${r}: ${fmt(v)}`)));
    }
  });
  const legend = el('div', { class: 'legend' }, series.map((s, i) =>
    el('span', {}, el('i', { style: `background: var(--s${i + 1})` }), s.name)));
  return el('div', {}, root, legend);
}

// --- one job ----------------------------------------------------------------
async function jobPage(id) {
  let d;
  try { d = await api('/api/jobs/' + encodeURIComponent(id)); } catch (e) { return fail(e); }
  if (location.hash !== '#/jobs/' + encodeURIComponent(id)) return; // navigated away meanwhile
  const s = d.status, sum = d.summary;
  const rounds = s.rounds.filter(r => r.round > 0);
  const withMetrics = rounds.filter(r => r.metrics);
  const running = !(s.state === 'completed' || s.state === 'failed');

  const loss = lineChart('chart-loss', [
    { key: 'validation_loss', name: 'validation loss', points: withMetrics.map(r => [r.round, r.metrics.loss]) },
    { key: 'train_loss', name: 'training loss', points: rounds.filter(r => r.train_loss !== null).map(r => [r.round, r.train_loss]) },
  ], { label: 'loss per round' });
  const quality = lineChart('chart-quality', [
    { key: 'validation_auc', name: 'validation ROC AUC', points: withMetrics.map(r => [r.round, r.metrics.auc]) },
    { key: 'validation_accuracy', name: 'validation accuracy', points: withMetrics.map(r => [r.round, r.metrics.accuracy]) },
    // Reported only in plain aggregation without DP (docs/DASHBOARD.md).
    { key: 'train_auc', name: 'training ROC AUC', points: rounds.filter(r => r.train_auc != null).map(r => [r.round, r.train_auc]) },
    { key: 'train_accuracy', name: 'training accuracy', points: rounds.filter(r => r.train_accuracy != null).map(r => [r.round, r.train_accuracy]) },
  ], { label: 'AUC and accuracy per round', min: 0, max: 1 });

  const hospitals = s.participants.length ? s.participants : [...new Set(rounds.flatMap(r => r.participants))];
  const participation = table(
    [el('th', { class: 'num' }, 'round'), ...hospitals, el('th', { class: 'num' }, 'duration s'),
      el('th', { class: 'num' }, 'slowest fit s'), el('th', { class: 'num' }, 'attempts'),
      el('th', { class: 'num' }, 'parameters received'),
      el('th', { class: 'num', title: 'encoded task frames the coordinator sent' }, 'tasks sent'),
      el('th', { class: 'num', title: 'encoded answer frames the coordinator received' }, 'answers received'), 'left out'],
    rounds.map(r => el('tr', { 'data-round': r.round },
      el('td', { class: 'num' }, r.round),
      hospitals.map(h => el('td', { title: h }, r.participants.includes(h) ? '✓' : '–')),
      el('td', { class: 'num' }, fmt(r.duration_secs, 2)),
      el('td', { class: 'num' }, fmt(r.slowest_fit_secs, 2)),
      el('td', { class: 'num' }, r.attempts),
      el('td', { class: 'num' }, r.updates.reduce((n, u) => n + u.parameter_count, 0).toLocaleString()),
      el('td', { class: 'num', 'data-bytes': r.task_bytes_sent ?? '' }, bytes(r.task_bytes_sent)),
      el('td', { class: 'num', 'data-bytes': r.answer_bytes_received ?? '' }, bytes(r.answer_bytes_received)),
      el('td', {}, (r.excluded || []).map(x => `${x.client}: ${x.reason}`).join('; ') || '–'))),
    { id: 'rounds' });

  const p = d.privacy;
  const budgetRows = p.hospitals.map(h => {
    const spent = h.epsilon_spent, target = p.target_epsilon;
    const frac = (spent !== null && target) ? Math.min(1, spent / target) : 0;
    return el('tr', { 'data-hospital': h.name },
      el('td', {}, h.name),
      el('td', { class: 'num' }, spent === null ? '–' : fmt(spent, 3)),
      el('td', { class: 'num' }, target ? fmt(target, 3) : '–'),
      el('td', {}, el('div', { class: 'bar' + (spent > target ? ' over' : '') }, el('span', { style: `width: ${(frac * 100).toFixed(1)}%` }))));
  });
  const privacy = card('Privacy',
    el('dl', { class: 'kv' },
      el('dt', {}, 'aggregation'), el('dd', {}, p.aggregation),
      el('dt', {}, 'differential privacy'), el('dd', {}, p.dp_level ? `${p.dp_level} level, ε ≤ ${fmt(p.target_epsilon, 3)} at δ ${p.delta}` : 'none')),
    p.dp_level ? table(['hospital', el('th', { class: 'num' }, 'ε spent'), el('th', { class: 'num' }, 'ε budget (job)'), ''], budgetRows, { id: 'budgets' }) : null);

  let rewards = null;
  if (d.rewards) {
    const r = d.rewards;
    rewards = card('Contributions and rewards',
      el('p', { class: 'muted' }, `${r.emitted} base units emitted to this job's rounds.`),
      table(['hospital', el('th', { class: 'num' }, 'value (sum)'), el('th', { class: 'num' }, 'reward')],
        r.hospitals.map(h => el('tr', {}, el('td', {}, h.name), el('td', { class: 'num' }, fmt(h.value)), el('td', { class: 'num' }, h.reward))),
        { id: 'reward-totals' }),
      el('h2', { style: 'margin-top: .8rem' }, 'Per round'),
      table([el('th', { class: 'num' }, 'round'), 'method', el('th', { class: 'num' }, 'emission'), 'hospital', el('th', { class: 'num' }, 'value'), el('th', { class: 'num' }, 'reward')],
        r.rounds.flatMap(round => round.hospitals.map((h, i) => el('tr', {},
          el('td', { class: 'num' }, i === 0 ? round.round : ''), el('td', {}, i === 0 ? round.method : ''),
          el('td', { class: 'num' }, i === 0 ? round.emission : ''), el('td', {}, h.name),
          el('td', { class: 'num' }, fmt(h.value)), el('td', { class: 'num' }, h.reward ?? '–')))),
        { id: 'rewards' }));
  } else if (sum.valuation) {
    rewards = card('Contributions and rewards', el('p', { class: 'muted' }, 'No round paid yet.'));
  }

  let model = card('Model', el('p', { class: 'muted' }, 'No model yet.'));
  if (d.model) {
    const sig = d.model.signature;
    const sigText = sig.status === 'verified'
      ? `signed by the coordinator's key, ${sig.files} files verified` + (sig.ledger_entry !== null ? `; recorded in ledger entry ${sig.ledger_entry}` : '')
      : sig.status === 'unsigned' ? 'no signature stored' : `signature INVALID: ${sig.reason}`;
    model = card('Model',
      el('dl', { class: 'kv' },
        el('dt', {}, 'round'), el('dd', {}, d.model.round),
        el('dt', {}, 'parameters SHA-256'), el('dd', { class: 'mono', id: 'model-digest' }, d.model.model_sha256),
        el('dt', {}, 'signature'), el('dd', {}, el('span', { class: 'badge ' + (sig.status === 'verified' ? 'ok' : 'bad'), id: 'model-signature' }, sig.status), ' ', sigText),
        sig.ledger_entry !== null && sig.ledger_entry !== undefined
          ? [el('dt', {}, 'ledger'), el('dd', {}, el('a', { href: '#/ledger/' + sig.ledger_entry }, `prove entry ${sig.ledger_entry}`))] : null));
  }

  const last = withMetrics[withMetrics.length - 1];
  show(
    el('h1', {}, s.name, ' ', badge(s.state), running ? el('span', { class: 'live', id: 'live' }, ' ● live') : null),
    card(null, el('dl', { class: 'kv', id: 'job-summary', 'data-rounds-completed': s.rounds_completed },
      el('dt', {}, 'job'), el('dd', { class: 'mono' }, s.job_id),
      el('dt', {}, 'rounds'), el('dd', {}, `${s.rounds_completed} of ${s.rounds_total}`),
      el('dt', {}, 'mode'), el('dd', {}, sum.mode),
      el('dt', {}, 'developer'), el('dd', {}, sum.developer || '–'),
      el('dt', {}, 'started'), el('dd', {}, when(sum.created_at)),
      el('dt', {}, 'finished'), el('dd', {}, when(sum.finished_at)),
      last ? [el('dt', {}, 'latest validation'), el('dd', {}, `loss ${fmt(last.metrics.loss)} · accuracy ${fmt(last.metrics.accuracy)} · AUC ${fmt(last.metrics.auc)}`)] : null,
      s.error ? [el('dt', {}, 'error'), el('dd', { class: 'error' }, s.error)] : null)),
    el('div', { class: 'grid' }, card('Loss', loss), card('Validation AUC and accuracy', quality)),
    card('Rounds: participation, durations, update sizes', participation),
    el('div', { class: 'grid' }, privacy, model),
    rewards,
    s.events.length ? card('Events', el('ul', {}, s.events.map(e => el('li', {}, el('span', { class: 'muted' }, when(e.at) + ' '), e.message)))) : null);
  if (running) timer = setTimeout(route, 2000);
}

// --- ledger explorer -----------------------------------------------------------
const enc = new TextEncoder();
function hexToBytes(hex) {
  if (!/^([0-9a-f]{2})*$/i.test(hex)) throw new Error('not hex: ' + hex.slice(0, 20));
  return Uint8Array.from(hex.match(/../g) || [], b => parseInt(b, 16));
}
const toHex = (bytes) => Array.from(bytes, b => b.toString(16).padStart(2, '0')).join('');
function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}
async function sha256(bytes) { return new Uint8Array(await crypto.subtle.digest('SHA-256', bytes)); }
// RFC 9162 section 2.1.1: leaf = SHA-256(0x00 || data), node = SHA-256(0x01 || left || right).
const leafHash = (data) => sha256(concat(Uint8Array.of(0), data));
const nodeHash = (l, r) => sha256(concat(Uint8Array.of(1), l, r));

// RFC 9162 section 2.1.3.2: the root an inclusion proof leads to.
async function rootFromInclusionProof(index, size, leaf, proof) {
  if (index >= size) throw new Error('index beyond the tree');
  let fn = BigInt(index), sn = BigInt(size) - 1n, r = leaf;
  for (const p of proof) {
    if (sn === 0n) throw new Error('proof longer than the tree is deep');
    if ((fn & 1n) === 1n || fn === sn) {
      r = await nodeHash(p, r);
      if ((fn & 1n) === 0n) { while ((fn & 1n) === 0n && fn !== 0n) { fn >>= 1n; sn >>= 1n; } }
    } else {
      r = await nodeHash(r, p);
    }
    fn >>= 1n; sn >>= 1n;
  }
  if (sn !== 0n) throw new Error('proof shorter than the tree is deep');
  return r;
}

// The signed checkpoint (C2SP note): origin, size, base64 root, then signatures.
function parseCheckpoint(note) {
  const [origin, size, root] = note.split('\n');
  const raw = atob(root);
  return { origin, size: Number(size), root: Uint8Array.from(raw, c => c.charCodeAt(0)) };
}

async function checkProof(data) {
  const result = document.getElementById('proof-result');
  result.className = ''; result.textContent = 'checking…';
  try {
    if (!window.crypto || !crypto.subtle) throw new Error('WebCrypto is unavailable: open the dashboard over HTTPS or on localhost');
    const leafText = document.getElementById('proof-leaf').value;
    const cp = parseCheckpoint(data.checkpoint.note);
    if (cp.size !== data.proof.tree_size) throw new Error(`proof is for a tree of ${data.proof.tree_size} entries, the checkpoint signs ${cp.size}`);
    const leaf = await leafHash(enc.encode(leafText));
    const root = await rootFromInclusionProof(data.proof.index, data.proof.tree_size, leaf, data.proof.proof.map(hexToBytes));
    const ok = toHex(root) === toHex(cp.root);
    result.className = ok ? 'ok' : 'bad';
    result.dataset.verdict = ok ? 'included' : 'not-included';
    result.textContent = ok
      ? `✓ Entry ${data.proof.index} is in the log: its leaf hash and ${data.proof.proof.length} sibling hashes lead to the signed checkpoint's root ${toHex(cp.root).slice(0, 16)}… (computed here with WebCrypto SHA-256).`
      : `✗ Not included: the proof leads to ${toHex(root).slice(0, 16)}…, the signed checkpoint's root is ${toHex(cp.root).slice(0, 16)}….`;
  } catch (e) {
    result.className = 'bad'; result.dataset.verdict = 'error';
    result.textContent = '✗ ' + e.message;
  }
}

function describe(record) {
  const parts = [];
  if (record.job_id) parts.push(record.job_id);
  if (record.round !== undefined) parts.push('round ' + record.round);
  if (record.name && record.type !== 'job_created') parts.push(record.name);
  if (record.type === 'job_created') parts.push(`“${record.name}”`);
  return parts.join(' · ');
}

async function ledgerPage(selected) {
  let ledger;
  try { ledger = await api('/api/ledger'); } catch (e) { return fail(e); }
  const cp = parseCheckpoint(ledger.checkpoint.note);
  const v = ledger.verified;
  const rows = ledger.entries.map(({ index, entry }) => el('tr', { 'data-index': index },
    el('td', { class: 'num' }, index),
    el('td', { class: 'hide-narrow' }, when(entry.at)),
    el('td', {}, entry.record.type),
    el('td', {}, describe(entry.record)),
    el('td', {}, el('a', { href: '#/ledger/' + index, class: 'prove' }, 'prove'))));
  const proofCard = el('section', { class: 'card', id: 'proof' });
  show(el('h1', {}, 'Ledger'),
    card('Signed checkpoint', el('dl', { class: 'kv' },
      el('dt', {}, 'log'), el('dd', {}, cp.origin),
      el('dt', {}, 'entries'), el('dd', {}, cp.size),
      el('dt', {}, 'root'), el('dd', { class: 'mono' }, toHex(cp.root)),
      el('dt', {}, 'signed by'), el('dd', {}, ledger.checkpoint.key_name),
      el('dt', {}, 'coordinator check'), el('dd', {}, v
        ? el('span', { class: 'badge ok', id: 'ledger-verified' }, 'signatures and root verify')
        : el('span', { class: 'badge bad', id: 'ledger-verified' }, ledger.verification_error)))),
    proofCard,
    card('Entries', table([el('th', { class: 'num' }, '#'), el('th', { class: 'hide-narrow' }, 'at'), 'record', 'about', ''], rows, { id: 'entries' })));
  if (selected === null) {
    proofCard.append(el('h2', {}, 'Inclusion proof'), el('p', { class: 'muted' }, 'Pick an entry below (“prove”) to check, in this browser, that it is in the signed log.'));
    return;
  }
  let data;
  try { data = await api(`/api/ledger/${selected}/proof`); } catch (e) { proofCard.append(el('p', { class: 'error' }, e.message)); return; }
  const leafBox = el('textarea', { id: 'proof-leaf', spellcheck: 'false' });
  leafBox.value = data.proof.leaf;
  proofCard.append(
    el('h2', {}, `Inclusion proof of entry ${data.proof.index} in ${data.proof.tree_size}`),
    el('p', { class: 'muted' }, 'The entry exactly as the log stores it (edit it to see a tampered entry fail):'),
    leafBox,
    el('p', { class: 'muted' }, `Sibling hashes, leaf side first (${data.proof.proof.length}):`),
    el('ol', { class: 'mono', id: 'proof-hashes' }, data.proof.proof.map(h => el('li', {}, h))),
    el('button', { id: 'proof-verify', onclick: () => checkProof(data) }, 'Verify in this browser'),
    el('div', { id: 'proof-result' }));
  proofCard.scrollIntoView({ block: 'start' });
  checkProof(data);
}
