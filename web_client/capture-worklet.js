// Microphone capture: context-rate float audio -> 24 kHz PCM16 frames of FRAME_MS, plus a level.
// sampleRate is the AudioContext's rate (a global in the worklet scope); it is never assumed.
import { LinearResampler } from "./resampler.js";

const FRAME_MS = 20;

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.targetRate = options.processorOptions.targetRate;
    this.frameSamples = Math.round((this.targetRate * FRAME_MS) / 1000);
    this.resampler = new LinearResampler(sampleRate, this.targetRate);
    this.frame = new Int16Array(this.frameSamples);
    this.filled = 0;
    this.peak = 0;
    this.sumSquares = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) this.push(this.resampler.process(channel));
    return true; // keep running even while the input is momentarily silent or disconnected
  }

  push(samples) {
    for (let i = 0; i < samples.length; i++) {
      const s = Math.max(-1, Math.min(1, samples[i]));
      this.peak = Math.max(this.peak, Math.abs(s));
      this.sumSquares += s * s;
      this.frame[this.filled++] = s < 0 ? s * 0x8000 : s * 0x7fff;
      if (this.filled === this.frameSamples) this.flush();
    }
  }

  flush() {
    const pcm = this.frame;
    const rms = Math.sqrt(this.sumSquares / this.frameSamples);
    this.port.postMessage({ type: "frame", pcm, rms, peak: this.peak }, [pcm.buffer]);
    this.frame = new Int16Array(this.frameSamples);
    this.filled = 0;
    this.peak = 0;
    this.sumSquares = 0;
  }
}

registerProcessor("voxloop-capture", CaptureProcessor);
