// The chat page: streams answers from /v1/chat/completions and explains them with /v1/explain.
// Plain JavaScript, no libraries, nothing fetched from anywhere but this server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: null, auth: false, history: [], layers: 1, heads: 1, busy: null, why: null };

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

function setStatus(text) { $("status").textContent = text; }

async function errorText(res) {
  try { const body = await res.json(); return `${res.status}: ${body.error.message}`; }
  catch (e) { return `${res.status} ${res.statusText}`; }
}

async function init() {
  $("api-key").value = localStorage.getItem("candorlm-key") || "";
  $("api-key").addEventListener("change", () => { localStorage.setItem("candorlm-key", $("api-key").value.trim()); loadModel(); });
  const health = await (await fetch("/health")).json();
  state.model = health.model;
  state.auth = health.auth;
  $("model-name").textContent = "model: " + health.model;
  $("key-box").hidden = !health.auth;
  if (health.auth && !$("api-key").value.trim()) { setStatus("enter an API key"); return; }
  await loadModel();
}

async function loadModel() {
  const res = await fetch("/v1/models", { headers: headers() });
  if (!res.ok) { setStatus(state.auth ? "enter an API key" : await errorText(res)); return; }
  const card = (await res.json()).data[0];
  state.layers = card.n_layers; state.heads = card.n_heads;
  fillSelect($("why-layer"), card.n_layers); fillSelect($("why-head"), card.n_heads);
  setStatus(`context ${card.context_length} tokens`);
}

function fillSelect(select, n) {
  select.innerHTML = "";
  for (let i = 0; i < n; i++) { const o = document.createElement("option"); o.value = i; o.textContent = i; select.appendChild(o); }
}

function addMessage(role, text) {
  const el = document.createElement("div");
  el.className = "msg"; el.dataset.role = role; el.dataset.chunks = "0";
  const who = document.createElement("div"); who.className = "who";
  const name = document.createElement("span"); name.textContent = role === "user" ? "you" : "model";
  who.appendChild(name);
  const body = document.createElement("div"); body.className = "text"; body.textContent = text;
  el.append(who, body);
  $("log").appendChild(el);
  el.scrollIntoView({ block: "end" });
  return el;
}

function sampling() {
  const num = (id) => { const v = $(id).value; return v === "" ? undefined : Number(v); };
  return { temperature: num("temperature"), top_p: num("top_p"), top_k: num("top_k"), max_tokens: num("max_tokens"), seed: num("seed") };
}

function conversation(upTo) {
  const msgs = [];
  const system = $("system").value.trim();
  if (system) msgs.push({ role: "system", content: system });
  return msgs.concat(state.history.slice(0, upTo));
}

async function send(text) {
  state.history.push({ role: "user", content: text });
  addMessage("user", text);
  const index = state.history.length;  // the answer's place in the history
  const el = addMessage("assistant", "");
  el.dataset.state = "streaming";
  const out = el.querySelector(".text");
  const controller = new AbortController();
  state.busy = controller;
  $("send").disabled = true; $("stop").hidden = false;
  let answer = "";
  try {
    const res = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), signal: controller.signal,
      body: JSON.stringify({ model: state.model, messages: conversation(index), stream: true, ...sampling() }),
    });
    if (!res.ok) throw new Error(await errorText(res));
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          const delta = chunk.choices.length ? chunk.choices[0].delta : {};
          if (delta.content) {
            answer += delta.content; out.textContent = answer;
            el.dataset.chunks = String(Number(el.dataset.chunks) + 1);
          }
          if (chunk.choices.length && chunk.choices[0].finish_reason) el.dataset.finish = chunk.choices[0].finish_reason;
        }
      }
    }
    el.dataset.state = "done";
  } catch (err) {
    el.dataset.state = err.name === "AbortError" ? "done" : "error";
    if (err.name !== "AbortError") out.textContent = answer + (answer ? "\n" : "") + "⚠ " + err.message;
  } finally {
    state.busy = null; $("send").disabled = false; $("stop").hidden = true;
  }
  state.history.push({ role: "assistant", content: answer });
  if (answer && el.dataset.state === "done") {
    const btn = document.createElement("button");
    btn.type = "button"; btn.className = "why-btn secondary"; btn.textContent = "why?";
    btn.addEventListener("click", () => openWhy(index, answer));
    el.querySelector(".who").appendChild(btn);
  }
}

