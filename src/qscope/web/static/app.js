// qscope front end: hash routes (#/page/args?state), vanilla DOM, no build step. Every page is a
// function that fills #view; what a page was asked is kept in the URL so a result can be linked.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];
let INFO = null;
const DENSE = 0.1;  // features firing on more than 10% of tokens are "dense" (sink / register features); a language feature may fire on a few %

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) node.append(c instanceof Node ? c : String(c));
  return node;
}
const svgEl = (tag, attrs = {}, text) => {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  Object.entries(attrs).forEach(([k, v]) => node.setAttribute(k, v));
  if (text !== undefined) node.textContent = text;
  return node;
};

function status(msg) { const s = $("#status"); s.textContent = msg || ""; s.style.display = msg ? "block" : "none"; }
const setTitle = t => { document.title = t ? `${t} · qscope` : "qscope"; };

// Requests of the page on show: leaving it (another route, or another site) aborts them, so the
// server stops work nobody will see (a generation gives the model back at its next token).
const PENDING = new Set();
function pageSignal() { const ctrl = new AbortController(); PENDING.add(ctrl); return ctrl; }
function abortPending() { PENDING.forEach(c => c.abort()); PENDING.clear(); }
window.addEventListener("pagehide", abortPending);
const aborted = err => err && err.name === "AbortError";

// Server answers in people's words; the few the server cannot word are worded here.
function humanError(res, data) {
  if (data && data.detail) return typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
  if (res.status === 404) return "not found";
  if (res.status >= 500) return `the server failed (${res.status}); its console says why`;
  return `request refused (${res.status} ${res.statusText})`;
}
const OFFLINE = "cannot reach the qscope server: is `qscope serve` still running?";

async function api(path, body) {
  const ctrl = pageSignal();
  const opts = { signal: ctrl.signal, ...(body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) }) };
  status("working…");
  try {
    let res;
    try { res = await fetch(path, opts); } catch (err) { throw aborted(err) ? err : new Error(OFFLINE); }
    const data = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error(humanError(res, data));
    return data;
  } finally { status(""); PENDING.delete(ctrl); }
}

// A form whose submit button is disabled while its request runs (extra clicks send nothing).
function form(attrs, run, ...children) {
  const node = h("form", { ...attrs, onsubmit: async e => {
    e.preventDefault();
    const buttons = $$("button:not([type=button])", node);
    if (buttons.some(b => b.disabled)) return;
    buttons.forEach(b => { b.disabled = true; });
    try { await run(e); } finally { buttons.forEach(b => { b.disabled = false; }); }
  } }, ...children);
  return node;
}

// ---------------------------------------------------------------- URL state
function currentRoute() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = raw.split("?");
  const [name, ...args] = (path || "features").split("/");
  return { name, args: args.map(decodeURIComponent), query: new URLSearchParams(query) };
}
// Write a page's inputs into the URL without re-rendering it (so the address can be shared).
function setQuery(params) {
  const { name, args } = currentRoute();
  const q = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== "" && v !== null && v !== undefined && v !== false));
  const hash = `#/${[name, ...args.map(encodeURIComponent)].join("/")}${q.toString() ? "?" + q : ""}`;
  if (hash !== location.hash) history.replaceState(null, "", hash);
}

// ---------------------------------------------------------------- small views
const fmt = (x, d = 2) => (typeof x === "number" ? x.toFixed(d) : x ?? "");
const pct = d => (d === null || d === undefined ? "" : d === 0 ? "0%" : `${(100 * d) >= 1 ? (100 * d).toFixed(1) : (100 * d).toPrecision(2)}%`);
const layerSelect = (id, value, layers = INFO.layers) => h("select", { id, "aria-label": "layer" }, layers.map(l => h("option", { value: l.layer, selected: String(l.layer) === String(value) ? "" : null }, `layer ${l.layer}`)));
const featLink = (layer, f) => h("a", { class: "feat", href: `#/feature/${layer}/${f}` }, `#${f}`);
const showError = (box, err) => { if (!aborted(err)) box.replaceChildren(h("p", { class: "error", role: "alert" }, err.message || String(err))); };
const tokText = t => t.replace(/\r?\n/g, "↵").replace(/\t/g, "⇥");
const storeLayers = () => INFO.layers.filter(l => l.store);

function labelView(r) {
  if (!r || !r.label) return h("span", { class: "label muted" }, "");
  return h("span", { class: "label" }, r.label, " ", h("span", { class: `src ${r.label_source === "auto" ? "auto" : ""}`, title: r.label_source === "auto" ? "automatic label: from the tokens it fires on and promotes" : `explanation by ${r.label_source}` }, r.label_source === "auto" ? "auto" : r.label_source));
}

// Density as a small bar on a log scale (0.0001% .. 100%) plus the percentage.
function densityView(d) {
  if (d === null || d === undefined) return "";
  const w = d > 0 ? Math.max(2, Math.min(100, (100 * (Math.log10(d) + 6)) / 6)) : 0;
  return h("span", { class: `density ${d > DENSE ? "dense" : ""}`, title: `fires on ${pct(d)} of tokens` },
    h("span", { class: "dbar" }, h("span", { style: `width:${w}%` })), pct(d));
}

function featureTable(layer, rows, cols = [], onhover = null) {
  const hasDensity = rows.some(r => r.density !== undefined && r.density !== null);
  return h("div", { class: "scroll" }, h("table", { class: "features" },
    h("tr", {}, h("th", {}, "feature"), h("th", {}, "label"), hasDensity ? h("th", {}, "density") : null, cols.map(c => h("th", {}, c[0]))),
    rows.map(r => h("tr", { onmouseenter: onhover ? () => onhover(r.feature) : null, onfocusin: onhover ? () => onhover(r.feature) : null },
      h("td", {}, featLink(layer, r.feature)), h("td", { class: "label-cell" }, labelView(r)),
      hasDensity ? h("td", {}, densityView(r.density)) : null, cols.map(c => h("td", {}, fmt(r[c[1]], 3)))))));
}

