// gptlab's playground: complete or chat with a served run, and see how sampling chooses the next token.
// Everything comes from this server's own API (/v1/... and /v1/gptlab/...): no outside scripts.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = new URLSearchParams(location.search).get("key");  // with gptlab serve --api-key: open /?key=KEY
const HEADERS = { "content-type": "application/json", ...(KEY ? { authorization: `Bearer ${KEY}` } : {}) };
const DRAWN = 48;  // tokens an attention map draws at most (the last ones): more would not be legible at its size
const SENT = 400;  // characters of the text's end sent for a map (the server works out every layer's and head's)
const state = { models: {}, output: "", controller: null, messages: [], timer: null, asked: 0, drawing: 0,
                tab: "play" };

function settings() {
  const k = Number($("top-k").value), p = Number($("top-p").value);
  return { temperature: Number($("temperature").value), top_k: k > 0 ? k : null, top_p: p < 1 ? p : null,
           max_tokens: Number($("max-tokens").value) };
}

function showSettings() {
  const s = settings();
  $("temperature-value").textContent = s.temperature.toFixed(2);
  $("top-k-value").textContent = s.top_k ?? "off";
  $("top-p-value").textContent = (s.top_p ?? 1).toFixed(2);
  $("max-tokens-value").textContent = s.max_tokens;
}

// A refused request as an Error with its status (and its message from OpenAI's error object); a 401 also tells
// the page's reader that the server wants an API key.
async function refusal(r) {
  let message = r.statusText || `the server answered ${r.status}`;
  try {
    const data = await r.json();
    if (data.error && data.error.message) message = data.error.message;
  } catch (e) { /* not JSON: the status line says it */ }
  if (r.status === 401) needKey();
  return Object.assign(new Error(message), { status: r.status });
}

async function api(path, body) {
  const r = await fetch(path, body === undefined ? { headers: HEADERS } :
    { method: "POST", headers: HEADERS, body: JSON.stringify(body) });
  if (!r.ok) throw await refusal(r);
  return r.json();
}

function needKey() {
  const how = `open <code>${escape(location.pathname)}?key=YOUR_KEY</code> with the key given to ` +
              "<code>gptlab serve --api-key</code>";
  banner(KEY ? `The API key in this page's address was refused: ${how}.`
             : `This server needs an API key: ${how}.`);
}

function banner(html) {
  $("banner").innerHTML = html;
  $("banner").hidden = false;
}

// Server-sent events from a POST: each "data: {...}" line handed to onData, until [DONE].
async function stream(path, body, onData, signal) {
  const r = await fetch(path, { method: "POST", headers: HEADERS, body: JSON.stringify({ ...body, stream: true }),
                                signal });
  if (!r.ok) throw await refusal(r);
  const reader = r.body.getReader(), decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, end).trim();
      buffer = buffer.slice(end + 2);
      if (line === "data: [DONE]") return;
      if (!line.startsWith("data: ")) continue;
      const data = JSON.parse(line.slice(6));
      if (data.error) throw new Error(data.error.message);  // a failure after the stream began
      onData(data);
    }
  }
}

// --- completing a prompt ------------------------------------------------------------------------------------

async function generate() {
  const model = $("model").value, prompt = $("prompt").value;
  state.output = "";
  $("output").innerHTML = "";
  $("alternatives").innerHTML = "";
  const shown = document.createElement("span");
  shown.className = "prompt";
  shown.textContent = prompt;
  $("output").append(shown);
  state.controller = new AbortController();
  $("generate").disabled = true;
  $("stop").disabled = false;
  try {
    await stream("/v1/completions", { model, prompt, ...settings(), logprobs: 5 }, (chunk) => {
      const choice = chunk.choices[0], lp = choice.logprobs;
      if (!choice.text) return;
      const span = document.createElement("span");
      span.className = "token";
      span.textContent = choice.text;
      if (lp && lp.top_logprobs.length) span.onclick = () => alternatives(choice.text, lp.top_logprobs[0], model);
      $("output").append(span);
      state.output += choice.text;
    }, state.controller.signal);
  } catch (e) {
    if (e.name !== "AbortError") note(e.message);
  } finally {
    state.controller = null;
    $("generate").disabled = false;
    $("stop").disabled = true;
    nextToken();
  }
}

function alternatives(chosen, top, model) {
  const rows = Object.entries(top).sort((a, b) => b[1] - a[1]).map(([token, logp]) =>
    `<tr><td>${escape(JSON.stringify(token))}</td><td>${(100 * Math.exp(logp)).toFixed(1)}%</td></tr>`);
  $("alternatives").innerHTML = `<p>${escape(JSON.stringify(chosen))} was chosen from (by ${escape(model)}):</p>` +
    `<table>${rows.join("")}</table>`;
}

// --- the next-token chart -----------------------------------------------------------------------------------

function nextTokenSoon() {
  clearTimeout(state.timer);
  state.timer = setTimeout(nextToken, 120);
}

