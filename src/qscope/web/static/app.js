// qscope front end: hash routes, vanilla DOM, no build step. Every page is a function that fills #view.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
let INFO = null;

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}

function status(msg) { const s = $("#status"); s.textContent = msg || ""; s.style.display = msg ? "block" : "none"; }

// Requests of the page on show: leaving it (another route, or another site) aborts them, so the
// server stops work nobody will see (a generation gives the model back at its next token).
const PENDING = new Set();
function pageSignal() {
  const ctrl = new AbortController();
  PENDING.add(ctrl);
  return ctrl;
}
function abortPending() { PENDING.forEach(c => c.abort()); PENDING.clear(); }
window.addEventListener("pagehide", abortPending);
const aborted = err => err && err.name === "AbortError";

async function api(path, body) {
  const ctrl = pageSignal();
  const opts = { signal: ctrl.signal, ...(body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) }) };
  status("working…");
  try {
    const res = await fetch(path, opts);
    const data = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error(data.detail || `${res.status} ${res.statusText}`);
    return data;
  } finally { status(""); PENDING.delete(ctrl); }
}

const fmt = (x, d = 2) => (typeof x === "number" ? x.toFixed(d) : x);
const layerSelect = (id, value) => h("select", { id }, INFO.layers.map(l => h("option", { value: l.layer, selected: String(l.layer) === String(value) ? "" : null }, `layer ${l.layer}`)));
const featLink = (layer, f) => h("a", { class: "feat", href: `#/feature/${layer}/${f}` }, `#${f}`);
const showError = (box, err) => box.replaceChildren(h("p", { class: "error" }, err.message || String(err)));

// A token coloured by activation relative to `max` (intensity = activation / max).
function tokenSpan(tok, act, max, extra = {}) {
  const a = max > 0 ? Math.max(0, Math.min(1, act / max)) : 0;
  return h("span", { class: "tok", style: a > 0 ? `background: rgba(234, 88, 12, ${0.08 + 0.82 * a})` : null,
    title: `${JSON.stringify(tok)}  ${fmt(act, 3)}`, ...extra }, tok);
}

function contextLine(ex, max) {
  return h("div", { class: "ctx tokens" }, h("span", { class: "act" }, fmt(ex.act)),
    ex.tokens.map((t, i) => tokenSpan(t, ex.acts[i], max, i === ex.focus ? { class: "tok focus" } : {})));
}