// A token coloured by activation relative to `max`; reachable by keyboard when it does something.
function tokenSpan(tok, act, max, extra = {}) {
  const a = max > 0 ? Math.max(0, Math.min(1, act / max)) : 0;
  const { class: cls = "", ...rest } = extra;
  return h("span", { class: `tok ${cls} ${/\n/.test(tok) ? "nl" : ""}`, style: a > 0 ? `background: rgba(234, 88, 12, ${0.08 + 0.82 * a})` : null,
    title: `${JSON.stringify(tok)}  ${fmt(act, 3)}`, ...rest }, tokText(tok));
}
function clickable(span) {
  span.setAttribute("tabindex", "0"); span.setAttribute("role", "button");
  span.addEventListener("keydown", e => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); span.click(); } });
  return span;
}

// A context centred on its strongest token; "more" shows it whole, "inspect" opens it in the inspector.
function contextLine(ex, max, layer, feature) {
  const f = ex.focus;
  const spans = (from, to) => ex.tokens.slice(from, to).map((t, i) => tokenSpan(t, ex.acts[from + i], max));
  const text = ex.tokens.join("");
  const line = h("div", { class: "ctx" },
    h("span", { class: "act", title: "activation on the marked token" }, fmt(ex.act)),
    h("span", { class: "ctx-line tokens" },
      h("span", { class: "ctx-left" }, h("span", { class: "ltr" }, spans(0, f))),
      tokenSpan(ex.tokens[f], ex.acts[f], max, { class: "focus" }),
      h("span", { class: "ctx-right" }, spans(f + 1))),
    h("span", { class: "ctx-meta muted" }, [ex.label, `text ${ex.text_index}`, `token ${ex.position}`].filter(Boolean).join(" · "), " ",
      h("button", { type: "button", class: "link", onclick: () => line.classList.toggle("open"), "aria-label": "show the whole context" }, "more"), " ",
      h("a", { href: `#/inspect?layer=${layer}&feature=${feature}&text=${encodeURIComponent(text)}` }, "inspect")));
  return line;
}

// Axis ticks. Counts: 0 and steps of 1, 2 or 5 x 10^k, four to six of them. Activations (log
// axis): 1, 2 and 5 x 10^k inside the range (every decade only, when that makes many), else 1..9 x
// 10^k, plus the range's ends while fewer than three fall inside (a feature often spans less than a decade).
function countTicks(max) {
  const raw = Math.max(max, 1) / 5, mag = 10 ** Math.floor(Math.log10(raw));
  const step = Math.max(1, [1, 2, 5, 10].map(m => m * mag).find(s => s >= raw));
  const out = [];
  for (let v = 0; v <= max; v += step) out.push(v);
  return out;
}
function logTicks(lo, hi) {
  const inside = mantissas => {
    const out = [];
    for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++)
      for (const m of mantissas) { const v = +(m * 10 ** e).toPrecision(3); if (v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9)) out.push(v); }
    return out;
  };
  let ticks = inside([1, 2, 5]);
  if (ticks.length > 7) ticks = ticks.filter(v => Math.abs(Math.log10(v) - Math.round(Math.log10(v))) < 1e-9);
  if (ticks.length < 3) ticks = inside([1, 2, 3, 4, 5, 6, 7, 8, 9]);
  if (ticks.length < 3) {
    const apart = v => ticks.every(t => Math.abs(Math.log10(t / v)) > 0.08 * Math.log10(hi / lo));
    ticks = [...ticks, ...[lo, hi].filter(apart)].sort((a, b) => a - b);
  }
  return ticks;
}
const tickLabel = v => (v >= 1000 ? v.toExponential(0) : v >= 1 ? String(+v.toPrecision(3)) : String(+v.toPrecision(2)));

// Activation histogram: log-binned counts with labelled axes; scales with the page.
function histogram(bins) {
  if (!bins.length) return h("p", { class: "muted" }, "never fired in the store's texts");
  const W = 600, H = 220, L = 52, R = 16, T = 12, B = 42, pw = W - L - R, ph = H - T - B;
  const max = Math.max(...bins.map(b => b[2])), a0 = bins[0][0], a1 = bins[bins.length - 1][1];
  const lo = Math.log10(a0), hi = Math.log10(a1);
  const x = v => L + ((Math.log10(v) - lo) / (hi - lo)) * pw, y = n => T + ph - (ph * n) / Math.max(max, 1);
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, class: "hist", role: "img", "aria-label": "activation histogram" });
  countTicks(max).forEach(n => {
    svg.append(svgEl("line", { x1: L, x2: W - R, y1: y(n), y2: y(n), class: "grid" }));
    svg.append(svgEl("line", { x1: L - 5, x2: L, y1: y(n), y2: y(n), class: "axis" }));
    svg.append(svgEl("text", { x: L - 8, y: y(n) + 4, "text-anchor": "end", class: "tick y" }, n.toLocaleString()));
  });
  bins.forEach(([a, b, n]) => {
    const r = svgEl("rect", { x: x(a) + 0.5, y: y(n), width: Math.max(1, x(b) - x(a) - 1), height: Math.max(0.5, T + ph - y(n)), class: "bar" });
    r.append(svgEl("title", {}, `${fmt(a, 3)} – ${fmt(b, 3)}: ${n} firings`));
    svg.append(r);
  });
  svg.append(svgEl("line", { x1: L, x2: W - R, y1: T + ph, y2: T + ph, class: "axis" }), svgEl("line", { x1: L, x2: L, y1: T, y2: T + ph, class: "axis" }));
  logTicks(a0, a1).forEach(v => {
    const anchor = x(v) < L + 12 ? "start" : x(v) > W - R - 12 ? "end" : "middle";
    svg.append(svgEl("line", { x1: x(v), x2: x(v), y1: T + ph, y2: T + ph + 5, class: "axis" }),
      svgEl("text", { x: x(v), y: T + ph + 18, "text-anchor": anchor, class: "tick x" }, tickLabel(v)));
  });
  svg.append(svgEl("text", { x: L + pw / 2, y: H - 4, "text-anchor": "middle", class: "axis-title" }, "activation (log scale)"),
    svgEl("text", { x: 12, y: T + ph / 2, "text-anchor": "middle", class: "axis-title", transform: `rotate(-90 12 ${T + ph / 2})` }, "firings"));
  return svg;
}

