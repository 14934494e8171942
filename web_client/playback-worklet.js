// Reply playback: 24 kHz PCM16 in, resampled to the context's rate into a growable ring buffer.
// "flush" empties it at once (barge-in). The processor counts what it actually played per item,
// so the page can truncate the assistant's item to the audio the user really heard.
import { LinearResampler } from "./resampler.js";

const REPORT_EVERY_S = 0.1;

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.sourceRate = options.processorOptions.sourceRate;
    this.ring = new Float32Array(sampleRate * 30);
    this.written = 0; // total frames ever written (monotonic)
    this.read = 0; // total frames ever played (monotonic)
    this.segments = []; // [{itemId, end}] in write order: which item each written frame belongs to
    this.resamplers = new Map(); // itemId -> LinearResampler (each reply is its own stream)
    this.played = new Map(); // itemId -> frames played
    this.totalPlayed = 0;
    this.sinceReport = 0;
    this.port.onmessage = (event) => this.onMessage(event.data);
  }

  onMessage(message) {
    if (message.type === "audio") this.enqueue(message.itemId, message.pcm);
    else if (message.type === "flush") this.flush();
  }

  enqueue(itemId, pcm) {
    let resampler = this.resamplers.get(itemId);
    if (!resampler) {
      resampler = new LinearResampler(this.sourceRate, sampleRate);
      this.resamplers.set(itemId, resampler);
    }
    const floats = new Float32Array(pcm.length);
    for (let i = 0; i < pcm.length; i++) floats[i] = pcm[i] / 0x8000;
    const samples = resampler.process(floats);
    this.ensureRoom(samples.length);
    const size = this.ring.length;
    for (let i = 0; i < samples.length; i++) this.ring[(this.written + i) % size] = samples[i];
    this.written += samples.length;
    const last = this.segments[this.segments.length - 1];
    if (last && last.itemId === itemId) last.end = this.written;
    else this.segments.push({ itemId, end: this.written });
  }

  ensureRoom(extra) {
    const queued = this.written - this.read;
    if (queued + extra <= this.ring.length) return;
    let size = this.ring.length * 2;
    while (queued + extra > size) size *= 2;
    const grown = new Float32Array(size);
    for (let i = 0; i < queued; i++) grown[(this.read + i) % size] = this.ring[(this.read + i) % this.ring.length];
    this.ring = grown;
  }

  flush() {
    const dropped = this.written - this.read;
    const itemId = this.segments.length ? this.segments[0].itemId : null;
    this.written = this.read;
    this.segments = [];
    this.resamplers.clear();
    this.port.postMessage({ type: "flushed", droppedFrames: dropped, itemId, ...this.report() });
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    const count = Math.min(out.length, this.written - this.read);
    const size = this.ring.length;
    for (let i = 0; i < count; i++) out[i] = this.ring[(this.read + i) % size];
    out.fill(0, count);
    if (count > 0) this.consume(count);
    this.sinceReport += out.length;
    if (this.sinceReport >= sampleRate * REPORT_EVERY_S) {
      this.sinceReport = 0;
      this.port.postMessage({ type: "progress", ...this.report() });
    }
    return true;
  }

  // Attribute `count` played frames to the items they belong to; announce each item's first frame.
  consume(count) {
    while (count > 0 && this.segments.length) {
      const segment = this.segments[0];
      const take = Math.min(count, segment.end - this.read);
      const before = this.played.get(segment.itemId) || 0;
      if (before === 0) this.port.postMessage({ type: "started", itemId: segment.itemId });
      this.played.set(segment.itemId, before + take);
      this.read += take;
      this.totalPlayed += take;
      count -= take;
      if (this.read === segment.end) {
        this.segments.shift();
        if (!this.segments.length) this.port.postMessage({ type: "drained", ...this.report() });
      }
    }
  }

  report() {
    const playedMs = {};
    for (const [itemId, frames] of this.played) playedMs[itemId] = (frames / sampleRate) * 1000;
    return { totalPlayed: this.totalPlayed, queuedFrames: this.written - this.read, playedMs };
  }
}

registerProcessor("voxloop-playback", PlaybackProcessor);