function histogram(bins) {
  if (!bins.length) return h("p", { class: "muted" }, "never fired in the store's texts");
  const W = 420, H = 110, max = Math.max(...bins.map(b => b[2])), w = W / bins.length;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H + 16}`); svg.setAttribute("width", W); svg.setAttribute("class", "hist");
  bins.forEach(([lo, hi, n], i) => {
    const r = document.createElementNS(svg.namespaceURI, "rect"), bh = Math.max(1, (H * n) / max);
    Object.entries({ x: i * w + 1, y: H - bh, width: w - 2, height: bh, class: "bar" }).forEach(([k, v]) => r.setAttribute(k, v));
    const t = document.createElementNS(svg.namespaceURI, "title"); t.textContent = `${fmt(lo, 3)}–${fmt(hi, 3)}: ${n}`; r.append(t);
    svg.append(r);
  });
  [[0, bins[0][0]], [W, bins[bins.length - 1][1]]].forEach(([x, v], j) => {
    const t = document.createElementNS(svg.namespaceURI, "text");
    Object.entries({ x, y: H + 13, "font-size": 11, "text-anchor": j ? "end" : "start" }).forEach(([k, val]) => t.setAttribute(k, val));
    t.textContent = fmt(v, 3); svg.append(t);
  });
  return svg;
}

function effectsTable(title, rows) {
  return h("div", { class: "col" }, h("h3", {}, title), h("table", {}, rows.map(([t, v]) => h("tr", {}, h("td", { class: "tokens" }, JSON.stringify(t)), h("td", {}, fmt(v, 3))))));
}

function featureTable(layer, rows, cols, onhover) {
  return h("table", {}, h("tr", {}, h("th", {}, "feature"), cols.map(c => h("th", {}, c[0]))),
    rows.map(r => h("tr", { onmouseenter: onhover ? () => onhover(r.feature) : null }, h("td", {}, featLink(layer, r.feature)), cols.map(c => h("td", {}, fmt(r[c[1]], 3))))));
}

// ---------------------------------------------------------------- pages
const pages = {};

pages.features = (view) => {
  const layer = (INFO.layers.find(l => l.store) || INFO.layers[0]).layer;  // a layer with a store shows most
  const out = h("div", { id: "results" });
  const byId = h("form", { class: "card", id: "by-id", onsubmit: e => { e.preventDefault(); location.hash = `#/feature/${$("#id-layer").value}/${$("#id-feature").value}`; } },
    h("h3", {}, "Open a feature by id"), layerSelect("id-layer", layer), " ",
    h("input", { id: "id-feature", type: "number", min: 0, value: 0, required: "" }), " ", h("button", {}, "Open"));
  const byText = h("form", { class: "card", id: "by-text", onsubmit: async e => {
      e.preventDefault(); const l = $("#text-layer").value;
      try { const r = await api("/api/search/text", { text: $("#text-q").value, layer: +l, top: 20 });
        out.replaceChildren(h("h3", {}, `Features active on the text (layer ${l})`), featureTable(l, r.features, [["max activation", "max_act"]]));
      } catch (err) { showError(out, err); } } },
    h("h3", {}, "Features active on a text"), h("textarea", { id: "text-q", required: "" }, "The Eiffel Tower is in Paris."), layerSelect("text-layer", layer), " ", h("button", {}, "Search"));
  const byContrast = h("form", { class: "card", id: "by-contrast", onsubmit: async e => {
      e.preventDefault(); const l = $("#con-layer").value, lines = s => s.split("\n").map(x => x.trim()).filter(Boolean);
      try { const r = await api("/api/search/contrast", { positive: lines($("#con-pos").value), negative: lines($("#con-neg").value), layer: +l, top: 20, by: $("#con-by").value });
        out.replaceChildren(h("h3", {}, `Features firing more on A than on B (layer ${l}, by ${r.by})`),
          featureTable(l, r.features, [["score", "score"], ["mean A", "mean_pos"], ["mean B", "mean_neg"], ["rate A", "rate_pos"], ["rate B", "rate_neg"]]));
      } catch (err) { showError(out, err); } } },
    h("h3", {}, "Contrast two text sets (one text per line)"),
    h("div", { class: "row" }, h("div", { class: "col" }, h("label", {}, "A"), h("textarea", { id: "con-pos" }, "I love this, it is wonderful!\nWhat a great day.")),
      h("div", { class: "col" }, h("label", {}, "B"), h("textarea", { id: "con-neg" }, "I hate this, it is awful.\nWhat a terrible day."))),
    layerSelect("con-layer", layer), " ", h("select", { id: "con-by" }, h("option", { value: "mean" }, "by mean activation"), h("option", { value: "rate" }, "by firing rate")), " ", h("button", {}, "Contrast"));
  const withStore = INFO.layers.filter(l => l.store);
  const byExpl = withStore.length ? h("form", { class: "card", id: "by-expl", onsubmit: async e => {
      e.preventDefault();
      try { const r = await api(`/api/search/explanations?q=${encodeURIComponent($("#expl-q").value)}`);
        out.replaceChildren(h("h3", {}, `${r.length} explanations`), h("table", {}, r.map(x => h("tr", {}, h("td", {}, `L${x.layer} `, featLink(x.layer, x.feature)), h("td", {}, x.text)))));
      } catch (err) { showError(out, err); } } },
    h("h3", {}, "Search explanations"), h("input", { id: "expl-q", required: "", placeholder: "e.g. french" }), " ", h("button", {}, "Search")) : null;
  const frequent = withStore.length ? h("div", { class: "card" }, h("h3", {}, `Most frequent features (layer ${withStore[0].layer})`), h("div", { id: "frequent" }, "…")) : null;
  view.append(h("h2", {}, "Feature browser"), h("div", { class: "row" }, h("div", { class: "col" }, byId, byText, byExpl), h("div", { class: "col" }, byContrast, frequent)), out);
  if (frequent) api(`/api/features/${withStore[0].layer}?n=12`).then(r => $("#frequent").replaceChildren(featureTable(withStore[0].layer, r, [["density", "density"], ["max act", "max_act"]]))).catch(err => showError($("#frequent"), err));
};