function effectsTable(title, rows) {
  return h("div", { class: "col" }, h("h3", {}, title), h("table", {}, rows.map(([t, v]) => h("tr", {}, h("td", { class: "tokens" }, JSON.stringify(t)), h("td", {}, fmt(v, 3))))));
}

function truncNote(r) {
  return r && r.truncated ? h("p", { class: "warn" }, `The text is longer than ${r.max_tokens} tokens: only its first ${r.max_tokens} were read.`) : "";
}

// ---------------------------------------------------------------- pages
const pages = {};

pages.features = (view, args, query) => {
  setTitle("Features");
  const stored = storeLayers();
  const layer = query.get("layer") || (stored[0] || INFO.layers[0]).layer;
  const out = h("div", { id: "results" });
  view.append(h("h2", {}, "Feature browser"));
  const left = h("div", { class: "col wide" }), right = h("div", { class: "col" });
  view.append(h("div", { class: "row" }, left, right), out);

  if (stored.length) {
    const list = h("div", { id: "browse-list" }, "…"), info = h("span", { class: "muted", id: "browse-info" });
    const state = { layer: stored.some(l => String(l.layer) === String(layer)) ? layer : stored[0].layer, order: query.get("order") || "frequent",
      q: query.get("q") || "", page: Math.max(0, (+query.get("page") || 1) - 1), dense: query.get("dense") === "1" };
    const N = 25;
    let loads = 0;
    const prev = h("button", { type: "button", class: "secondary", id: "browse-prev", onclick: () => { state.page--; load(); } }, "← previous");
    const next = h("button", { type: "button", class: "secondary", id: "browse-next", onclick: () => { state.page++; load(); } }, "next →");
    const controls = h("div", { class: "controls" },
      layerSelect("browse-layer", state.layer, stored), " ",
      h("select", { id: "browse-order", "aria-label": "order" }, [["frequent", "most frequent"], ["rare", "rarest"], ["strongest", "strongest (max activation)"], ["random", "random"]].map(([v, t]) => h("option", { value: v, selected: v === state.order ? "" : null }, t))), " ",
      h("label", {}, h("input", { type: "checkbox", id: "browse-dense", checked: state.dense ? "" : null }), ` show dense features (> ${pct(DENSE)} of tokens)`), " ",
      h("input", { id: "browse-q", type: "search", placeholder: "filter labels, e.g. french", value: state.q, "aria-label": "filter labels" }));
    const load = async () => {
      setQuery({ layer: state.layer, order: state.order !== "frequent" ? state.order : "", q: state.q, page: state.page ? state.page + 1 : "", dense: state.dense ? 1 : "" });
      const params = new URLSearchParams({ order: state.order, n: N, offset: state.page * N });
      if (!state.dense) params.set("max_density", DENSE);
      if (state.q) params.set("q", state.q);
      prev.disabled = next.disabled = true;
      const mine = ++loads;  // a slower earlier answer must not overwrite a newer one
      list.setAttribute("aria-busy", "true");
      try {
        const r = await api(`/api/browse/${state.layer}?${params}`);
        if (mine !== loads) return;
        const from = r.total ? state.page * N + 1 : 0, to = state.page * N + r.rows.length;
        info.textContent = `${from}–${to} of ${r.total.toLocaleString()} features that fired${state.dense ? "" : " (dense ones hidden)"}`;
        if (!state.dense && state.q) {  // a label search should not hide what it found: say how many dense features match
          const all = await api(`/api/browse/${state.layer}?${new URLSearchParams({ q: state.q, n: 1 })}`);
          if (all.total > r.total) info.append(" ", h("button", { type: "button", class: "secondary", id: "browse-show-dense",
            onclick: () => { $("#browse-dense").checked = true; state.dense = true; state.page = 0; load(); } },
            `show ${all.total - r.total} dense ${all.total - r.total === 1 ? "feature" : "features"} that match`));
        }
        if (mine !== loads) return;
        list.replaceChildren(r.rows.length ? featureTable(state.layer, r.rows, [["max act", "max_act"]]) : h("p", { class: "muted" }, "no feature matches"));
        prev.disabled = state.page === 0; next.disabled = to >= r.total;
      } catch (err) { if (mine === loads) showError(list, err); }
      if (mine === loads) list.removeAttribute("aria-busy");
    };
    controls.addEventListener("change", e => {
      state.layer = $("#browse-layer").value; state.order = $("#browse-order").value; state.dense = $("#browse-dense").checked;
      state.q = $("#browse-q").value.trim(); state.page = 0; load();
    });
    left.append(h("div", { class: "card", id: "browse" }, h("h3", {}, "Browse features"), controls, h("div", { class: "pager" }, prev, " ", next, " ", info), list));
    load();
    right.append(form({ class: "card", id: "by-expl" }, async () => {
      const q = $("#expl-q").value;
      try { const r = await api(`/api/search/explanations?q=${encodeURIComponent(q)}`);
        out.replaceChildren(h("h3", {}, `${r.length} features whose label has “${q}”`), ...stored.map(l => r.some(x => x.layer === l.layer) ? h("div", {}, h("b", {}, `layer ${l.layer}`), featureTable(l.layer, r.filter(x => x.layer === l.layer))) : null));
      } catch (err) { showError(out, err); } },
      h("h3", {}, "Search labels and explanations"), h("input", { id: "expl-q", required: "", placeholder: "e.g. french", "aria-label": "search words" }), " ", h("button", {}, "Search")));
  } else {
    left.append(h("p", { class: "card muted" }, "No layer has a feature store, so there is nothing to browse: build one with `qscope features build --layer L`. You can still open features by id, search by text and contrast texts."));
  }
  right.append(form({ class: "card", id: "by-id" }, () => { location.hash = `#/feature/${$("#id-layer").value}/${$("#id-feature").value}`; },
    h("h3", {}, "Open a feature by id"), layerSelect("id-layer", layer), " ",
    h("input", { id: "id-feature", type: "number", min: 0, value: 0, required: "", "aria-label": "feature id" }), " ", h("button", {}, "Open")));
  right.append(form({ class: "card", id: "by-text" }, async () => {
      const l = $("#text-layer").value;
      try { const r = await api("/api/search/text", { text: $("#text-q").value, layer: +l, top: 20 });
        out.replaceChildren(h("h3", {}, `Features active on the text (layer ${l})`), truncNote(r), featureTable(l, r.features, [["max activation", "max_act"]]));
      } catch (err) { showError(out, err); } },
    h("h3", {}, "Features active on a text"), h("textarea", { id: "text-q", required: "", "aria-label": "text" }, "The Eiffel Tower is in Paris."), layerSelect("text-layer", layer), " ", h("button", {}, "Search")));
  right.append(form({ class: "card", id: "by-contrast" }, async () => {
      const l = $("#con-layer").value, lines = s => s.split("\n").map(x => x.trim()).filter(Boolean);
      try { const r = await api("/api/search/contrast", { positive: lines($("#con-pos").value), negative: lines($("#con-neg").value), layer: +l, top: 20, by: $("#con-by").value });
        out.replaceChildren(h("h3", {}, `Features firing more on A than on B (layer ${l}, by ${r.by})`),
          featureTable(l, r.features, [["score", "score"], ["mean A", "mean_pos"], ["mean B", "mean_neg"], ["rate A", "rate_pos"], ["rate B", "rate_neg"]]));
      } catch (err) { showError(out, err); } },
    h("h3", {}, "Contrast two text sets (one text per line)"),
    h("div", { class: "row" }, h("div", { class: "col" }, h("label", { for: "con-pos" }, "A"), h("textarea", { id: "con-pos" }, "I love this, it is wonderful!\nWhat a great day.")),
      h("div", { class: "col" }, h("label", { for: "con-neg" }, "B"), h("textarea", { id: "con-neg" }, "I hate this, it is awful.\nWhat a terrible day."))),
    layerSelect("con-layer", layer), " ", h("select", { id: "con-by", "aria-label": "rank by" }, h("option", { value: "mean" }, "by mean activation"), h("option", { value: "rate" }, "by firing rate")), " ", h("button", {}, "Contrast")));
};