// ------------------------------------------------------------------ the "why" view
function openWhy(index, answer) {
  state.why = { messages: conversation(index), target: answer, targetIndex: 0 };
  $("why").hidden = false;
  explain();
  $("why").scrollIntoView({ block: "start" });
}

async function explain() {
  const w = state.why;
  $("why").dataset.loaded = "0";
  const res = await fetch("/v1/explain", {
    method: "POST", headers: headers(),
    body: JSON.stringify({ model: state.model, messages: w.messages, target: w.target, target_index: w.targetIndex,
                           layer: Number($("why-layer").value || 0), head: Number($("why-head").value || 0) }),
  });
  if (!res.ok) { $("why-summary").textContent = "⚠ " + await errorText(res); return; }
  render(await res.json());
}

function color(score, scale) {
  const a = Math.min(1, Math.abs(score) / (scale || 1));
  return score >= 0 ? `rgba(214, 60, 45, ${a * 0.85})` : `rgba(45, 95, 214, ${a * 0.85})`;
}

function tokenChip(tag, text, title) {
  const el = document.createElement(tag);
  el.className = "tok"; el.textContent = text.replace(/\n/g, "⏎") || "·"; el.title = title;
  return el;
}

function render(x) {
  const w = state.why;
  const targets = x.tokens.filter((t) => t.source === "target");
  const box = $("why-target"); box.innerHTML = "";
  targets.forEach((t, i) => {
    const b = tokenChip("button", t.text, `target token ${i}`);
    b.type = "button"; b.setAttribute("aria-pressed", String(i === w.targetIndex));
    b.addEventListener("click", () => { w.targetIndex = i; explain(); });
    box.appendChild(b);
  });
  $("why-summary").textContent = `“${x.token.text}”: probability ${(100 * x.token.probability).toFixed(1)}%, ` +
    `rank ${x.token.rank} among the model's choices at that point.`;
  const scores = x.attribution.scores;
  const scale = Math.max(...scores.map(Math.abs), 1e-9);
  const attr = $("why-attribution"); attr.innerHTML = "";
  scores.forEach((s, i) => {
    const chip = tokenChip("span", x.tokens[i].text, `${x.tokens[i].text}: ${s.toFixed(4)}`);
    chip.classList.add("attr-token"); chip.style.background = color(s, scale);
    attr.appendChild(chip);
  });
  const row = x.attention.pattern[x.attention.query];
  const att = $("why-attention-row"); att.innerHTML = "";
  row.slice(0, x.attention.query + 1).forEach((p, i) => {
    const chip = tokenChip("span", x.tokens[i].text, `${x.tokens[i].text}: ${(100 * p).toFixed(1)}%`);
    chip.style.background = `rgba(47, 93, 138, ${Math.min(1, p * 1.5)})`;
    chip.style.color = p > 0.45 ? "#fff" : "inherit";
    att.appendChild(chip);
  });
  drawHeatmap(x.attention.pattern, x.attention.query);
  $("why").dataset.loaded = "1";
}

function drawHeatmap(pattern, query) {
  const canvas = $("heatmap");
  const n = pattern.length;
  const cell = Math.max(1, Math.floor(480 / n));
  canvas.width = canvas.height = cell * n;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, canvas.width, canvas.height);
  for (let q = 0; q < n; q++) {
    for (let k = 0; k <= q; k++) {
      const p = pattern[q][k];
      const shade = Math.round(255 * (1 - Math.sqrt(p)));  // sqrt: small weights stay visible
      ctx.fillStyle = `rgb(${shade}, ${Math.round(shade * 0.9 + 20)}, 255)`;
      ctx.fillRect(k * cell, q * cell, cell, cell);
    }
  }
  ctx.strokeStyle = "#d63c2d"; ctx.lineWidth = Math.max(1, cell / 4);
  ctx.strokeRect(0, query * cell, canvas.width, cell);
  canvas.dataset.rendered = String(n);
}

// ------------------------------------------------------------------ wiring
$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("input").value.trim();
  if (!text || state.busy) return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
});
$("stop").addEventListener("click", () => state.busy && state.busy.abort());
$("clear").addEventListener("click", () => { state.history = []; $("log").innerHTML = ""; $("why").hidden = true; });
$("why-close").addEventListener("click", () => { $("why").hidden = true; });
$("why-layer").addEventListener("change", () => state.why && explain());
$("why-head").addEventListener("change", () => state.why && explain());
init().catch((err) => setStatus("⚠ " + err.message));
