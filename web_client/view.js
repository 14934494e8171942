// The page's DOM: state pill, level meter, error banner, conversation and per-turn readouts.
const $ = (id) => document.getElementById(id);

const STATE_LABELS = {
  off: "Off",
  starting: "Starting…",
  connecting: "Connecting…",
  reconnecting: "Reconnecting…",
  asleep: "Asleep",
  listening: "Listening",
  thinking: "Thinking",
  speaking: "Speaking",
};

const SPAN_LABELS = {
  endpoint_delay: "end of turn",
  early_stt: "early STT (speculative)",
  stt: "speech-to-text",
  llm_first_token: "LLM first token",
  first_chunk: "first clause",
  tts_first_audio: "text-to-speech",
  send: "send",
  playback: "playback start",
};

// Each step of a turn and the two marks that bound it (voxloop/pipeline/trace.py SPANS).
const STEPS = [
  ["endpoint_delay", "speech_end", "endpoint"],
  ["early_stt", "speech_pause", "stt_speculative"], // off the main line: overlaps the end-of-turn wait
  ["stt", "endpoint", "stt_final"],
  ["llm_first_token", "stt_final", "llm_first_token"],
  ["first_chunk", "llm_first_token", "first_chunk"],
  ["tts_first_audio", "first_chunk", "tts_first_audio"],
  ["send", "tts_first_audio", "first_audio_sent"],
  ["playback", "first_audio_sent", "playback_start"],
];
const HISTORY_LENGTH = 10;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export class View {
  constructor() {
    this.button = $("toggle");
    this.pill = $("state");
    this.level = $("level");
    this.error = $("error");
    this.list = $("conversation");
    this.status = $("status");
    this.latency = $("latency");
    this.waterfall = $("waterfall");
    this.history = $("history");
    this.turns = []; // the last HISTORY_LENGTH traces, oldest first
    this.levelValue = 0;
  }

  setButton(mode) {
    // mode: "start" | "starting" | "stop"
    this.button.dataset.action = mode;
    this.button.disabled = mode === "starting";
    this.button.textContent = mode === "stop" ? "Stop" : mode === "starting" ? "Starting…" : "Start";
    this.button.setAttribute("aria-pressed", String(mode === "stop"));
  }

  setState(state) {
    this.pill.dataset.state = state;
    this.pill.textContent = STATE_LABELS[state] || state;
  }

  setStatus(text) {
    this.status.textContent = text;
  }

  setLevel(rms) {
    // dBFS mapped onto 0..1 (-60 dB .. 0 dB), with a fast attack and a slow release.
    const db = 20 * Math.log10(Math.max(rms, 1e-6));
    const target = Math.max(0, Math.min(1, (db + 60) / 60));
    this.levelValue = target > this.levelValue ? target : this.levelValue * 0.85 + target * 0.15;
    this.level.style.setProperty("--level", this.levelValue.toFixed(3));
    this.level.parentElement.setAttribute("aria-valuenow", String(Math.round(this.levelValue * 100)));
  }

  showError(kind, message) {
    this.error.dataset.kind = kind;
    this.error.textContent = message;
    this.error.hidden = false;
  }

  clearError() {
    this.error.hidden = true;
    this.error.dataset.kind = "";
    this.error.textContent = "";
  }

  addMessage(role, itemId, text) {
    const item = el("li", "msg");
    item.dataset.role = role;
    if (itemId) item.dataset.itemId = itemId;
    item.append(el("span", "who", role === "user" ? "You" : "Assistant"), el("p", "text", text));
    this.list.append(item);
    this.scroll();
    return item;
  }

  addNote(text) {
    this.list.append(el("li", "note", text));
    this.scroll();
  }

  appendText(node, delta) {
    node.querySelector(".text").textContent += delta;
    this.scroll();
  }

  markInterrupted(node, label) {
    node.dataset.interrupted = "true";
    let badge = node.querySelector(".badge");
    if (!badge) {
      badge = el("span", "badge");
      node.querySelector(".who").after(badge);
    }
    badge.textContent = label;
    this.pill.classList.remove("flash");
    void this.pill.offsetWidth; // restart the animation
    this.pill.classList.add("flash");
  }

  showTrace(node, trace) {
    const v2v = trace.voice_to_voice_ms;
    const spans = Object.entries(trace.spans_ms || {});
    const box = el("div", "trace");
    box.dataset.turnId = String(trace.turn_id);
    box.dataset.v2v = v2v == null ? "" : String(Math.round(v2v));
    box.append(el("span", "v2v", v2v == null ? "—" : `${Math.round(v2v)} ms`), el("span", "caption", " voice-to-voice"));
    const biggest = spans.filter(([name]) => name !== "playback").sort((a, b) => b[1] - a[1]).slice(0, 3);
    const steps = el("span", "steps");
    steps.textContent = biggest.map(([name, ms]) => `${SPAN_LABELS[name] || name} ${Math.round(ms)}`).join(" · ");
    box.append(steps, this.bar(spans, v2v));
    node.querySelector(".trace")?.remove();
    node.append(box);
    this.latency.textContent = v2v == null ? "Last turn: —" : `Last turn: ${Math.round(v2v)} ms voice-to-voice`;
    this.scroll();
  }

  bar(spans, total) {
    const bar = el("div", "bar");
    if (!total) return bar;
    for (const [name, ms] of spans) {
      if (name === "playback" || ms <= 0) continue;
      const part = el("span", `seg seg-${name}`);
      part.style.width = `${Math.max(1, (100 * ms) / total).toFixed(1)}%`;
      part.title = `${SPAN_LABELS[name] || name}: ${Math.round(ms)} ms`;
      bar.append(part);
    }
    return bar;
  }

  // -- latency panel: the waterfall of one turn and the last turns' voice-to-voice -----------

  recordTurn(trace) {
    // A turn's trace comes again once the browser's playback start is in it: replace, not add.
    const same = (t) => t.session_id === trace.session_id && t.turn_id === trace.turn_id;
    const at = this.turns.findIndex(same);
    if (at >= 0) this.turns[at] = trace;
    else this.turns = [...this.turns, trace].slice(-HISTORY_LENGTH);
    this.showWaterfall(trace);
    this.drawHistory(trace);
  }

  showWaterfall(trace) {
    const marks = trace.marks_ms || {};
    const steps = STEPS.filter(([, from, to]) => from in marks && to in marks);
    const total = Math.max(1, ...steps.map(([, , to]) => marks[to]));
    const v2v = trace.voice_to_voice_ms;
    const box = this.waterfall;
    box.replaceChildren(el("div", "wf-title", `Turn ${trace.turn_id}: ${v2v == null ? "—" : Math.round(v2v) + " ms"} voice-to-voice`));
    box.dataset.turnId = String(trace.turn_id);
    for (const [name, from, to] of steps) {
      const ms = marks[to] - marks[from];
      const row = el("div", "wf-row");
      row.dataset.step = name;
      const track = el("span", "wf-track");
      const bar = el("span", `wf-bar seg-${name}`);
      bar.style.left = `${((100 * Math.max(0, marks[from])) / total).toFixed(2)}%`;
      bar.style.width = `${Math.max(0.4, (100 * ms) / total).toFixed(2)}%`;
      track.append(bar);
      row.title = `${SPAN_LABELS[name] || name}: ${Math.round(ms)} ms (from ${Math.round(marks[from])} ms)`;
      row.append(el("span", "wf-label", SPAN_LABELS[name] || name), track, el("span", "wf-ms", `${Math.round(ms)}`));
      box.append(row);
    }
    const axis = el("div", "wf-axis");
    axis.append(el("span", "", "end of speech"), el("span", "", `${Math.round(total)} ms`));
    box.append(axis);
    box.hidden = false;
  }

  drawHistory(current) {
    const known = this.turns.map((t) => t.voice_to_voice_ms).filter((ms) => ms != null);
    const top = Math.max(1, ...known);
    this.history.replaceChildren();
    for (const trace of this.turns) {
      const ms = trace.voice_to_voice_ms;
      const item = el("li");
      const button = el("button", "hist");
      button.type = "button";
      button.dataset.turnId = String(trace.turn_id);
      button.dataset.v2v = ms == null ? "" : String(Math.round(ms));
      button.title = `Turn ${trace.turn_id}: ${ms == null ? "no reply audio" : Math.round(ms) + " ms"} voice-to-voice`;
      button.setAttribute("aria-pressed", String(trace === current));
      const bar = el("span", "hist-bar");
      bar.style.height = `${ms == null ? 0 : Math.max(5, (78 * ms) / top).toFixed(1)}%`;
      button.append(bar, el("span", "hist-ms", ms == null ? "—" : String(Math.round(ms))));
      button.addEventListener("click", () => {
        this.showWaterfall(trace);
        for (const other of this.history.querySelectorAll(".hist")) other.setAttribute("aria-pressed", String(other === button));
      });
      item.append(button);
      this.history.append(item);
    }
    this.history.hidden = this.turns.length === 0;
  }

  scroll() {
    this.list.scrollTop = this.list.scrollHeight;
  }
}