pages.feature = async (view, [layer, feature]) => {
  feature = +feature;
  setTitle(`Feature ${layer}/${feature}`);
  const d_sae = (INFO.layers.find(l => String(l.layer) === String(layer)) || {}).d_sae;
  const nav = h("span", { class: "prevnext" },
    feature > 0 ? h("a", { href: `#/feature/${layer}/${feature - 1}`, id: "prev-feature", rel: "prev" }, `← #${feature - 1}`) : null, " ",
    d_sae && feature < d_sae - 1 ? h("a", { href: `#/feature/${layer}/${feature + 1}`, id: "next-feature", rel: "next" }, `#${feature + 1} →`) : null);
  const heading = h("h2", {}, `Feature #${feature}`, h("span", { class: "muted" }, `  layer ${layer} · ${INFO.model}`));
  view.append(h("div", { class: "title-row" }, heading, nav));
  const body = h("div", {}, "loading…"); view.append(body);
  let d;
  try { d = await api(`/api/feature/${layer}/${feature}`); } catch (err) { return showError(body, err); }
  body.replaceChildren();
  setTitle(`Feature ${layer}/${feature}: ${d.label}`);
  const expl = [h("p", { class: "big-label" }, labelView(d))];
  if (d.explanations.length > 1) expl.push(h("details", {}, h("summary", {}, `${d.explanations.length} explanations`), d.explanations.map(e => h("p", {}, e.text, h("span", { class: "muted" }, `  (${e.source})`)))));
  if (d.explanations.length && d.auto_label) expl.push(h("p", { class: "muted" }, `automatic label: ${d.auto_label}`));
  if (!d.explanations.length) expl.push(h("p", { class: "muted" }, "An automatic label from the tokens it fires on and promotes; an explanation replaces it (qscope features explain)."));
  const strength = d.store && d.max_act ? Math.round(2 * d.max_act) : "";
  body.append(h("div", { class: "card", id: "explanation" }, h("h3", {}, "Label"), expl,
    h("a", { href: `#/steer?layer=${layer}&edits=${feature}:${strength}` }, "steer with this feature →")));
  if (d.store) body.append(detectionCard(layer, feature, d));
  if (d.store) {
    body.append(h("div", { class: "row" },
      h("div", { class: "card col", id: "density" }, h("h3", {}, "Density"),
        h("p", {}, "fires on ", h("b", {}, pct(d.density)), " of tokens and ", h("b", {}, pct(d.text_density)), " of texts ", densityView(d.density)),
        d.density > DENSE ? h("p", { class: "warn" }, "A dense feature: it fires almost everywhere, so it says little about any one text.") : null,
        h("p", { class: "muted" }, `${d.fires.toLocaleString()} firings in ${d.n_tokens.toLocaleString()} tokens of ${d.n_texts.toLocaleString()} texts · max activation ${fmt(d.max_act)} · mean when firing ${fmt(d.mean_act)}`)),
      h("div", { class: "card col", id: "histogram" }, h("h3", {}, "Activation histogram"), histogram(d.histogram))));
  } else {
    body.append(h("p", { class: "card muted" }, "No feature store for this layer: top contexts, histogram and density need one (qscope features build). Live activations below."));
  }
  body.append(h("div", { class: "row card" }, effectsTable("Promoted tokens", d.promoted), effectsTable("Suppressed tokens", d.suppressed)));
  if (d.store) {
    const max = d.max_act || 1;
    body.append(h("div", { class: "card", id: "top" }, h("h3", {}, "Top activating contexts"), h("p", { class: "muted" }, "centred on the strongest token (outlined); ↵ is a newline; corpus · text · position"),
      d.top.length ? d.top.map(ex => contextLine(ex, max, layer, feature)) : h("p", { class: "muted" }, "none")));
    if (d.intervals.length) body.append(h("div", { class: "card", id: "quantiles" }, h("h3", {}, "Samples by activation interval"),
      d.intervals.slice().reverse().map(iv => h("div", {}, h("p", { class: "muted" }, `[${fmt(iv.low, 3)}, ${fmt(iv.high, 3)}): ${iv.count} firings (${pct(iv.share)})`), iv.examples.map(ex => contextLine(ex, max, layer, feature))))));
  }
  const live = h("div", { id: "live-out" });
  body.append(form({ class: "card", id: "live" }, async () => {
      try { const r = await api("/api/feature/activations", { text: $("#live-text").value, layer: +layer, feature: +feature });
        const max = Math.max(...r.acts, 1e-9);
        live.replaceChildren(truncNote(r), h("p", { class: "muted" }, `max ${fmt(Math.max(...r.acts), 3)}`), h("div", { class: "tokens" }, r.tokens.map((t, i) => tokenSpan(t, r.acts[i], max))));
      } catch (err) { showError(live, err); } },
    h("h3", {}, "Live activations on your text"), h("textarea", { id: "live-text", "aria-label": "text" }, "The Eiffel Tower is in Paris, the capital of France."), h("button", {}, "Run"), live));
};

