// The voice panel: pick the voice replies speak with, clone a new one from a recording (the mic via
// MediaRecorder, or a file), see the server's quality report, and preview any voice.
// Server side: voxloop/server/voices_api.py (GET/POST/PATCH/DELETE /api/voices, POST .../preview).
// Every call goes through auth.fetch: with authentication on it carries a client secret.
import { auth } from "./auth.js";

const $ = (id) => document.getElementById(id);
const STORAGE_KEY = "voxloop.voice";
const MAX_RECORD_MS = 40_000; // the server uses at most 30 s of speech; stop a forgotten recording
const PREVIEW_TEXT = "Hello! This is how I sound. Shall we talk?";

const MEASURES = [
  ["speech_s", "Speech", (v) => `${v.toFixed(1)} s`],
  ["speech_ratio", "Speech ratio", (v) => `${Math.round(v * 100)} %`],
  ["snr_db", "Signal to noise", (v) => `${v.toFixed(0)} dB`],
  ["clipping_ratio", "Clipping", (v) => `${(v * 100).toFixed(2)} %`],
  ["loudness_dbfs", "Loudness", (v) => `${v.toFixed(0)} dBFS`],
];

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export class VoicePanel {
  // onChange(name): the picked voice changed (tell the realtime session).
  constructor({ onChange } = {}) {
    this.onChange = onChange || (() => {});
    this.select = $("voice-select");
    this.current = $("voice-current");
    this.form = $("voice-form");
    this.nameInput = $("voice-name");
    this.fileInput = $("voice-file");
    this.recordButton = $("voice-record");
    this.uploadButton = $("voice-upload");
    this.previewButton = $("voice-preview");
    this.deleteButton = $("voice-delete");
    this.report = $("voice-report");
    this.player = $("voice-audio");
    this.status = $("voice-status");
    this.recording = null; // {recorder, chunks, stream, started, timer}
    this.recorded = null; // a Blob from the mic, waiting to be uploaded
    // For people and tests: window.voxloop.voices.
    this.state = { list: [], default: null, selected: localStorage.getItem(STORAGE_KEY), lastReport: null, errors: [] };

    this.select.addEventListener("change", () => this.pick(this.select.value));
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.upload();
    });
    this.fileInput.addEventListener("change", () => {
      this.recorded = null;
      this.setStatus(this.fileInput.files.length ? `File ready: ${this.fileInput.files[0].name}` : "");
    });
    this.recordButton.addEventListener("click", () => (this.recording ? this.stopRecording() : this.startRecording()));
    this.previewButton.addEventListener("click", () => this.preview());
    this.deleteButton.addEventListener("click", () => this.remove());
  }

  get selected() {
    return this.state.selected;
  }

  setStatus(text, kind = "") {
    this.status.textContent = text;
    this.status.dataset.kind = kind;
  }

  async refresh() {
    let body;
    try {
      const response = await auth.fetch("/api/voices");
      body = await response.json();
      if (!response.ok) throw new Error(body.detail || `HTTP ${response.status}`);
    } catch (error) {
      this.state.errors.push(String(error.message || error));
      this.setStatus(`Cannot list the voices: ${error.message || error}`, "error");
      return;
    }
    this.state.list = body.voices;
    this.state.default = body.default;
    const names = body.voices.map((v) => v.name);
    if (!names.includes(this.state.selected)) this.state.selected = body.default;
    this.select.replaceChildren(
      ...body.voices.map((voice) => {
        const label = `${voice.name} (${voice.engine}${voice.status === "ready" ? "" : `, ${voice.status}`})`;
        const option = el("option", "", label);
        option.value = voice.name;
        return option;
      }),
    );
    this.select.value = this.state.selected;
    this.showSelected();
  }

  pick(name) {
    this.state.selected = name;
    localStorage.setItem(STORAGE_KEY, name);
    this.showSelected();
    this.onChange(name);
  }

  showSelected() {
    const voice = this.state.list.find((v) => v.name === this.state.selected);
    this.current.textContent = this.state.selected || "—";
    this.deleteButton.hidden = !voice || voice.builtin;
  }

  // -- recording with the microphone -----------------------------------------------------------

  async startRecording() {
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: false, noiseSuppression: false } });
    } catch (error) {
      this.setStatus(`The microphone is not available (${error.name}): allow it, or upload a file instead.`, "error");
      return;
    }
    const recorder = new MediaRecorder(stream);
    const chunks = [];
    recorder.addEventListener("dataavailable", (event) => event.data.size && chunks.push(event.data));
    recorder.addEventListener("stop", () => {
      stream.getTracks().forEach((track) => track.stop());
      const seconds = (performance.now() - this.recording.started) / 1000;
      this.recorded = new Blob(chunks, { type: recorder.mimeType || "audio/webm" });
      this.recording = null;
      this.fileInput.value = "";
      this.recordButton.textContent = "Record";
      this.recordButton.setAttribute("aria-pressed", "false");
      this.setStatus(`Recorded ${seconds.toFixed(1)} s. Name it and press Upload.`);
    });
    this.recording = { recorder, started: performance.now(), timer: setTimeout(() => this.stopRecording(), MAX_RECORD_MS) };
    recorder.start(250);
    this.recordButton.textContent = "Stop";
    this.recordButton.setAttribute("aria-pressed", "true");
    this.setStatus("Recording… read a few sentences aloud (10 to 30 s), then press Stop.");
  }

  stopRecording() {
    if (!this.recording) return;
    clearTimeout(this.recording.timer);
    this.recording.recorder.stop();
  }

  // -- upload and the quality report -----------------------------------------------------------

  async upload() {
    const name = this.nameInput.value.trim();
    const file = this.recorded || this.fileInput.files[0];
    if (!name) return this.setStatus("Give the new voice a name first.", "error");
    if (!file) return this.setStatus("Record a sample or choose a file first.", "error");
    const form = new FormData();
    form.append("name", name);
    form.append("file", file, file.name || `${name}.webm`);
    this.uploadButton.disabled = true;
    this.setStatus("Checking the recording…");
    try {
      const response = await auth.fetch("/api/voices", { method: "POST", body: form });
      const body = await response.json();
      const report = { ok: response.ok, status: response.status, ...body };
      this.state.lastReport = report;
      this.showReport(report);
      if (response.ok) {
        this.setStatus(`Voice ${name} is ready.`, "ok");
        this.nameInput.value = "";
        this.recorded = null;
        this.fileInput.value = "";
        await this.refresh();
        this.select.value = name;
        this.pick(name);
      } else {
        this.setStatus(typeof body.detail === "string" ? body.detail : "The upload was refused.", "error");
      }
    } catch (error) {
      this.setStatus(`The upload failed: ${error.message || error}`, "error");
    } finally {
      this.uploadButton.disabled = false;
    }
  }

  showReport(report) {
    const quality = report.quality;
    const verdict = report.ok ? "accept" : "reject";
    const heading = el("p", "verdict", report.ok ? quality.message : `Rejected (${report.code}): ${report.detail}`);
    heading.dataset.verdict = verdict;
    const parts = [heading];
    if (quality) {
      const list = el("dl", "measures");
      for (const [key, label, format] of MEASURES) {
        list.append(el("dt", "", label), el("dd", "", format(quality[key])));
      }
      parts.push(list);
      for (const warning of quality.warnings || []) parts.push(el("p", "warning", `Note: ${warning}`));
    }
    this.report.replaceChildren(...parts);
    this.report.dataset.verdict = verdict;
    this.report.hidden = false;
  }

  // -- preview and delete ----------------------------------------------------------------------

  async preview() {
    const name = this.state.selected;
    if (!name) return;
    this.previewButton.disabled = true;
    this.setStatus(`Speaking a sample in ${name}…`);
    try {
      const response = await auth.fetch(`/api/voices/${encodeURIComponent(name)}/preview`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ text: PREVIEW_TEXT }),
      });
      if (!response.ok) throw new Error((await response.json()).detail || `HTTP ${response.status}`);
      const blob = await response.blob();
      if (this.player.src) URL.revokeObjectURL(this.player.src);
      this.player.src = URL.createObjectURL(blob);
      this.player.hidden = false;
      this.state.previews = (this.state.previews || 0) + 1;
      this.setStatus(`Preview of ${name}.`, "ok");
      await this.player.play().catch(() => {}); // autoplay may need a gesture: the controls remain
    } catch (error) {
      this.setStatus(`Preview failed: ${error.message || error}`, "error");
    } finally {
      this.previewButton.disabled = false;
    }
  }

  async remove() {
    const name = this.state.selected;
    if (!name || !window.confirm(`Delete the voice ${name}?`)) return;
    const response = await auth.fetch(`/api/voices/${encodeURIComponent(name)}`, { method: "DELETE" });
    if (!response.ok) return this.setStatus((await response.json()).detail, "error");
    this.setStatus(`Deleted ${name}.`, "ok");
    await this.refresh();
    this.pick(this.state.default);
  }
}
