"""explain.html: one self-contained page (inline CSS, JavaScript and data; no CDN, opens offline)
to click through attention layers and heads, the logit lens, attributions and patching."""

from __future__ import annotations

import json
from typing import Any

from jinja2 import Environment

from candorlm.fonts import CSS_FAMILY, embed_cjk_font


def render_html(doc: dict[str, Any]) -> str:
    """The page, with a subset of the bundled CJK font for every character it holds (its data
    included, which the script writes into the page), so it reads right without a system font."""
    # "</" would end the <script> element early; JSON allows the escaped form "<\/".
    data = json.dumps(doc, ensure_ascii=False, allow_nan=False).replace("</", "<\\/")
    env = Environment(autoescape=True)
    return embed_cjk_font(env.from_string(TEMPLATE).render(doc=doc, data=data, font=CSS_FAMILY))


TEMPLATE = r"""<!doctype html>
<html lang="zh">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>candorlm explain: {{ doc.prompt }}</title>
<style>
  body { font-family: "{{ font }}", system-ui, sans-serif; margin: 1.5rem; color: #222; max-width: 80rem; }
  button, input, select { font-family: inherit; }
  h1 { font-size: 1.4rem; } h2 { font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
  .tok { font-family: inherit; }
  .muted { color: #666; font-size: 0.9rem; }
  button { margin: 0 0.2rem 0.3rem 0; padding: 0.2rem 0.6rem; border: 1px solid #aaa; background: #f6f6f6;
           border-radius: 4px; cursor: pointer; }
  button.on { background: #1f4e79; color: white; border-color: #1f4e79; }
  table.heat { border-collapse: collapse; margin: 0.5rem 0; }
  table.heat td { width: 2.1rem; height: 1.7rem; text-align: center; font-size: 0.72rem; border: 1px solid #fff; }
  table.heat th { font-weight: normal; font-size: 0.85rem; padding: 0 0.3rem; white-space: nowrap; }
  table.heat thead th { vertical-align: bottom; }
  table.heat td.sel { outline: 2px solid #e67e22; }
  table.plain { border-collapse: collapse; } table.plain td, table.plain th { border: 1px solid #ddd; padding: 0.2rem 0.5rem; }
  .chips span { display: inline-block; padding: 0.25rem 0.4rem; margin: 1px; border-radius: 3px; font-size: 1.05rem; }
  #lens-detail { min-height: 6rem; }
</style>
</head>
<body>
<h1>Why did the model say “<span class="tok" id="target">{{ doc.target }}</span>”?</h1>
<p>Prompt: <span class="tok" id="prompt">{{ doc.prompt }}</span> &nbsp;·&nbsp;
   target ({{ doc.target_source }}): p = {{ '%.4f' % doc.p_target }} &nbsp;·&nbsp;
   model: {{ doc.arch or "decoder" }}, {{ doc.model.n_layers }} layers × {{ doc.model.n_heads }} heads, {{ '{:,}'.format(doc.model.parameters) }} parameters
   <br><span class="muted">Run: {{ doc.run }}</span></p>
<p class="chips" id="tokens"></p>

<section id="attention-section">
<h2>Attention</h2>
<p class="muted">Rows are query positions, columns the positions they attend to (key). Darker = more weight.</p>
<div id="map-buttons"></div>
<p id="map-title" class="muted"></p>
<div id="layer-buttons"></div>
<div id="head-buttons"></div>
<table class="heat" id="attn-map"></table>
<h3>Head summary</h3>
<p class="muted">Mean attention to the previous token and to the first token on this prompt; induction score on random
repeated sequences. Heads above {{ doc.attention.maps[0].heads.threshold if doc.attention else 0.5 }} are named.</p>
<div id="head-summary"></div>
</section>

<section id="lens-section">
<h2>Logit lens</h2>
<p class="muted">The residual stream after each layer, decoded by the final norm and unembedding. Cell text: that
layer's top guess for the token the position predicts (a decoder's: the next one); colour: the probability of the
token that actually comes there (darkest = the largest shown). Click a cell for the top-k.</p>
<table class="heat" id="lens-map"></table>
<div id="lens-detail"></div>
</section>

<section id="attribution-section">
<h2>Attribution</h2>
<div id="attribution"></div>
</section>

<section id="patching-section">
<h2>Activation patching</h2>
<div id="patching"></div>
</section>

<script type="application/json" id="explain-data">{{ data|safe }}</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("explain-data").textContent);
const $ = (id) => document.getElementById(id);
const el = (tag, props = {}, kids = []) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) { if (k === "text") e.textContent = v; else e.setAttribute(k, v); }
  for (const k of kids) e.appendChild(k);
  return e;
};
const blues = (v) => { const t = Math.max(0, Math.min(1, v)); const c = (a, b) => Math.round(a + (b - a) * t);
  return `rgb(${c(247, 8)},${c(251, 48)},${c(255, 107)})`; };
const ink = (v) => (v > 0.55 ? "white" : "black");
const diverging = (v, lim) => { const t = Math.max(-1, Math.min(1, v / (lim || 1)));
  return t >= 0 ? `rgb(255,${Math.round(255 - 190 * t)},${Math.round(255 - 190 * t)})`
                : `rgb(${Math.round(255 + 190 * t)},${Math.round(255 + 190 * t)},255)`; };
const fmt = (v) => (v === null || v === undefined ? "–" : Number(v).toFixed(3));

function heatTable(table, rowLabels, colLabels, value, text, color) {
  table.replaceChildren();
  const head = el("tr", {}, [el("th")]);
  colLabels.forEach((c) => head.appendChild(el("th", { class: "tok", text: c })));
  table.appendChild(el("thead", {}, [head]));
  const body = el("tbody");
  rowLabels.forEach((r, i) => {
    const tr = el("tr", {}, [el("th", { class: "tok", text: r })]);
    colLabels.forEach((_, j) => {
      const v = value(i, j);
      const td = el("td", { title: `${r} → ${colLabels[j]}: ${fmt(v)}`, "data-v": v === null ? "" : String(v),
                            "data-row": String(i), "data-col": String(j) });
      td.style.background = v === null ? "#eee" : color(v);
      td.style.color = v === null ? "black" : ink(Math.abs(v));
      td.textContent = text ? text(i, j) : "";
      tr.appendChild(td);
    });
    body.appendChild(tr);
  });
  table.appendChild(body);
}

D.tokens.forEach((t, i) => $("tokens").appendChild(el("span", { class: "tok", text: t,
  style: (D.masked_positions || []).includes(i) ? "background:#fde" : i < D.n_prompt ? "background:#eef" : "background:#efe" })));
if (D.decoder_tokens) {  // an encoder-decoder: the source above, the decoder's input (<bos> + target) after it
  $("tokens").appendChild(el("b", { text: "  →  " }));
  D.decoder_tokens.forEach((t) => $("tokens").appendChild(el("span", { class: "tok", text: t, style: "background:#efe" })));
}

// ---- attention: one map at a time, chosen by kind (an encoder-decoder has three), layer and head buttons
const state = { map: 0, layer: 0, head: 0 };
function drawAttention() {
  const M = D.attention.maps[state.map];
  const P = M.patterns[state.layer][state.head];
  const table = $("attn-map");
  table.dataset.map = M.name;
  table.dataset.layer = String(state.layer);
  table.dataset.head = String(state.head);
  $("map-title").textContent = M.title;
  heatTable(table, M.queries, M.keys, (i, j) => (!M.causal || j <= i || P[i][j] > 0 ? P[i][j] : null), null, blues);
  document.querySelectorAll("#map-buttons button").forEach((b) => b.classList.toggle("on", +b.dataset.map === state.map));
  document.querySelectorAll("#layer-buttons button").forEach((b) => b.classList.toggle("on", +b.dataset.layer === state.layer));
  document.querySelectorAll("#head-buttons button").forEach((b) => b.classList.toggle("on", +b.dataset.head === state.head));
}
function layerButtons() {
  const M = D.attention.maps[state.map];
  $("layer-buttons").replaceChildren();
  state.layer = Math.min(state.layer, M.patterns.length - 1);
  for (let l = 0; l < M.patterns.length; l++) {
    const b = el("button", { "data-layer": String(l), id: `layer-${l}`, text: `layer ${l}` });
    b.onclick = () => { state.layer = l; drawAttention(); };
    $("layer-buttons").appendChild(b);
  }
}
function headSummary(M, m) {
  const L = M.patterns.length, H = M.patterns[0].length, S = M.heads.scores;
  const t = el("table", { class: "plain", id: D.attention.maps.length > 1 ? `head-scores-${M.name}` : "head-scores" });
  t.appendChild(el("tr", {}, ["layer", "head", "previous token", "first token", "induction"].map((x) => el("th", { text: x }))));
  for (let l = 0; l < L; l++) for (let h = 0; h < H; h++) {
    const cells = [l, h, S.previous_token[l][h], S.first_token[l][h], S.induction[l][h]];
    const tr = el("tr", {}, cells.map((x, k) => el("td", { text: k < 2 ? String(x) : fmt(x) })));
    cells.slice(2).forEach((x, k) => { if (x > M.heads.threshold) tr.children[k + 2].style.fontWeight = "bold"; });
    tr.style.cursor = "pointer";
    tr.onclick = () => { state.map = m; layerButtons(); state.layer = l; state.head = h; drawAttention(); $("attn-map").scrollIntoView(); };
    t.appendChild(tr);
  }
  if (D.attention.maps.length > 1) $("head-summary").appendChild(el("h4", { text: M.title }));
  $("head-summary").appendChild(t);
}
if (D.attention) {
  const maps = D.attention.maps;
  if (maps.length > 1) maps.forEach((M, m) => {
    const b = el("button", { "data-map": String(m), id: `map-${M.name}`, text: M.title });
    b.onclick = () => { state.map = m; layerButtons(); drawAttention(); };
    $("map-buttons").appendChild(b);
  });
  layerButtons();
  for (let h = 0; h < maps[0].patterns[0].length; h++) {
    const b = el("button", { "data-head": String(h), id: `head-${h}`, text: `head ${h}` });
    b.onclick = () => { state.head = h; drawAttention(); };
    $("head-buttons").appendChild(b);
  }
  drawAttention();
  maps.forEach((M, m) => { if (M.heads) headSummary(M, m); });
} else {
  $("attention-section").appendChild(el("p", { class: "muted", text: "Not computed (add --method attention)." }));
}

// ---- logit lens
if (D.lens) {
  const Ls = D.lens;
  // Small models give small probabilities: the colour scale stops at the largest one shown.
  const vmax = Math.max(0.05, ...Ls.next_prob.flat().filter((v) => v !== null));
  const cols = Ls.positions || D.tokens;
  if (Ls.reads) $("lens-section").insertBefore(el("p", { class: "muted", id: "lens-reads", text: `Each position predicts ${Ls.reads}.` }), $("lens-map"));
  heatTable($("lens-map"), Ls.layers, cols, (i, j) => Ls.next_prob[i][j], (i, j) => Ls.top_tokens[i][j][0],
            (v) => blues(v / vmax));
  $("lens-map").addEventListener("click", (ev) => {
    const td = ev.target.closest("td"); if (!td) return;
    document.querySelectorAll("#lens-map td.sel").forEach((x) => x.classList.remove("sel"));
    td.classList.add("sel");
    const i = +td.dataset.row, j = +td.dataset.col;
    const box = $("lens-detail"); box.replaceChildren();
    box.appendChild(el("p", { text: `${Ls.layers[i]}, at “${cols[j]}” (expected: “${Ls.next_tokens[j]}”, p = ${fmt(Ls.next_prob[i][j])}; ` +
                                    `target “${Ls.target_token}” p = ${fmt(Ls.target_prob[i][j])}):` }));
    const ol = el("ol");
    Ls.top_tokens[i][j].forEach((tok, k) => ol.appendChild(el("li", { class: "tok", text: `${tok}  ${fmt(Ls.top_probs[i][j][k])}` })));
    box.appendChild(ol);
  });
} else {
  $("lens-section").appendChild(el("p", { class: "muted", text: "Not computed (add --method lens)." }));
}

// ---- attribution
if (D.attribution) {
  const A = D.attribution, box = $("attribution");
  const ig = A.integrated_gradients;
  box.appendChild(el("p", { text: `f = ${A.f}. Integrated gradients: baseline ${A.baseline}; ${ig.n_steps} steps (${A.integration}). ` +
    `Completeness: sum of attributions ${ig.scores.reduce((a, b) => a + b, 0).toFixed(4)} vs f(input) − f(baseline) = ` +
    `${(ig.f_input - ig.f_baseline).toFixed(4)}, error ${(100 * ig.completeness_error).toFixed(2)}% ` +
    (A.completeness_ok ? "(within 5%)." : "(ABOVE 5%: do not trust these attributions).") }));
  for (const [name, res] of [["integrated gradients", ig], ["gradient × input", A.gradient_x_input]]) {
    const lim = Math.max(...res.scores.map(Math.abs)) || 1;
    const p = el("p", { class: "chips", id: name === "gradient × input" ? "gxi" : "ig" }, [el("b", { text: name + ": " })]);
    res.scores.forEach((s, i) => { const sp = el("span", { class: "tok", text: D.tokens[i], title: s.toFixed(4) });
      sp.style.background = diverging(s, lim); p.appendChild(sp); });
    box.appendChild(p);
  }
  const t = el("table", { class: "plain" });
  t.appendChild(el("tr", {}, ["method", "k", "p(target)", "after removing top-k", "mean after k random", "share of random at least as harmful"]
    .map((x) => el("th", { text: x }))));
  for (const [name, rows] of Object.entries(A.deletion)) for (const r of rows) if (r)
    t.appendChild(el("tr", {}, [name.replaceAll("_", " "), r.k, fmt(r.p_full), fmt(r.p_top_removed), fmt(r.p_full - r.drop_random_mean),
      `${fmt(r.random_at_least_as_bad)} of ${r.draws}`].map((x) => el("td", { text: String(x) }))));
  box.appendChild(el("p", { class: "muted", text: "Deletion test: the attribution is faithful when removing its top tokens lowers p(target) more than removing as many random tokens." }));
  box.appendChild(t);
} else {
  $("attribution-section").appendChild(el("p", { class: "muted", text: "Not computed (add --method ig)." }));
}

// ---- activation patching
if (D.patching) {
  const P = D.patching, box = $("patching");
  box.appendChild(el("p", { text: `Clean: “${D.prompt}”; corrupted: “${P.corrupt}”. Metric: ${P.metric} ` +
    `(clean ${P.clean_metric.toFixed(3)}, corrupted ${P.corrupted_metric.toFixed(3)}). Cell: share of the clean metric ` +
    `restored by copying that activation from the clean run into the corrupted one.` }));
  const lim = Math.max(1, ...P.residual.flatMap((r) => r.effect.flat().map(Math.abs)));
  P.residual.forEach((R, k) => {
    if (P.residual.length > 1) box.appendChild(el("h4", { text: R.title }));
    const t = el("table", { class: "heat", id: k ? `patch-resid-${R.name}` : "patch-resid" }); box.appendChild(t);
    heatTable(t, R.rows, R.columns, (i, j) => R.effect[i][j], (i, j) => R.effect[i][j].toFixed(2), (v) => diverging(v, lim));
  });
  P.heads.forEach((R, k) => {
    box.appendChild(el("h4", { text: R.title }));
    const t = el("table", { class: "heat", id: k ? `patch-heads-${R.name}` : "patch-heads" }); box.appendChild(t);
    heatTable(t, R.rows, R.effect[0].map((_, h) => `head ${h}`), (i, j) => R.effect[i][j], (i, j) => R.effect[i][j].toFixed(2), (v) => diverging(v, lim));
  });
} else {
  $("patching-section").appendChild(el("p", { class: "muted", text: "Not computed (give --corrupt TEXT, a prompt of the same length with the key word changed)." }));
}
</script>
</body>
</html>
"""