// Detection score: an LLM judge (set up with `qscope serve --endpoint`) reads the label and a
// shuffled mix of held-out excerpts where the feature fires and where it does not, and picks the
// ones that fire; balanced accuracy 0.5 is chance, 1 is a label that tells them all apart.
function detectionCard(layer, feature, d) {
  const out = h("div", { id: "detection-out" });
  const card = h("div", { class: "card", id: "detection" }, h("h3", {}, "Detection score of the label"));
  if (!INFO.judge) {
    card.append(h("p", { class: "muted", id: "detection-off" }, "No LLM endpoint is configured to judge labels, so this label is not scored. Start the server with ",
      h("code", {}, "qscope serve --endpoint URL --api-model NAME"), " (any OpenAI-compatible server) to score it."));
    return card;
  }
  const show = r => {
    if (!r.scored) return out.replaceChildren(h("p", { class: "muted" }, r.detail));
    const n1 = r.excerpts.filter(x => x.fires).length, n0 = r.excerpts.length - n1;
    out.replaceChildren(
      h("p", {}, "balanced accuracy ", h("b", { id: "detection-score" }, fmt(r.balanced_accuracy)), h("span", { class: "muted" },
        `  (0.5 = chance) · picked ${pct(r.hit_rate_fires)} of ${n1} excerpts where it fires and left out ${pct(r.hit_rate_quiet)} of ${n0} where it does not · judge ${r.judge} · label by ${r.source}`)),
      h("details", {}, h("summary", {}, "excerpts"), h("div", { class: "scroll" }, h("table", {},
        h("tr", {}, h("th", {}, "excerpt"), h("th", {}, "fires"), h("th", {}, "judge"), h("th", {}, "")),
        r.excerpts.map(x => h("tr", {}, h("td", { class: "tokens" }, x.text), h("td", {}, x.fires ? `yes (${fmt(x.act, 3)})` : "no"),
          h("td", {}, x.predicted ? "yes" : "no"), h("td", {}, x.predicted === x.fires ? "✓" : "✗")))))));
  };
  card.append(form({}, async () => {
      try { show(await api("/api/feature/detection", { layer: +layer, feature: +feature, n: 8 })); } catch (err) { showError(out, err); } },
    h("p", { class: "muted" }, `The judge (${INFO.judge}) reads this label and a shuffled mix of excerpts, half where the feature fires (not among those an explainer sees) and half where it does not, and picks the ones that fire.`),
    h("button", { id: "detection-go" }, "Score the label")), out);
  return card;
}

pages.inspect = (view, args, query) => {
  setTitle("Inspect text");
  const out = h("div", { id: "inspect-out" });
  const layer0 = query.get("layer") || INFO.layers[0].layer, paintWanted = query.get("feature");
  const f = form({ class: "card" }, async () => {
      const l = $("#ins-layer").value, text = $("#ins-text").value;
      setQuery({ layer: l, text, feature: paintWanted || "" });
      const k = INFO.layers.find(x => String(x.layer) === l).k || 10;
      try { render(await api("/api/inspect", { text, layer: +l, top: Math.min(k, INFO.limits.max_top) })); } catch (err) { showError(out, err); } },
    h("textarea", { id: "ins-text", "aria-label": "text" }, query.get("text") || "The Eiffel Tower is in Paris. def add(a, b): return a + b"), layerSelect("ins-layer", layer0), " ", h("button", {}, "Inspect"));
  view.append(h("h2", {}, "Text inspector"), f, out);
  function render(r) {
    const withLabel = (f, extra) => ({ feature: f, ...(r.labels[String(f)] || {}), ...extra });
    const detail = h("div", { class: "card", id: "token-detail" }, h("p", { class: "muted" }, "select a token to see its features"));
    // Colour the tokens by one feature's activation (hover or focus a feature in either table to pick it).
    const actOf = (t, f) => (t.features.find(x => x[0] === f) || [0, 0])[1];
    const paint = f => {
      const max = Math.max(...r.tokens.slice(1).map(t => actOf(t, f)), 1e-9);  // position 0 is an attention sink
      toks.forEach((span, i) => { const a = Math.min(1, actOf(r.tokens[i], f) / max); span.style.background = a > 0 ? `rgba(234, 88, 12, ${0.08 + 0.82 * a})` : ""; });
      const L = r.labels[String(f)];
      $("#paint-label").textContent = `colour = activation of feature #${f}${L ? ` (${L.label})` : ""}`;
    };
    const select = (t, span) => {
      $$(".tok.sel").forEach(x => x.classList.remove("sel")); span.classList.add("sel");
      detail.replaceChildren(h("h3", {}, `token ${t.position}: ${JSON.stringify(t.token)}`),
        featureTable(r.layer, t.features.slice(0, 10).map(([f, a]) => withLabel(f, { act: a })), [["activation", "act"]], paint));
    };
    const toks = r.tokens.map(t => { const s = clickable(tokenSpan(t.token, 0, 1)); s.addEventListener("click", () => select(t, s)); return s; });
    const strongestBox = h("div", {});
    const showStrongest = () => {
      const dense = $("#ins-dense") && $("#ins-dense").checked;
      const rows = r.strongest.filter(x => dense || !(x.density > DENSE));
      strongestBox.replaceChildren(featureTable(r.layer, rows, [["max activation", "max_act"]], paint));
    };
    out.replaceChildren(truncNote(r), h("div", { class: "card" }, h("h3", {}, `Tokens (layer ${r.layer}) `, h("span", { class: "muted", id: "paint-label" }, "")),
      h("p", { class: "muted" }, "select a token (click, tap, or Tab then Enter) for its features; hover or focus a feature to colour the text by it"), h("div", { class: "tokens", id: "tokens" }, toks)),
      h("div", { class: "row" }, h("div", { class: "col" }, detail),
        h("div", { class: "col card" }, h("h3", {}, "Strongest features over the text"),
          h("label", {}, h("input", { type: "checkbox", id: "ins-dense", onchange: showStrongest }), ` show dense features (> ${pct(DENSE)} of tokens)`), strongestBox)));
    showStrongest();
    toks[Math.min(1, toks.length - 1)].click();
    const first = r.strongest.find(x => !(x.density > DENSE)) || r.strongest[0];
    if (paintWanted) paint(+paintWanted); else if (first) paint(first.feature);
  }
  if (query.get("text")) f.requestSubmit();
};