pages.feature = async (view, [layer, feature]) => {
  view.append(h("h2", {}, `Feature #${feature}`, h("span", { class: "muted" }, `  layer ${layer} · ${INFO.model}`)));
  const body = h("div", {}, "loading…"); view.append(body);
  let d;
  try { d = await api(`/api/feature/${layer}/${feature}`); } catch (err) { return showError(body, err); }
  body.replaceChildren();
  const expl = d.explanations.length ? d.explanations.map(e => h("p", {}, h("b", {}, e.text), h("span", { class: "muted" }, `  (${e.source})`))) : [h("p", { class: "muted" }, "no explanation yet")];
  body.append(h("div", { class: "card", id: "explanation" }, h("h3", {}, "Explanation"), expl,
    h("a", { href: `#/steer/${layer}/${feature}` }, "steer with this feature →")));
  if (d.store) {
    body.append(h("div", { class: "row" },
      h("div", { class: "card col", id: "density" }, h("h3", {}, "Density"),
        h("p", {}, `fires on ${fmt(100 * d.density, 3)}% of tokens and ${fmt(100 * d.text_density, 1)}% of texts`),
        h("p", { class: "muted" }, `${d.fires} firings in ${d.n_tokens} tokens of ${d.n_texts} texts · max ${fmt(d.max_act)} · mean ${fmt(d.mean_act)}`)),
      h("div", { class: "card col", id: "histogram" }, h("h3", {}, "Activation histogram (log bins)"), histogram(d.histogram))));
  } else {
    body.append(h("p", { class: "card muted" }, "No feature store for this layer: top contexts, histogram and density need one (qscope features build). Live activations below."));
  }
  body.append(h("div", { class: "row card" }, effectsTable("Promoted tokens", d.promoted), effectsTable("Suppressed tokens", d.suppressed)));
  if (d.store) {
    const max = d.max_act || 1;
    body.append(h("div", { class: "card", id: "top" }, h("h3", {}, "Top activating contexts"),
      d.top.length ? d.top.map(ex => contextLine(ex, max)) : h("p", { class: "muted" }, "none")));
    if (d.intervals.length) body.append(h("div", { class: "card", id: "quantiles" }, h("h3", {}, "Samples by activation interval"),
      d.intervals.slice().reverse().map(iv => h("div", {}, h("p", { class: "muted" }, `[${fmt(iv.low, 3)}, ${fmt(iv.high, 3)}): ${iv.count} firings (${fmt(100 * iv.share, 1)}%)`), iv.examples.map(ex => contextLine(ex, max))))));
  }
  const live = h("div", { id: "live-out" });
  body.append(h("form", { class: "card", id: "live", onsubmit: async e => {
      e.preventDefault();
      try { const r = await api("/api/feature/activations", { text: $("#live-text").value, layer: +layer, feature: +feature });
        const max = Math.max(...r.acts, 1e-9);
        live.replaceChildren(h("p", { class: "muted" }, `max ${fmt(Math.max(...r.acts), 3)}`), h("div", { class: "tokens" }, r.tokens.map((t, i) => tokenSpan(t, r.acts[i], max))));
      } catch (err) { showError(live, err); } } },
    h("h3", {}, "Live activations on your text"), h("textarea", { id: "live-text" }, "The Eiffel Tower is in Paris, the capital of France."), h("button", {}, "Run"), live));
};