async function nextToken() {
  const s = settings(), prompt = $("prompt").value + state.output, asked = ++state.asked;
  if (state.tab !== "play") return;  // it describes the Complete tab's text: drawn again when that tab opens
  if (!prompt) {
    $("chart").innerHTML = "";
    $("entropy").textContent = "give a prompt";
    return;
  }
  try {
    const view = await api("/v1/gptlab/next", { model: $("model").value, prompt, temperature: s.temperature,
                                                top_k: s.top_k, top_p: s.top_p, k: 10 });
    if (asked !== state.asked) return;  // a newer question is on its way: its answer draws
    const cut = s.top_k !== null || s.top_p !== null;
    drawBars(view.candidates.map((c) => [c.token, cut ? c.p_cut[0] : c.p[0]]));
    $("entropy").textContent = `entropy ${(cut ? view.entropy_cut : view.entropy)[0].toFixed(2)} bits, ` +
      `${view.kept[0]} tokens possible`;
  } catch (e) {
    $("entropy").textContent = e.message;
  }
}

function drawBars(bars) {
  const svg = $("chart"), w = 640, h = 240, slot = w / bars.length, top = 20, bottom = 30;
  svg.innerHTML = bars.map(([token, p], i) => {
    const height = (h - top - bottom) * p, x = i * slot + 6, y = h - bottom - height;
    return `<rect class="bar" x="${x}" y="${y}" width="${slot - 12}" height="${height}"><title>${(100 * p).toFixed(1)}%</title></rect>` +
      `<text class="bar-value" x="${x}" y="${y - 4}">${(100 * p).toFixed(1)}%</text>` +
      `<text class="bar-label" x="${x}" y="${h - 10}">${escape(visible(token))}</text>`;
  }).join("");
}

// --- attention ----------------------------------------------------------------------------------------------

async function showAttention() {
  const model = $("model").value, m = state.models[model], text = $("prompt").value + state.output;
  const layer = Number($("layer").value), head = Number($("head").value), asked = ++state.drawing;
  if (!text) {
    $("attention-note").textContent = "give a prompt first";
    return;
  }
  const sent = text.slice(-SENT);
  try {
    const view = await api("/v1/gptlab/attention", { model, prompt: sent, layer, head });
    if (asked !== state.drawing) return;  // the model changed, or another map was asked for since
    if (view.queries) {  // an encoder-decoder: its translation of the text (rows) looking at the text (columns)
      heatmap(view.map, view.tokens, view.queries);
      $("attention-note").textContent = `layer ${layer}, head ${head}: cross-attention, each row a token of the ` +
        `translation "${view.translation}" looking at the source's tokens`;
      return;
    }
    const n = view.tokens.length, d = Math.min(n, DRAWN);
    heatmap(view.map.slice(n - d).map((row) => row.slice(n - d)), view.tokens.slice(n - d));
    // what was drawn of what: the server keeps the last `context` tokens (what the model sees), the page draws the
    // last DRAWN of them
    const byContext = m.context && n >= m.context && view.tokens.join("") !== sent;
    const byChars = !byContext && sent.length < text.length;
    let what;
    if (byContext) what = d < n ? `the last ${d} of the ${n} tokens the model sees (its context; the text is longer)`
                                : `the last ${n} tokens, all the model sees (its context; the text is longer)`;
    else if (byChars) what = d < n ? `the last ${d} of the ${n} tokens in the text's last ${SENT} characters`
                                   : `the last ${n} tokens (the text's last ${SENT} characters)`;
    else what = d < n ? `the last ${d} of ${n} tokens` : `all ${n} tokens`;
    $("attention-note").textContent = `layer ${layer}, head ${head}, ${what}: each row a token looking back at ` +
      `those before it${d < n ? " (its weights on earlier tokens are not drawn)" : ""}`;
  } catch (e) {
    if (asked === state.drawing) $("attention-note").textContent = e.message;
  }
}

// Draws the map, its colours from 0 to its largest weight (shown on the scale beside it): keys across, queries
// down (the same tokens, unless a cross-attention's queries are given).
function heatmap(map, tokens, queries = tokens) {
  const canvas = $("heatmap"), ctx = canvas.getContext("2d"), margin = 40;
  const n = Math.max(tokens.length, queries.length);
  const cell = (canvas.width - margin) / n, top = Math.max(...map.flat()) || 1;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  map.forEach((row, q) => row.forEach((a, k) => {
    ctx.fillStyle = `rgba(40, 80, 160, ${a / top})`;
    ctx.fillRect(margin + k * cell, margin + q * cell, cell, cell);
  }));
  ctx.fillStyle = "#222";
  ctx.font = `${Math.min(12, cell)}px monospace`;
  queries.forEach((t, i) => ctx.fillText(visible(t), 4, margin + (i + 0.75) * cell));
  tokens.forEach((t, i) => ctx.fillText(visible(t), margin + i * cell + 2, margin - 6));
  $("scale-max").textContent = top.toFixed(2);
  $("attention-map").hidden = false;
}