// Word-level differences: marks the words of `b` that are not in the longest common subsequence with `a`.
function diffWords(a, b) {
  const A = a.split(/(\s+)/), B = b.split(/(\s+)/), n = A.length, m = B.length;
  const L = Array.from({ length: n + 1 }, () => new Uint16Array(m + 1));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--) L[i][j] = A[i] === B[j] ? L[i + 1][j + 1] + 1 : Math.max(L[i + 1][j], L[i][j + 1]);
  const out = []; let i = 0, j = 0;
  while (j < m) {
    if (i < n && A[i] === B[j]) { out.push([B[j], false]); i++; j++; }
    else if (i < n && L[i + 1][j] >= L[i][j + 1]) i++;
    else { out.push([B[j], !/^\s*$/.test(B[j])]); j++; }
  }
  return out;
}
function showDiff(box, plainText) {
  const text = box.textContent;
  box.replaceChildren(...diffWords(plainText, text).map(([w, changed]) => (changed ? h("mark", {}, w) : w)));
}

pages.steer = (view, args, query) => {
  setTitle("Steer");
  // older links: #/steer/L/F
  const layer0 = query.get("layer") || args[0] || INFO.layers[Math.floor(INFO.layers.length / 2)].layer;
  const initial = query.get("edits") ? query.get("edits").split(",").map(x => x.split(":")) : [[args[1] || "", args[1] ? "8" : ""]];
  const edits = h("div", { id: "edits" });
  const addEdit = (f = "", s = "") => {
    const info = h("div", { class: "e-info muted" });
    const strength = h("input", { type: "number", class: "e-strength", step: "any", value: s, "aria-label": "strength", placeholder: "strength" });
    const slider = h("input", { type: "range", class: "e-slider", min: -50, max: 50, step: "any", value: s || 0, "aria-label": "strength slider" });
    const feat = h("input", { type: "number", class: "e-feature", min: 0, value: f, "aria-label": "feature id", placeholder: "id" });
    slider.addEventListener("input", () => { strength.value = (+slider.value).toFixed(1); });
    strength.addEventListener("input", () => { if (strength.value !== "") slider.value = strength.value; });
    let timer = null;
    const describe = async () => {
      if (!feat.isConnected) return;  // the page was left (or the row removed) before the timer fired
      const l = $("#st-layer").value, id = feat.value;
      if (id === "") { info.replaceChildren(); return; }
      try {
        const r = await api(`/api/feature/${l}/${id}/summary`);
        const range = r.max_act ? Math.max(1, Math.ceil(4 * r.max_act)) : 50;
        slider.min = -range; slider.max = range;
        strength.placeholder = r.max_act ? `e.g. ${Math.round(2 * r.max_act)}` : "e.g. 8";
        info.replaceChildren(labelView(r), h("br"), r.max_act !== null
          ? `typical activation when firing ${fmt(r.mean_act)}, max seen ${fmt(r.max_act)}; the slider spans ±4× the max`
          : "no store for this layer: activation range unknown; the slider spans ±50");
      } catch (err) { showError(info, err); }
    };
    feat.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(describe, 300); });
    const row = h("div", { class: "edit" }, h("div", { class: "edit-controls" }, "feature", feat, "strength", strength, slider,
      h("button", { type: "button", class: "secondary", "aria-label": "remove this feature", onclick: () => row.remove() }, "×")), info);
    row.describe = describe;
    edits.append(row);
    describe();
  };
  const outputs = h("div", { class: "row", id: "outputs" });
  const plain = h("div", { class: "gen", id: "plain" }), steered = h("div", { class: "gen", id: "steered" }), msg = h("div", { id: "steer-msg" });
  const defaultOutputs = () => outputs.replaceChildren(h("div", { class: "col card" }, h("h3", {}, "Plain"), plain), h("div", { class: "col card" }, h("h3", {}, "Steered ", h("span", { class: "muted" }, "(changed words marked)")), steered));
  defaultOutputs();
  const go = h("button", { id: "steer-go" }, "Generate");
  let running = null;
  const stop = h("button", { type: "button", id: "steer-stop", class: "secondary", disabled: "", onclick: () => running && running.abort() }, "Stop");
  const q = (k, d) => (query.has(k) ? query.get(k) : d);
  // diffmean / repe: one direction from two text sets, pushed by one strength (sae-only controls hidden)
  const lines = x => x.split("\n").map(t => t.trim()).filter(Boolean);
  const texts0 = INFO.direction_texts;
  const dirStrength = h("input", { type: "number", id: "st-strength", step: "any", value: q("strength", "8"), "aria-label": "direction strength" });
  const dirSlider = h("input", { type: "range", id: "st-strength-slider", class: "e-slider", min: -100, max: 100, step: "any", value: q("strength", "8"), "aria-label": "direction strength slider" });
  dirSlider.addEventListener("input", () => { dirStrength.value = (+dirSlider.value).toFixed(1); });
  dirStrength.addEventListener("input", () => { if (dirStrength.value !== "") dirSlider.value = dirStrength.value; });
  const direction = h("div", { id: "direction" },
    h("p", { class: "muted" }, "diffmean steers along the difference of the mean residuals of the two sets; repe along their first principal component (texts paired in order, at least two each). The strength is how far the residual is pushed along that unit direction, in the units of a feature's add strength."),
    h("div", { class: "row" }, h("div", { class: "col" }, h("label", { for: "st-pos-texts" }, "Towards (one text per line)"), h("textarea", { id: "st-pos-texts", rows: 5 }, q("ptexts", texts0.positive.join("\n")))),
      h("div", { class: "col" }, h("label", { for: "st-neg-texts" }, "Away from (one text per line)"), h("textarea", { id: "st-neg-texts", rows: 5 }, q("ntexts", texts0.negative.join("\n"))))),
    h("div", { class: "controls" }, "strength", dirStrength, dirSlider));
  const method = h("select", { id: "st-method", "aria-label": "steering method" }, [["sae", "SAE features"], ["diffmean", "diffmean direction"], ["repe", "repe direction"]]
    .map(([v, t]) => h("option", { value: v, selected: q("method", "sae") === v ? "" : null }, t)));
  const saeOnly = [], onlySae = node => { saeOnly.push(node); return node; };
  const showMethod = () => {
    const sae = method.value === "sae";
    saeOnly.forEach(n => { n.hidden = !sae; });
    direction.hidden = sae;
  };
  method.addEventListener("change", showMethod);
  const f = h("form", { class: "card", onsubmit: async e => {
      e.preventDefault();
      if (go.disabled) return;
      msg.replaceChildren();
      const sweep = $("#st-sweep-on").checked ? $("#st-sweep").value.split(",").map(x => x.trim()).filter(Boolean) : null;
      if (sweep && (!sweep.length || sweep.some(x => !isFinite(+x)))) return showError(msg, new Error("sweep strengths must be numbers separated by commas, e.g. 4, 8, 16"));
      const body = { prompt: $("#st-prompt").value, layer: +$("#st-layer").value, positions: $("#st-pos").value, chat: $("#st-chat").checked,
        max_new_tokens: +$("#st-max").value };
      const state = { layer: body.layer, prompt: body.prompt, pos: body.positions !== "all" ? body.positions : "", chat: body.chat ? "" : 0, max: body.max_new_tokens, sweep: sweep ? sweep.join(",") : "" };
      if (method.value === "sae") {
        const rows = [...edits.children];
        if (!rows.length) return showError(msg, new Error("add a feature to steer with"));
        for (const d of rows) {
          if ($(".e-feature", d).value === "") return showError(msg, new Error("a feature id is empty: give a number"));
          if ($(".e-strength", d).value === "" || !isFinite(+$(".e-strength", d).value)) return showError(msg, new Error(`feature #${$(".e-feature", d).value}: the strength is empty: give a number (e.g. 8, or negative to suppress)`));
        }
        body.edits = rows.map(d => ({ feature: +$(".e-feature", d).value, strength: +$(".e-strength", d).value, mode: $("#st-mode").value, relative: $("#st-rel").checked }));
        Object.assign(state, { edits: body.edits.map(x => `${x.feature}:${x.strength}`).join(","), mode: body.edits[0].mode !== "add" ? body.edits[0].mode : "", rel: $("#st-rel").checked ? 1 : "" });
      } else {
        const positive = lines($("#st-pos-texts").value), negative = lines($("#st-neg-texts").value);
        if (!positive.length || !negative.length) return showError(msg, new Error("give at least one text on each side (one per line)"));
        if (!sweep && (dirStrength.value === "" || !isFinite(+dirStrength.value))) return showError(msg, new Error("the strength is empty: give a number (e.g. 8, or negative to push the other way)"));
        Object.assign(body, { method: method.value, positive, negative });
        if (!sweep) body.strength = +dirStrength.value;
        Object.assign(state, { method: method.value, strength: sweep ? "" : body.strength,
          ptexts: positive.join("\n") !== texts0.positive.join("\n") ? positive.join("\n") : "", ntexts: negative.join("\n") !== texts0.negative.join("\n") ? negative.join("\n") : "" });
      }
      if (sweep) body.sweep = sweep.map(Number);
      setQuery(state);
      plain.textContent = ""; plain.dataset.done = "";
      const boxes = { plain };
      if (sweep) {
        outputs.replaceChildren(h("div", { class: "col card" }, h("h3", {}, "Plain"), plain), ...sweep.map((s, i) => {
          boxes[`sweep-${i}`] = h("div", { class: "gen", id: `sweep-${i}` });
          return h("div", { class: "col card" }, h("h3", {}, `strength ${s}`), boxes[`sweep-${i}`]);
        }));
      } else { defaultOutputs(); steered.textContent = ""; steered.dataset.done = ""; boxes.steered = steered; }
      go.disabled = true; stop.disabled = false;
      running = pageSignal();
      try {
        await stream(body, boxes, running.signal);
        Object.entries(boxes).forEach(([side, box]) => { if (side !== "plain") showDiff(box, plain.textContent); });
      } catch (err) { if (aborted(err)) msg.replaceChildren(h("p", { class: "muted" }, "stopped")); else showError(msg, err); }
      finally { go.disabled = false; stop.disabled = true; PENDING.delete(running); running = null; }
    } },
    h("label", { for: "st-prompt" }, "Prompt"), h("textarea", { id: "st-prompt" }, q("prompt", "Tell me about your weekend.")),
    h("div", { class: "controls" }, layerSelect("st-layer", layer0), " method ", method,
      onlySae(h("span", {}, " mode ", h("select", { id: "st-mode", "aria-label": "mode" }, h("option", { value: "add" }, "add (h + s·d)"), h("option", { value: "clamp", selected: q("mode") === "clamp" ? "" : null }, "clamp (activation = s)")),
      " ", h("label", {}, h("input", { type: "checkbox", id: "st-rel", checked: q("rel") === "1" ? "" : null }), " relative"))), " · positions ", h("select", { id: "st-pos", "aria-label": "positions" }, ["all", "prompt", "generated"].map(p => h("option", { selected: q("pos") === p ? "" : null }, p))),
      " ", h("label", {}, h("input", { type: "checkbox", id: "st-chat", checked: q("chat") === "0" ? null : "" }), " chat"), " · max tokens ", h("input", { type: "number", id: "st-max", min: 1, max: INFO.limits.max_new_tokens, value: q("max", 40), "aria-label": "max new tokens" })),
    onlySae(h("div", { id: "features-box" }, h("h3", {}, "Features"), edits,
      h("div", { class: "controls" }, h("button", { type: "button", class: "secondary", onclick: () => addEdit() }, "+ feature")))),
    direction,
    h("div", { class: "controls" },
      h("label", {}, h("input", { type: "checkbox", id: "st-sweep-on", checked: query.get("sweep") ? "" : null }), " sweep the strength (the first feature's, or the direction's) over "),
      h("input", { id: "st-sweep", value: q("sweep", ""), placeholder: "e.g. 4, 8, 16", "aria-label": "sweep strengths", size: 12 }), h("span", { class: "muted" }, ` (at most ${INFO.limits.max_sweep})`)),
    h("div", { class: "controls" }, go, " ", stop), msg);
  view.append(h("h2", {}, "Steering playground"), f, outputs);
  initial.forEach(([fid, s]) => addEdit(fid, s));
  showMethod();
  $("#st-layer").addEventListener("change", () => [...edits.children].forEach(r => r.describe()));
  if (query.get("prompt") && (query.get("edits") || q("method", "sae") !== "sae")) f.requestSubmit();
};

