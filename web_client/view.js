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
  stt: "speech-to-text",
  llm_first_token: "LLM first token",
  first_chunk: "first clause",
  tts_first_audio: "text-to-speech",
  send: "send",
  playback: "playback start",
};

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

  scroll() {
    this.list.scrollTop = this.list.scrollHeight;
  }
}