// No map until one is asked for: the note says what Show would draw (or that this model has no attention).
function clearAttention() {
  state.drawing++;  // an answer still on its way is for what was shown before
  $("attention-map").hidden = true;
  $("heatmap").getContext("2d").clearRect(0, 0, $("heatmap").width, $("heatmap").height);
  attentionHint();
}

function attentionHint() {
  const model = $("model").value, m = state.models[model];
  $("attention-note").textContent = m.layers === 0
    ? `${model} (${m.family}) has no attention layers: there is no map to show`
    : `press Show to draw layer ${$("layer").value}, head ${$("head").value}`;
}

// --- chat ---------------------------------------------------------------------------------------------------

async function send(event) {
  event.preventDefault();
  const text = $("chat-input").value.trim();
  if (!text) return;
  $("chat-input").value = "";
  state.messages.push({ role: "user", content: text });
  const reply = { role: "assistant", content: "" };
  renderChat(reply);
  try {
    await stream("/v1/chat/completions", { model: $("model").value, messages: state.messages, ...settings() },
      (chunk) => { reply.content += (chunk.choices[0] && chunk.choices[0].delta.content) || ""; renderChat(reply); });
    state.messages.push(reply);
    renderChat();
  } catch (e) {  // the turn is not kept: an error message is no reply to build on
    state.messages.pop();
    renderChat({ role: "assistant", content: `[${e.message}]` });
  }
}

function renderChat(pending) {
  const all = pending ? [...state.messages, pending] : state.messages;
  $("messages").innerHTML = all.map((m) =>
    `<div class="${m.role}"><b>${m.role === "user" ? "you" : "bot"}:</b> ${escape(m.content)}</div>`).join("");
}

// --- the page -----------------------------------------------------------------------------------------------

function escape(text) {
  return text.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
}

function visible(token) {
  return token.replace(/\n/g, "⏎").replace(/ /g, "␣") || "∅";
}

function note(text) {
  $("alternatives").textContent = text;
}

function numbers(n, keep) {
  const options = [...Array(n).keys()].map((i) => `<option${String(i) === keep ? " selected" : ""}>${i}</option>`);
  return options.join("");
}

// Another model: nothing on screen may still describe the old one. Its continuation still arriving stops, its
// map and alternatives go; the chart is asked again; the layer and head choices are the new model's.
function chooseModel() {
  const m = state.models[$("model").value];
  if (state.controller) state.controller.abort();
  $("tab-chat").disabled = !m.chat;
  if (!m.chat) tab("play");
  $("layer").innerHTML = numbers(m.layers, $("layer").value);
  $("head").innerHTML = numbers(m.heads, $("head").value);
  $("attention-controls").hidden = m.layers === 0;
  $("alternatives").innerHTML = "";
  $("chart").innerHTML = "";
  $("entropy").textContent = "";
  clearAttention();
  $("max-tokens").max = Math.min(500, m.max_tokens);
  showSettings();
  nextToken();
}

function tab(name) {
  const was = state.tab;
  state.tab = name;
  document.body.classList.toggle("chatting", name === "chat");
  $("play").classList.toggle("hidden", name !== "play");
  $("chat").classList.toggle("hidden", name !== "chat");
  $("tab-play").classList.toggle("active", name === "play");
  $("tab-chat").classList.toggle("active", name === "chat");
  if (name === "play" && was !== "play") nextTokenSoon();  // the chart waited while the chat was open
}

async function start() {
  let list;
  try {
    list = await api("/v1/models");
  } catch (e) {  // nothing works without the list: a message instead of an empty page
    if (e.status !== 401) banner(`The list of models could not be read: ${escape(e.message)}`);
    document.querySelector("main").hidden = true;
    return;
  }
  list.data.forEach((m) => { state.models[m.id] = m.gptlab; });
  $("model").innerHTML = list.data.map((m) => `<option>${escape(m.id)}</option>`).join("");
  for (const id of ["temperature", "top-k", "top-p", "max-tokens"]) {
    $(id).addEventListener("input", () => { showSettings(); nextTokenSoon(); });
  }
  $("prompt").addEventListener("input", () => { state.output = ""; nextTokenSoon(); });
  $("model").addEventListener("change", chooseModel);
  $("generate").addEventListener("click", generate);
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("show-attention").addEventListener("click", showAttention);
  for (const id of ["layer", "head"]) $(id).addEventListener("change", () => {
    if ($("attention-map").hidden) attentionHint();
  });
  $("chat-form").addEventListener("submit", send);
  $("chat-reset").addEventListener("click", () => { state.messages = []; renderChat(); });
  $("tab-play").addEventListener("click", () => tab("play"));
  $("tab-chat").addEventListener("click", () => tab("chat"));
  showSettings();
  chooseModel();
}

start();