pages.inspect = (view) => {
  const out = h("div", { id: "inspect-out" });
  view.append(h("h2", {}, "Text inspector"), h("form", { class: "card", onsubmit: async e => {
      e.preventDefault(); const l = $("#ins-layer").value;
      const k = INFO.layers.find(x => String(x.layer) === l).k || 10;
      try { render(await api("/api/inspect", { text: $("#ins-text").value, layer: +l, top: Math.min(k, INFO.limits.max_top) })); } catch (err) { showError(out, err); } } },
    h("textarea", { id: "ins-text" }, "The Eiffel Tower is in Paris. def add(a, b): return a + b"), layerSelect("ins-layer", INFO.layers[0].layer), " ", h("button", {}, "Inspect")), out);
  function render(r) {
    const detail = h("div", { class: "card", id: "token-detail" }, h("p", { class: "muted" }, "click a token to see its features"));
    // Colour the tokens by one feature's activation (hover a feature in either table to pick it).
    const actOf = (t, f) => (t.features.find(x => x[0] === f) || [0, 0])[1];
    const paint = f => {
      const max = Math.max(...r.tokens.slice(1).map(t => actOf(t, f)), 1e-9);  // position 0 is an attention sink
      toks.forEach((span, i) => { const a = Math.min(1, actOf(r.tokens[i], f) / max); span.style.background = a > 0 ? `rgba(234, 88, 12, ${0.08 + 0.82 * a})` : ""; });
      $("#paint-label").textContent = `colour = activation of feature #${f}`;
    };
    const toks = r.tokens.map(t => tokenSpan(t.token, 0, 1, { onclick: ev => {
      document.querySelectorAll(".tok.sel").forEach(x => x.classList.remove("sel")); ev.target.classList.add("sel");
      detail.replaceChildren(h("h3", {}, `token ${t.position}: ${JSON.stringify(t.token)}`),
        featureTable(r.layer, t.features.slice(0, 10).map(([f, a]) => ({ feature: f, act: a })), [["activation", "act"]], paint));
    } }));
    out.replaceChildren(h("div", { class: "card" }, h("h3", {}, `Tokens (layer ${r.layer}) `, h("span", { class: "muted", id: "paint-label" }, "")),
      h("p", { class: "muted" }, "click a token for its features; hover a feature to colour the text by it"), h("div", { class: "tokens", id: "tokens" }, toks)),
      h("div", { class: "row" }, h("div", { class: "col" }, detail),
        h("div", { class: "col card" }, h("h3", {}, "Strongest features over the text"), featureTable(r.layer, r.strongest, [["max activation", "max_act"]], paint))));
    toks[Math.min(1, toks.length - 1)].click();
    if (r.strongest.length) paint(r.strongest[0].feature);
  }
};

pages.steer = (view, [layer, feature]) => {
  layer = layer || INFO.layers[Math.floor(INFO.layers.length / 2)].layer;
  const edits = h("div", { id: "edits" });
  const addEdit = (f = 0, s = 8) => edits.append(h("div", { class: "edit" }, "feature", h("input", { type: "number", class: "e-feature", min: 0, value: f }),
    "strength", h("input", { type: "number", class: "e-strength", step: "any", value: s }),
    h("button", { type: "button", class: "secondary", onclick: e => e.target.parentNode.remove() }, "×")));
  addEdit(feature || 0);
  const plain = h("div", { class: "gen", id: "plain" }), steered = h("div", { class: "gen", id: "steered" }), msg = h("div", { id: "steer-msg" });
  const go = h("button", { id: "steer-go" }, "Generate");
  let running = null;
  const stop = h("button", { type: "button", id: "steer-stop", class: "secondary", disabled: "", onclick: () => running && running.abort() }, "Stop");
  view.append(h("h2", {}, "Steering playground"), h("form", { class: "card", onsubmit: async e => {
      e.preventDefault(); msg.replaceChildren(); plain.textContent = ""; steered.textContent = ""; go.disabled = true; stop.disabled = false;
      const body = { prompt: $("#st-prompt").value, layer: +$("#st-layer").value, positions: $("#st-pos").value, chat: $("#st-chat").checked,
        max_new_tokens: +$("#st-max").value, edits: [...edits.children].map(d => ({ feature: +$(".e-feature", d).value, strength: +$(".e-strength", d).value, mode: $("#st-mode").value, relative: $("#st-rel").checked })) };
      running = pageSignal();
      try { await stream(body, { plain, steered }, running.signal); }
      catch (err) { if (aborted(err)) msg.replaceChildren(h("p", { class: "muted" }, "stopped")); else showError(msg, err); }
      finally { go.disabled = false; stop.disabled = true; PENDING.delete(running); running = null; }
    } },
    h("textarea", { id: "st-prompt" }, "Tell me about your weekend."),
    h("div", { class: "row" }, h("div", {}, layerSelect("st-layer", layer), " mode ", h("select", { id: "st-mode" }, h("option", { value: "add" }, "add (h + s·d)"), h("option", { value: "clamp" }, "clamp (activation = s)")),
      " ", h("label", {}, h("input", { type: "checkbox", id: "st-rel" }), " relative"), " · positions ", h("select", { id: "st-pos" }, ["all", "prompt", "generated"].map(p => h("option", {}, p))),
      " ", h("label", {}, h("input", { type: "checkbox", id: "st-chat", checked: "" }), " chat"), " · max tokens ", h("input", { type: "number", id: "st-max", min: 1, max: INFO.limits.max_new_tokens, value: 40 }))),
    h("h3", {}, "Features"), edits, h("button", { type: "button", class: "secondary", onclick: () => addEdit() }, "+ feature"), " ", go, " ", stop, msg),
    h("div", { class: "row" }, h("div", { class: "col card" }, h("h3", {}, "Plain"), plain), h("div", { class: "col card" }, h("h3", {}, "Steered"), steered)));
};