// POST an SSE stream and append tokens to the matching box as they arrive.
async function stream(body, boxes, signal) {
  let res;
  try { res = await fetch("/api/steer/stream", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal }); }
  catch (err) { throw aborted(err) ? err : new Error(OFFLINE); }
  if (!res.ok) { const d = await res.json().catch(() => ({})); throw new Error(humanError(res, d)); }
  const reader = res.body.getReader(), dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const line = buf.slice(0, i).trim(); buf = buf.slice(i + 2);
      if (!line.startsWith("data:")) continue;
      const ev = JSON.parse(line.slice(5));
      if (ev.type === "token") boxes[ev.side].textContent += ev.text;
      else if (ev.type === "done") { boxes[ev.side].textContent = ev.text; boxes[ev.side].dataset.done = "1"; }
      else if (ev.type === "error") throw new Error(ev.detail);
    }
  }
}

pages.compare = (view, args, query) => {
  setTitle("Compare texts");
  const out = h("div", { id: "compare-out" });
  const f = form({ class: "card" }, async () => {
      const a = $("#cmp-a").value, b = $("#cmp-b").value;
      setQuery({ a, b });
      try { render(await api("/api/compare", { text_a: a, text_b: b, top: 10 })); } catch (err) { showError(out, err); } },
    h("div", { class: "row" }, h("div", { class: "col" }, h("label", { for: "cmp-a" }, "Text A"), h("textarea", { id: "cmp-a" }, query.get("a") || "def add(a, b):\n    return a + b")),
      h("div", { class: "col" }, h("label", { for: "cmp-b" }, "Text B"), h("textarea", { id: "cmp-b" }, query.get("b") || "Add the two numbers and give back the sum."))),
    h("button", {}, "Compare"));
  view.append(h("h2", {}, "Compare two texts"), f, out);
  const cols = [["rate A", "rate_a"], ["rate B", "rate_b"], ["diff", "diff"]];
  const render = r => out.replaceChildren(truncNote(r), ...r.layers.map(L => h("div", { class: "card" }, h("h3", {}, `Layer ${L.layer}`, h("span", { class: "muted" }, `  ${L.tokens_a} vs ${L.tokens_b} tokens; rate = share of tokens where the feature fires`)),
    h("div", { class: "row" }, h("div", { class: "col" }, h("b", {}, "more in A"), featureTable(L.layer, L.more_in_a, cols)), h("div", { class: "col" }, h("b", {}, "more in B"), featureTable(L.layer, L.more_in_b, cols))))));
  if (query.get("a") && query.get("b")) f.requestSubmit();
};