// POST an SSE stream and append tokens to the matching box as they arrive.
async function stream(body, boxes, signal) {
  const res = await fetch("/api/steer/stream", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal });
  if (!res.ok) { const d = await res.json().catch(() => ({})); throw new Error(d.detail || res.statusText); }
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

pages.compare = (view) => {
  const out = h("div", { id: "compare-out" });
  view.append(h("h2", {}, "Compare two texts"), h("form", { class: "card", onsubmit: async e => {
      e.preventDefault();
      try { render(await api("/api/compare", { text_a: $("#cmp-a").value, text_b: $("#cmp-b").value, top: 10 })); } catch (err) { showError(out, err); } } },
    h("div", { class: "row" }, h("div", { class: "col" }, h("label", {}, "Text A"), h("textarea", { id: "cmp-a" }, "def add(a, b):\n    return a + b")),
      h("div", { class: "col" }, h("label", {}, "Text B"), h("textarea", { id: "cmp-b" }, "Add the two numbers and give back the sum."))),
    h("button", {}, "Compare")), out);
  const cols = [["rate A", "rate_a"], ["rate B", "rate_b"], ["diff", "diff"], ["mean A", "mean_a"], ["mean B", "mean_b"]];
  const render = r => out.replaceChildren(...r.layers.map(L => h("div", { class: "card" }, h("h3", {}, `Layer ${L.layer}`, h("span", { class: "muted" }, `  ${L.tokens_a} vs ${L.tokens_b} tokens; rate = share of tokens where the feature fires`)),
    h("div", { class: "row" }, h("div", { class: "col" }, h("b", {}, "more in A"), featureTable(L.layer, L.more_in_a, cols)), h("div", { class: "col" }, h("b", {}, "more in B"), featureTable(L.layer, L.more_in_b, cols))))));
};

// ---------------------------------------------------------------- router
async function route() {
  const [name, ...args] = (location.hash.replace(/^#\/?/, "") || "features").split("/");
  const page = pages[name] || pages.features;
  document.querySelectorAll("nav a").forEach(a => a.classList.toggle("active", a.dataset.page === name || (name === "feature" && a.dataset.page === "features")));
  abortPending();
  const view = $("#view"); view.replaceChildren(); view.dataset.page = name;
  try { await page(view, args.map(decodeURIComponent)); } catch (err) { if (!aborted(err)) showError(view, err); }
}

(async () => {
  try { INFO = await api("/api/info"); } catch (err) { return showError($("#view"), err); }
  $("#model").textContent = `${INFO.model} · layers ${INFO.layers.map(l => l.layer + (l.store ? "*" : "")).join(", ")}`;
  $("#model").title = "* = layer with a feature store";
  window.addEventListener("hashchange", route);
  route();
})();