function notFound(view, name) {
  setTitle("Not found");
  view.append(h("div", { class: "card", id: "not-found" }, h("h2", {}, "Page not found"),
    h("p", {}, `There is no page “${name}”. Try the `, h("a", { href: "#/features" }, "feature browser"), ", the ", h("a", { href: "#/inspect" }, "text inspector"),
      ", the ", h("a", { href: "#/steer" }, "steering playground"), " or ", h("a", { href: "#/compare" }, "text comparison"), ".")));
}

// ---------------------------------------------------------------- router
async function route() {
  const { name, args, query } = currentRoute();
  const page = pages[name];
  $$("nav a").forEach(a => a.classList.toggle("active", a.dataset.page === name || (name === "feature" && a.dataset.page === "features")));
  document.body.classList.remove("menu-open");
  abortPending();
  const view = $("#view"); view.replaceChildren(); view.dataset.page = page ? name : "not-found";
  if (!page) return notFound(view, name);
  try { await page(view, args, query); } catch (err) { showError(view, err); }
}

(async () => {
  $("#menu").addEventListener("click", () => document.body.classList.toggle("menu-open"));
  try { INFO = await api("/api/info"); } catch (err) { return showError($("#view"), err); }
  $("#model").textContent = `${INFO.model} · layers ${INFO.layers.map(l => l.layer + (l.store ? "*" : "")).join(", ")}`;
  $("#model").title = "* = layer with a feature store";
  window.addEventListener("hashchange", route);
  route();
})();
